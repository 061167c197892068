"""Issue 27, "one World for every command": a user's routing data set given only as a class in a
config (tests/recorded_world_tiny.py: recorded answers, graded scores, costs; no data file) trains
the LLM router (`router-r1 train`), trains the RLlib router (`router-r1 train-rllib --config`) and
is evaluated with its baselines and both routers (`router-r1 evaluate --config`). Every routed call
is answered by the pool's `world` backend from the world's own recorded answers. Also: the long
table's documented example (docs/evaluation.md) and examples/recorded_world.py run as written."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from recorded_world_tiny import write_pool

ROOT = Path(__file__).resolve().parents[1]
TINY = {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 1024}


@pytest.mark.ray
@pytest.mark.slow
def test_one_custom_world_trains_evaluates_and_trains_the_rllib_router(tmp_path, ray_local, capsys):
    from pipelines.cli import main as router_r1
    from router_r1.pool.ledger import read_records

    write_pool(tmp_path / "pool.yaml")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "name": "oneworld", "seed": 0, "output_dir": str(tmp_path / "run"), "pool": "pool.yaml",
        "pool_runtime": {"actor_name": f"pool_{uuid.uuid4().hex[:8]}", "ledger_dir": str(tmp_path / "ledger"),
                         "cache": False, "num_cpus": 0},
        "policy": {"tokenizer_vocab_size": 400, "tiny": TINY},
        "episode": {"max_turns": 1, "max_new_tokens": 40, "max_obs_tokens": 8},
        "rollout": {"num_actors": 1, "episodes_per_actor": 8, "num_cpus": 0},
        "learner": {"algorithm": "grpo", "group_size": 4, "lr": 1e-3, "num_cpus": 0, "micro_batch_size": 8},
        "warmstart": {"steps": 80, "lr": 1e-2, "batch_size": 8, "num_traces": 32},
        "reward": {"alpha": 0.2, "normalizer": "reference", "reference_cost_usd": 0.01},
        # The whole data set: a class and its options (importable by the Ray workers too).
        "data": {"kind": "custom", "world": "tests.recorded_world_tiny:TinyRecordedWorld", "options": {"n": 8},
                 "val_fraction": 0.3, "val_size": 4},
        "train": {"steps": 1, "checkpoint_every": 0, "sample_every": 0},
        "mlflow": {"enabled": False},
    }))

    assert router_r1(["train", "--config", str(cfg_file), "--no-progress"]) == 0, capsys.readouterr().err[-3000:]
    assert "router-r1 train: 1 steps" in capsys.readouterr().out
    calls = [r for r in read_records(tmp_path / "ledger") if r["kind"] == "call"]
    assert calls and any(r["status"] == "ok" for r in calls)  # the world backend answered routed calls

    rllib_dir = tmp_path / "rllib"
    rc = router_r1(["train-rllib", "--config", str(cfg_file), "--iterations", "2", "--batch", "64",
                    "--minibatch", "32", "--epochs", "1", "--hidden", "16", "--question-dim", "32",
                    "--num-envs", "2", "--out", str(rllib_dir), "--no-mlflow"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    meta = json.loads((rllib_dir / "rllib_router.json").read_text())
    assert meta["data"] == {"config": str(cfg_file.resolve())} and len(meta["history"]) == 2
    assert meta["reward"]["alpha"] == 0.2 and meta["slots"] == ["Big", "Mid", "Small"]

    out = tmp_path / "eval"
    rc = router_r1(["evaluate", "--config", str(cfg_file), "--split", "val", "--out", str(out), "--no-mlflow",
                    "--policy", f"baselines,per-task,llm:{tmp_path / 'run' / 'policy'},rllib:{rllib_dir}"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    s = json.loads((out / "summary.json").read_text())["TinyRecordedWorld[val]"]
    assert set(s) == {"single:Big", "single:Mid", "single:Small", "random", "cheapest (Small)", "largest (Big)",
                      "most-expensive (Big)", "oracle", "per-task:0", "llm:run", "rllib:rllib"}
    assert s["oracle"]["accuracy"] == pytest.approx(1.0) and s["oracle"]["failed_call_rate"] == 0.0
    assert s["single:Small"]["failed_call_rate"] == 0.0 and s["rllib:rllib"]["failed_call_rate"] == 0.0
    assert "| oracle |" in printed.out and "| llm:run |" in printed.out


def doc_block(name: str) -> str:
    """The code block of docs/evaluation.md that follows `<!-- example: NAME -->`."""
    import re

    text = (ROOT / "docs" / "evaluation.md").read_text()
    m = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert m, f"docs/evaluation.md has no example {name}"
    return m.group(1)


def test_the_documented_long_table_runs(tmp_path, monkeypatch, capsys):
    """The long table as an input format: the documented example, as written, through evaluate
    (as files, and as a run config's replay world answering `world`-kind models)."""
    from pipelines.cli import main as router_r1

    monkeypatch.chdir(tmp_path)
    exec(compile(doc_block("long_table.py"), "long_table.py", "exec"), {})
    (tmp_path / "my_pool.yaml").write_text(doc_block("my_pool.yaml"))
    assert router_r1(["evaluate", "--data", "my_answers.parquet", "--pool", "my_pool.yaml", "--policy", "baselines",
                      "--out", "o1", "--no-mlflow"]) == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "o1" / "summary.json").read_text())["my_answers"]
    assert s["single:Large-Model"]["accuracy"] == pytest.approx(1.0)
    assert s["single:Small-Model"]["accuracy"] == pytest.approx(2.5 / 5)  # graded: La Paz scores 0.5
    # The oracle: Small where it scores best too (questions 1, 3), else Large.
    assert s["oracle"]["accuracy"] == pytest.approx(1.0)
    assert s["oracle"]["cost_usd"] == pytest.approx((0.0001 + 0.002 + 0.0001 + 0.003 + 0.003) / 5)
    (tmp_path / "run.yaml").write_text("pool: my_pool.yaml\nmlflow: {enabled: false}\n"
                                       "data: {kind: replay, train: [my_answers.parquet], val_fraction: 0.4}\n")
    assert router_r1(["evaluate", "--config", "run.yaml", "--policy", "oracle,single:Small-Model", "--out", "o2",
                      "--no-mlflow"]) == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "o2" / "summary.json").read_text())["replay"]
    assert s["oracle"]["n"] == 5 and s["oracle"]["accuracy"] == pytest.approx(1.0)


def test_the_example_world_evaluates_from_its_config(tmp_path, monkeypatch, capsys):
    """examples/recorded_world.py: a user's JSONL of recorded answers as one class."""
    from pipelines.cli import main as router_r1

    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    rc = router_r1(["evaluate", "--config", "examples/recorded_world.yaml", "--policy", "baselines,per-task",
                    "--split", "val", "--out", str(tmp_path / "o"), "--no-mlflow"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())["AnswersFileWorld[val]"]
    assert s["oracle"]["accuracy"] >= s["single:Large-Model"]["accuracy"] > s["single:Small-Model"]["accuracy"]
    assert s["oracle"]["cost_usd"] < s["single:Large-Model"]["cost_usd"] and s["per-task:0"]["failed_call_rate"] == 0
