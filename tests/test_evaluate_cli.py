"""`router-r1 evaluate` end to end in a subprocess: replay and QA datasets, baselines and an LLM
router checkpoint, on a pool that adds a model the router never saw; checks the Markdown table,
the Parquet rows, the PNG and the MLflow run in a real SQLite store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from routerbench_tiny import write_pool, write_routerbench

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def tiny_llm(tmp_path):
    """An untrained tiny router LLM saved as a checkpoint (the same code path as a trained one)."""
    from router_r1.engines.model import build_tiny_policy, save_policy, train_tokenizer

    tok = train_tokenizer(["<think> </think> <search> Big: What is 2 + 2? </search> <answer> 4 </answer>"] * 20,
                          vocab_size=300)
    model = build_tiny_policy({"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
                               "max_position_embeddings": 2048}, tok)
    return save_policy(model, tok, tmp_path / "tiny_llm")


def test_evaluate_end_to_end(tmp_path, tiny_llm):
    csv = write_routerbench(tmp_path / "tiny.csv")
    # A pool with a model the LLM router never saw in training (descriptors only change).
    extra = ("  - name: Newcomer\n    aliases: [m-new]\n    price: 0.1\n    seen_in_training: false\n"
             "    backend: {kind: replay}\n")
    pool = write_pool(tmp_path / "pool.yaml", [csv], extra)
    qa = tmp_path / "qa_test.jsonl"
    qa.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?",
                                        "golden_answers": [str(2 * i)]}) for i in range(3)) + "\n")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("episode: {max_turns: 1, max_new_tokens: 6, temperature: 0.0}\n"
                   "mlflow: {experiment: t}\neval: {concurrency: 4}\n")
    out = tmp_path / "out"
    db = tmp_path / "mlruns" / "mlflow.db"
    # The oracle chooses by replay labels: on a QA set it is skipped, with a note; alone there,
    # nothing is left to run.
    r = run_cli("--policy", "oracle", "--data", str(qa), "--pool", str(pool), "--config", str(cfg),
                "--out", str(out), "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "oracle skipped on qa_test" in r.stderr and "nothing to evaluate" in r.stderr

    r = run_cli("--policy", f"single:Big,cheapest,oracle,llm:{tiny_llm}", "--data", f"{csv},{qa}",
                "--pool", str(pool), "--config", str(cfg), "--out", str(out),
                "--mlflow-uri", f"sqlite:///{db}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "oracle skipped on qa_test" in r.stderr
    # Policies that cannot get a single answer here (`cheapest` is the Newcomer, which has no
    # column in the replay tables; a replay pool knows no QA question) are a loud warning each,
    # and the run still writes every result.
    assert "WARNING: cheapest (Newcomer) on tiny: all 4 calls failed" in r.stderr

    md = (out / "results.md").read_text()
    assert "### tiny" in md and "### qa_test" in md and "| single:Big | 4 | 0.750 |" in md
    assert "Note: oracle skipped on qa_test" in md
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 3 * (4 + 3) + 4  # the oracle on the replay set only
    big = [x for x in rows if x["policy"] == "single:Big" and x["dataset"] == "tiny"]
    assert sum(x["cost_usd"] for x in big) == pytest.approx(0.1)
    llm = [x for x in rows if x["policy"] == "llm:tiny_llm"]
    assert len(llm) == 7 and all(x["format_ok"] in (True, False) for x in llm)
    qa_rows = [x for x in rows if x["dataset"] == "qa_test"]
    assert all(x["em"] is not None and x["accuracy"] is None for x in qa_rows)
    for name in ("frontier_tiny.png", "frontier_qa_test.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiny"]["single:Big"]["accuracy"] == pytest.approx(0.75)
    assert summary["tiny"]["oracle"]["accuracy"] == pytest.approx(0.75) and "oracle" not in summary["qa_test"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("t-eval")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["tiny/single:Big/accuracy"] == pytest.approx(0.75)
    assert run.data.params["split"] == "all"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.md", "results.parquet", "frontier_tiny.png"} <= arts


def test_evaluate_bad_input_is_a_clear_error(tmp_path):
    r = run_cli("--policy", "cheapest", "--data", str(tmp_path / "missing.csv"), "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "dataset not found" in r.stderr and "missing.csv" in r.stderr
    csv = write_routerbench(tmp_path / "tiny.csv")
    pool = write_pool(tmp_path / "pool.yaml", [csv])
    r = run_cli("--policy", "cheapest", "--data", str(csv), "--pool", str(pool), "--exclude", "Nobody",
                "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 2 and "'Nobody' is not in pool" in r.stderr


def test_evaluate_excluding_models(tmp_path):
    csv = write_routerbench(tmp_path / "tiny.csv")
    pool = write_pool(tmp_path / "pool.yaml", [csv])
    r = run_cli("--policy", "cheapest,oracle", "--data", str(csv), "--pool", str(pool), "--exclude", "Small",
                "--out", str(tmp_path / "o"), "--no-mlflow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "o" / "summary.json").read_text())["tiny"]
    # Without Small: cheapest is Mid (.25, $.0025); the oracle picks Mid, Big, Mid, Big.
    assert s["cheapest (Mid)"]["accuracy"] == pytest.approx(0.25)
    assert s["oracle"]["accuracy"] == pytest.approx(0.75)
    assert s["oracle"]["cost_usd"] == pytest.approx((0.001 + 0.02 + 0.003 + 0.04) / 4)


def test_evaluate_a_world_from_its_config_alone(tmp_path, capsys):
    """Issue 27: no --data; the questions and recorded answers come from the config's world (a
    class, nothing on disk but the descriptors). The oracle reads graded scores (Mid's 0.5 on
    `triple` questions is not "correct"); `largest` on a pool with no size is skipped, saying so."""
    from recorded_world_tiny import write_pool as write_recorded_pool

    from pipelines import evaluate

    pool = write_recorded_pool(tmp_path / "pool.yaml")
    pool.write_text("\n".join(ln for ln in pool.read_text().splitlines() if "params_b" not in ln) + "\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("pool: pool.yaml\nmlflow: {enabled: false}\n"
                   "data: {kind: custom, world: 'recorded_world_tiny:TinyRecordedWorld', options: {n: 12}, "
                   "val_fraction: 0.3}\n")
    out = tmp_path / "out"
    rc = evaluate.main(["--config", str(cfg), "--policy", "baselines,per-task", "--split", "val",
                        "--out", str(out), "--no-mlflow"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "largest skipped: no model of pool 'tiny-recorded' has a known size (params_b); unknown size" in err
    s = json.loads((out / "summary.json").read_text())["TinyRecordedWorld[val]"]
    assert set(s) == {"single:Big", "single:Mid", "single:Small", "random", "cheapest (Small)",
                      "most-expensive (Big)", "oracle", "per-task:0"}
    assert s["oracle"]["accuracy"] == pytest.approx(1.0) and s["single:Big"]["accuracy"] == pytest.approx(1.0)
    assert s["oracle"]["cost_usd"] < s["single:Big"]["cost_usd"]
    assert s["per-task:0"]["accuracy"] == pytest.approx(1.0)  # Big or Mid per task, from the train split
    assert "Note: largest skipped" in (out / "results.md").read_text()
    rc = evaluate.main(["--config", str(cfg), "--policy", "largest", "--out", str(out), "--no-mlflow"])
    assert rc == 2 and "nothing to evaluate" in capsys.readouterr().err
    rc = evaluate.main(["--policy", "cheapest", "--out", str(out), "--no-mlflow"])
    assert rc == 2 and "no questions: give --data FILES, or --config" in capsys.readouterr().err


def test_evaluate_the_simulated_world_from_its_config(tmp_path, capsys):
    """The same `data:` section as `router-r1 train`, for a world without recorded answers: its
    questions and gold answers, the pool's own (simulated) backend; the oracle is skipped."""
    from pipelines import evaluate

    cfg = tmp_path / "sim.yaml"
    cfg.write_text(f"pool: {ROOT / 'configs' / 'pool_simulated.yaml'}\nmlflow: {{enabled: false}}\n"
                   "data: {sim: {train_size: 6, val_size: 3}}\n")
    rc = evaluate.main(["--config", str(cfg), "--policy", "cheapest,oracle", "--split", "val",
                        "--out", str(tmp_path / "o"), "--no-mlflow"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())["simulated[val]"]
    (name,) = s
    assert name.startswith("cheapest (") and s[name]["n"] == 3 and s[name]["em"] is not None
    assert s[name]["failed_call_rate"] == 0.0
