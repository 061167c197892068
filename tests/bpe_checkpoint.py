"""A small Qwen2-architecture checkpoint whose tokenizer behaves like a real one, built offline.

Real instruct checkpoints (Qwen2.5, Llama-3) ship a byte-level BPE tokenizer in which every
protocol tag is several tokens, a chat template, and a `generation_config.json` with sampling
defaults (Qwen2.5: repetition_penalty 1.05, top_p 0.8, top_k 20). The demo's tokenizer makes each
tag one added token and is trained on the exact text it later sees, which hides every bug where
text is encoded again. This checkpoint has none of those shortcuts:

- a byte-level BPE trained here on generic English (no protocol tags in the corpus), with the
  Qwen2 pre-tokenizer regex, so `</search>` is 3-5 tokens and `>` may merge with a newline;
- Qwen-style special tokens and chat template;
- a generation_config.json that sets a repetition penalty, top-p and top-k;
- weights from a short supervised fit on protocol traces, so sampling at temperature 1 produces
  multi-turn episodes (routes, then an answer) often enough to test them.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GENERATION_CONFIG = {"bos_token_id": 0, "eos_token_id": [2, 0], "pad_token_id": 0, "do_sample": True,
                     "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20}

_WORDS = ("the a of to in and is was who which what where when capital city river founded wrote "
          "discovered invented born large small model answer question think search information "
          "general biology history science museum river lake north south paris rome berlin madrid "
          "orvium bazus labs guthe kelmar tovi ask reply says know need check first then").split()
_MODELS = ["Qwen-Small", "Llama-Big"]


def _sentences(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":"]))
    return out


def trace(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """(question, [(text, origin)]): a two-turn protocol trace, policy and information segments."""
    subj = rng.choice(["Orvium", "Bazus Labs", "Kelmar", "Tovi"])
    ans = rng.choice(["Paris", "Rome", "Berlin", "Madrid"])
    model = rng.choice(_MODELS)
    q = f"Who founded {subj}?"
    return q, [
        (f"<think> I need to ask about {subj}. </think>\n<search> {model}: who founded {subj}? </search>", "policy"),
        (f"\n\n<information>{subj} was founded in {ans}.</information>\n\n", "information"),
        (f"<think> The reply says {ans}. </think>\n<answer> {ans} </answer>", "policy"),
    ]


def build_bpe_tokenizer(vocab_size: int = 600, seed: int = 0):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_sentences(random.Random(seed), 3000), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_bpe_checkpoint(path: str | Path, seed: int = 0, fit_steps: int = 120) -> Path:
    """Write the checkpoint folder (config, safetensors, tokenizer, generation_config.json)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tok = build_bpe_tokenizer(seed=seed)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    _fit(model, tok, seed, fit_steps)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    gen = dict(GENERATION_CONFIG, eos_token_id=[tok.eos_token_id, tok.pad_token_id],
               pad_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id)
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return path


def prompt_text(tok, question: str) -> str:
    user = f"Answer the question. Models: {', '.join(_MODELS)}.\nQuestion: {question}"
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                   add_generation_prompt=True)


def _fit(model, tok, seed: int, steps: int) -> None:
    """A short supervised fit on policy tokens of protocol traces (information is context only)."""
    import torch

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = []
        for _ in range(8):
            q, segs = trace(rng)
            ids = tok.encode(prompt_text(tok, q), add_special_tokens=False)
            labels = [-100] * len(ids)
            for text, origin in segs:
                s = tok.encode(text, add_special_tokens=False)
                ids += s
                labels += s if origin == "policy" else [-100] * len(s)
            rows.append((ids, labels))
        n = max(len(i) for i, _ in rows)
        ids = torch.tensor([i + [tok.pad_token_id] * (n - len(i)) for i, _ in rows])
        labels = torch.tensor([lab + [-100] * (n - len(lab)) for _, lab in rows])
        att = (torch.arange(n)[None, :] < torch.tensor([len(i) for i, _ in rows])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
