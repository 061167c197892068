"""benchmarks/gpu_check.py's entry point on CPU (--cpu-smoke: tiny model, transformers engine):
every figure the GPU run reports is produced, in under 60 s."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu-smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - t0 < 60
    f = json.loads(out.read_text())
    assert f["smoke"] and f["engine"] == "transformers" and f["params"] > 0
    s = f["sync"]
    assert s["dtype"] == "torch.bfloat16" and s["buckets"] >= 1 and s["seconds"] > 0
    assert s["bytes"] == 2 * (f["params"])  # bf16, tied embeddings once: 2 bytes per parameter
    assert f["rollout"]["generated_tokens"] > 0 and f["rollout"]["tokens_per_s"] > 0
    g = f["grpo_step"]
    assert g["tokens_per_s"] > 0 and 0 < g["mfu"] < 1 and g["loss"] == g["loss"]
    # the same bf16 weights on both sides: the sampler's log-probs are the learner's up to bf16 numerics
    assert g["logp_diff_mean"] is not None and 0 <= g["logp_diff_mean"] < 0.05
    assert f["served_request"]["prompt_tokens"] > 0 and f["served_request"]["latency_s"] > 0
    assert "wrote" in proc.stdout
