"""The GPU learner benchmark runs end to end at a tiny size on CPU (the same code runs on CUDA)."""
from __future__ import annotations

import json

from benchmarks.bench_learner_gpu import QWEN2_0_5B, main, update_flops


def test_flops_count_matches_the_formula():
    # GRPO, one epoch: scoring 2 x 2N + training 6N per token, plus attention.
    n, layers, d, s, tokens = 1000, 2, 8, 16, 32
    assert update_flops(n, layers, d, s, tokens, 1) == 10 * n * tokens + 5 * 4 * layers * d * s * tokens


def test_qwen2_0_5b_shape_has_about_half_a_billion_parameters():
    from transformers import AutoConfig

    kw = {k: v for k, v in QWEN2_0_5B.items() if k != "architecture"}
    c = AutoConfig.for_model("qwen2", tie_word_embeddings=True, **kw)
    per_layer = (c.hidden_size * c.hidden_size * 2  # q, o
                 + 2 * c.hidden_size * (c.hidden_size // c.num_attention_heads) * c.num_key_value_heads  # k, v
                 + 3 * c.hidden_size * c.intermediate_size)
    total = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
    assert 0.45e9 < total < 0.55e9


def test_tiny_run_reports_throughput_and_mfu(tmp_path):
    out = tmp_path / "r.json"
    assert main(["--tiny", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["tokens_per_s"] > 0 and r["step_s"] > 0
    assert 0 < r["mfu"] < 1 and r["matmul_peak_tflops"] > 0
    assert r["sequences"] == 8 and r["seq_len"] == 128
    assert r["params"] > 0 and r["learner_loss"] == r["learner_loss"]  # finite loss
