"""The router policy: a transformers causal LM, its tokenizer, and batched generation.

Real routers load a local checkpoint directory (`load_policy`); no hub downloads happen here.
The demo and tests build a tiny model from a config (`build_tiny_policy`) with a byte-level BPE
tokenizer trained locally on the task's own text, with the protocol tags as single tokens.
Shared by the learner, the rollout actors, serving and evaluation.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from router_r1.env.prompt import POLICY_META, PromptOptions
from router_r1.env.protocol import TAGS
from router_r1.util.atomic import atomic_dir

# Save/load progress bars are noise in rollouts and tests.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

TAG_TOKENS = [t for tag in TAGS for t in (f"<{tag}>", f"</{tag}>")]
PAD, EOS = "<pad>", "<eos>"


class CheckpointError(RuntimeError):
    """A policy checkpoint is missing, partial or corrupt."""


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer trained here on `texts` (exact round trip, no unknown tokens),
    with protocol tags as single added tokens so the policy emits a tag in one step."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)
    fast.add_tokens(TAG_TOKENS)
    return fast


def build_tiny_policy(tiny: dict[str, Any], tokenizer, seed: int = 0, dtype: torch.dtype | None = None):
    """A randomly initialised causal LM from `policy.tiny` as a dict (router_r1.infra.config.TinyModelConfig;
    `architecture` picks the family), initialised in float32 and then cast to `dtype` if given
    (the same weights whatever the dtype, up to rounding)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(tiny)
    arch = kw.pop("architecture", "qwen2")
    vocab = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    cfg = AutoConfig.for_model(arch, vocab_size=vocab, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                               tie_word_embeddings=kw.pop("tie_word_embeddings", True), **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype) if dtype is not None else model


def check_checkpoint_dir(path: str | Path) -> Path:
    """`path` when it looks like a transformers checkpoint folder; a clear CheckpointError if not."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"policy checkpoint not found: {path}")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json; not a transformers checkpoint")
    return path


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's config.json says its weights are in (`dtype`, or `torch_dtype`
    in older files); float32 when it says nothing."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    if name not in DTYPES:
        raise CheckpointError(f"{path}: config.json names dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def resolve_dtype(name: str | torch.dtype | None, checkpoint: str | Path | None = None) -> torch.dtype:
    """`policy.dtype` as a torch dtype: "auto"/None is the checkpoint's own (float32 for a
    policy built from config)."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return checkpoint_dtype(checkpoint) if checkpoint else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_policy(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
    """Load (model, tokenizer) from a local checkpoint directory, refusing partial ones. The
    weights come in `dtype` ("float32", "bfloat16", "float16" or a torch dtype); None or "auto":
    the checkpoint's own (a bf16 checkpoint stays bf16, never a silent float32 copy)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = check_checkpoint_dir(path)
    dtype = resolve_dtype(dtype, path)
    try:
        tok = _load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except Exception as e:  # safetensors/json errors: say which checkpoint and why
        raise CheckpointError(f"{path}: cannot load policy checkpoint ({type(e).__name__}: {e})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok


def load_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint folder alone (an engine that loads the weights itself)."""
    tok = _load_tokenizer(check_checkpoint_dir(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_tokenizer(path: Path):
    """AutoTokenizer would pick the model family's tokenizer class (adding e.g. Qwen2's unk token);
    a tokenizer trained here is a plain fast tokenizer and is loaded as exactly that."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_file = path / "tokenizer_config.json"
    cls = json.loads(cfg_file.read_text()).get("tokenizer_class") if cfg_file.exists() else None
    if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def save_policy(model, tokenizer, path: str | Path, extra: dict[str, Any] | None = None,
                prompt_options: PromptOptions | None = None, dtype: torch.dtype | None = None,
                state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a loadable checkpoint atomically: a temp folder beside it, then one rename. The
    weights are saved in `dtype` (None: the model's own), and config.json says so: a learner
    with float32 master weights of a bf16 policy saves a bf16 checkpoint. `state`: the weights
    to write instead of the model's own (a sharded learner's, gathered), already in `dtype`.
    `extra` and the router's `prompt_options` (key "prompt", read back by
    router_r1.env.prompt.load_prompt_options) go to router_r1.json beside the weights."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    meta = dict(extra or {})
    if prompt_options is not None:
        meta["prompt"] = prompt_options.model_dump()
    dtype = dtype or model.dtype
    with atomic_dir(path) as tmp:
        if state is None and dtype == model.dtype:
            model.save_pretrained(tmp, safe_serialization=True)
        else:  # cast tensor by tensor into the file; the model itself stays as it is
            if state is None:
                state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
            # save_pretrained writes the in-memory model's dtype; the file holds `dtype`
            cfg = json.loads((tmp / "config.json").read_text())
            cfg["dtype"] = str(dtype).removeprefix("torch.")
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(tmp)
        if meta:
            (tmp / POLICY_META).write_text(json.dumps(meta, indent=2))
    return path

