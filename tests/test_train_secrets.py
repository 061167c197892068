"""No part of a provider key in anything a whole `router-r1 train` run writes (issue: secrets never
leave). The run's only candidate is a real OpenAI-compatible HTTP server (tests/fake_openai_server)
that answers calls by turns with a 401 whose body echoes the bearer key across byte 200 and with
a successful (200) reply whose text carries the key (issue 24); the key is planted in the pool's
`api_key_env`. The router is warm-started to call that candidate, so the
echo reaches every place a reply can go: the router's <information> context, the ledger, MLflow
samples and metrics, checkpoints, the report, the terminal and Ray's session logs."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from fake_openai_server import fake_openai, fake_openai_session  # noqa: F401  (fixtures)
from train_cli import run_train_cli

from router_r1.util.redact import leaks

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "ROUTER_R1_TEST_PLANTED_KEY"  # planted by conftest
TINY = {"architecture": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 128, "max_position_embeddings": 384}


@pytest.mark.slow
def test_no_part_of_the_key_in_any_artifact_of_a_train_run(tmp_path, fake_openai):
    key = os.environ[KEY_ENV]
    fake_openai.set("Live", "echo_key_mixed")  # 401 echoing the key, then a 200 reply carrying it, ...
    # Ray's session directory (its logs) under a short private root: unix socket paths are limited.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rr1k", dir="/tmp"))
    try:
        pool = tmp_path / "pool.yaml"
        pool.write_text(yaml.safe_dump({"name": "live", "models": [{
            "name": "Live", "price": 1.0, "description": "answers arithmetic",
            "limits": {"max_attempts": 2},
            "backend": {"kind": "openai", "base_url": fake_openai.url, "api_key_env": KEY_ENV}}]}))
        db = tmp_path / "mlruns" / "mlflow.db"
        cfg = {
            "name": "secrets", "seed": 1, "output_dir": str(tmp_path / "run"), "pool": str(pool),
            "pool_runtime": {"actor_name": f"pool_{uuid.uuid4().hex[:8]}", "ledger_dir": str(tmp_path / "ledger"),
                             "cache": False, "num_cpus": 0},
            "policy": {"prompt_layout": "compact", "tokenizer_vocab_size": 500, "tiny": TINY},
            "episode": {"max_turns": 1, "max_new_tokens": 32, "max_obs_tokens": 48, "temperature": 0.3},
            "rollout": {"num_actors": 1, "episodes_per_actor": 4, "num_cpus": 0},
            "learner": {"algorithm": "grpo", "group_size": 2, "lr": 1e-3, "num_cpus": 0, "micro_batch_size": 8},
            "warmstart": {"steps": 150, "lr": 5e-3, "batch_size": 8},
            "data": {"kind": "custom", "world": "secret_probe_world:SecretProbeWorld"},
            "train": {"steps": 2, "checkpoint_every": 1, "sample_every": 1, "eval_every": 1},
            "mlflow": {"enabled": True, "tracking_uri": f"sqlite:///{db}", "experiment": "secrets"},
            "ray": {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024},
        }
        cfg_file = tmp_path / "run.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        proc = run_train_cli(cfg_file, tmp_path, 400, (ROOT, ROOT / "tests"), RAY_TMPDIR=str(ray_tmp),
                             **{KEY_ENV: key})
        assert proc.returncode == 0, proc.stderr[-3000:]
        # The router really called the candidate, with the key, and the server echoed it back.
        echoed = [r for r in fake_openai.log if r["model"] == "Live" and r["bearer"]]
        assert len(echoed) >= 4, proc.stdout[-3000:]
        assert {"echo_key", "echo_key_ok"} <= {r["mode"] for r in echoed if r["done"]}
        assert (tmp_path / "ledger").exists() and any((tmp_path / "mlruns").rglob("samples*"))

        found = {}
        for root in (tmp_path, ray_tmp):
            for f in root.rglob("*"):
                if f.is_file() and not f.is_symlink() and f.stat().st_size < 50_000_000:
                    hits = leaks(f.read_bytes().decode("latin-1"), key)
                    if hits:
                        found[str(f)] = hits
        assert found == {}
        assert leaks(proc.stdout + proc.stderr, key) == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
