"""HFGenerator stops on single-token stop strings by token id; the result equals transformers'
own `stop_strings` matching."""
from __future__ import annotations

import torch

from router_r1.policy import HFGenerator, build_tiny_policy, train_tokenizer

TINY = {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 256}


def test_stop_by_token_id_matches_stop_strings():
    tok = train_tokenizer(["where is the capital of vorland? <search> a: b </search> <answer> c </answer>"] * 8,
                          vocab_size=300)
    model = build_tiny_policy(TINY, tok, seed=3).eval()
    gen = HFGenerator(model, tok)
    prompts = ["where is the capital", "the capital of vorland?"]
    free = gen.generate(prompts, max_new_tokens=12, temperature=0, stop=())
    # A stop string the greedy continuation of the first prompt reaches: its 4th new token.
    ids = tok(free[0], add_special_tokens=False)["input_ids"]
    stop = (tok.decode([ids[3]]),)
    assert gen._stop_token_ids(stop) == [ids[3]]  # one token: the id path is taken

    by_id = gen.generate(prompts, max_new_tokens=12, temperature=0, stop=stop)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, stop_strings=list(stop), tokenizer=tok,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    by_string = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert by_id == by_string
    assert by_id[0].endswith(stop[0]) and len(by_id[0]) < len(free[0])


def test_multi_token_stop_strings_use_string_matching():
    tok = train_tokenizer(["alpha beta gamma"] * 4, vocab_size=280)
    gen = HFGenerator(build_tiny_policy(TINY, tok), tok)
    assert gen._stop_token_ids(("</search>", "</answer>")) is not None  # the tags are added tokens
    assert gen._stop_token_ids(("alpha beta gamma delta",)) is None
