"""The router policy: a transformers causal LM, its tokenizer, and batched generation.

Real routers load a local checkpoint directory (`load_policy`); no hub downloads happen here.
The demo and tests build a tiny model from a config (`build_tiny_policy`) with a byte-level BPE
tokenizer trained locally on the task's own text, with the protocol tags as single tokens.
Shared by the learner, the rollout actors, serving and evaluation.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from router_r1.env.prompt import POLICY_META, PromptOptions
from router_r1.env.protocol import STOP_STRINGS, TAGS
from router_r1.infra.atomic import atomic_dir

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


def build_tiny_policy(tiny: dict[str, Any], tokenizer, seed: int = 0):
    """A randomly initialised causal LM from a config dict (`architecture` picks the family)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(tiny)
    arch = kw.pop("architecture", "qwen2")
    vocab = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    cfg = AutoConfig.for_model(arch, vocab_size=vocab, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                               tie_word_embeddings=kw.pop("tie_word_embeddings", True), **kw)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def check_checkpoint_dir(path: str | Path) -> Path:
    """`path` when it looks like a transformers checkpoint folder; a clear CheckpointError if not."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"policy checkpoint not found: {path}")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json; not a transformers checkpoint")
    return path


def load_policy(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load (model, tokenizer) from a local checkpoint directory, refusing partial ones."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = check_checkpoint_dir(path)
    try:
        tok = _load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32)
    except Exception as e:  # safetensors/json errors: say which checkpoint and why
        raise CheckpointError(f"{path}: cannot load policy checkpoint ({type(e).__name__}: {e})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok


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
                prompt_options: PromptOptions | None = None) -> Path:
    """Write a loadable checkpoint atomically: a temp folder beside it, then one rename.
    `extra` and the router's `prompt_options` (key "prompt", read back by
    router_r1.env.prompt.load_prompt_options) go to router_r1.json beside the weights."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    meta = dict(extra or {})
    if prompt_options is not None:
        meta["prompt"] = prompt_options.model_dump()
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if meta:
            (tmp / POLICY_META).write_text(json.dumps(meta, indent=2))
    return path


class HFGenerator:
    """Batched sampling with transformers `generate`, stopping at </search> or </answer>.

    One call generates one turn for every live episode at once (left padding), which is what
    makes rollouts and serving cheap on CPU; the vLLM engine offers the same `generate`.
    """

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", max_context: int | None = None):
        self.model, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        self.tokenizer.padding_side = "left"
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", 2048)
        self._stop_cache: dict[tuple[str, ...], list[int] | None] = {}

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 128, temperature: float = 1.0,
                 top_p: float = 1.0, stop: Sequence[str] = STOP_STRINGS, seed: int | None = None) -> list[str]:
        if not prompts:
            return []
        tok = self.tokenizer
        limit = max(1, self.max_context - max_new_tokens)
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False,
                  truncation=True, max_length=limit)
        if tok.truncation_side != "left":  # keep the end of an over-long context, not its start
            tok.truncation_side = "left"
            enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False,
                      truncation=True, max_length=limit)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        if seed is not None:
            torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        sample = temperature > 0
        stop_ids = self._stop_token_ids(tuple(stop or ()))
        stopping = ({"eos_token_id": [tok.eos_token_id, *stop_ids]} if stop_ids is not None else
                    {"eos_token_id": tok.eos_token_id, "stop_strings": list(stop), "tokenizer": tok})
        out = self.model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=sample,
            temperature=temperature if sample else None, top_p=top_p if sample else None,
            top_k=0 if sample else None, pad_token_id=tok.pad_token_id, **stopping)
        if was_training:
            self.model.train()
        new = out[:, enc["input_ids"].shape[1]:]
        return tok.batch_decode(new, skip_special_tokens=True)

    def _stop_token_ids(self, stop: tuple[str, ...]) -> list[int] | None:
        """The stop strings' token ids when each is one token (the tiny router's tags are added
        tokens): stopping on ids is a cheap check per step, where `stop_strings` matches decoded
        text across every sequence of the batch. None: some stop string spans several tokens."""
        if stop not in self._stop_cache:
            ids = [self.tokenizer.encode(s, add_special_tokens=False) for s in stop]
            self._stop_cache[stop] = [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None
        return self._stop_cache[stop]

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
