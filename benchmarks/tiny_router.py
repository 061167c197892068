"""A tiny router checkpoint that reliably routes once and then answers: a fixture for the serving
tests and the load test, never a trained router.

A randomly initialised policy almost never writes a well-formed route, so nothing would reach the
ModelPool. A few hundred supervised steps on one script fix that: for any question, write
`<think> ... </think> <search> ROUTE_TO: QUERY </search>`, and after any <information> block write
`<think> ... </think> <answer> ANSWER </answer>`. The loss covers only the router's own text, as
in the real warm start. Greedy decoding (serve.temperature 0) then follows the script.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from router_r1.engines.model import build_tiny_policy, save_policy, train_tokenizer
from router_r1.env.prompt import PromptOptions, user_turn
from router_r1.env.protocol import information_block
from router_r1.pool.descriptors import PoolSpec

QUERY = "what is the answer to the question?"
ANSWER = "done"
WORDS = ("capital city river founder author book element coach team country born wrote "
         "discovered who what where when which the of a in is was Zelix Kestrel Velik Orma").split()
TINY = {"architecture": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 1024}


def _question(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "?"


def scripted_examples(pool: PoolSpec, route_to: str, n: int, seed: int = 0,
                      prompt_options: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(context, target) pairs: half first turns (route), half second turns (answer).
    `prompt_options`: router_r1.env.prompt.PromptOptions fields (the tokenizer has no chat template)."""
    opts = PromptOptions.model_validate(prompt_options or {})
    rng = random.Random(seed)
    route = f"<think> I should ask a model. </think>\n<search> {route_to}: {QUERY} </search>"
    answer = f"<think> I have the reply. </think>\n<answer> {ANSWER} </answer>"
    out = []
    for i in range(n):
        prompt = user_turn(pool, _question(rng), opts)
        if i % 2 == 0:
            out.append((prompt, route))
        else:
            reply = f"{route_to} answers: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
            out.append((prompt + route + information_block(reply), answer))
    return out


def build_scripted_router(path: str | Path, pool: PoolSpec, route_to: str, steps: int = 200,
                          batch_size: int = 8, lr: float = 3e-3, seed: int = 0,
                          prompt_options: dict[str, Any] | None = None) -> Path:
    """Train and save the scripted tiny router at `path`; returns the checkpoint directory."""
    torch.manual_seed(seed)
    examples = scripted_examples(pool, route_to, 256, seed, prompt_options)
    tok = train_tokenizer([c + t for c, t in examples], vocab_size=600)
    model = build_tiny_policy(TINY, tok, seed=seed)
    encoded = []
    for ctx, target in examples:
        c = tok.encode(ctx, add_special_tokens=False)
        t = tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
        encoded.append((c + t, [-100] * len(c) + t))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = rng.sample(encoded, batch_size)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, width), tok.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_policy(model, tok, path, extra={"kind": "scripted-tiny-router", "route_to": route_to,
                                                "final_loss": float(loss.detach()), "steps": steps},
                       prompt_options=PromptOptions.model_validate(prompt_options or {}))
