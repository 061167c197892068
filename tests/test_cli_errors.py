"""Every user mistake gets one line and a non-zero exit, before any actor or replica starts:
`train`, `serve` and `evaluate` fed what a new user feeds them (issue 14)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai_server import fake_openai, fake_openai_session  # noqa: F401  (fixtures)
from routerbench_tiny import write_pool, write_routerbench

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
SECRET = "sk-PLANTED-Zq8xK2vN-0123456789"


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "\x1b[" not in err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from router_r1.engines.model import build_tiny_policy, save_policy, train_tokenizer

    tok = train_tokenizer(["<think> </think> <answer> 4 </answer>"] * 10, vocab_size=100)
    model = build_tiny_policy({"architecture": "qwen2", "hidden_size": 16, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 32,
                               "max_position_embeddings": 256}, tok)
    return save_policy(model, tok, tmp_path_factory.mktemp("ckpt") / "policy")


def truncated_copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    w = dst / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return dst


@pytest.fixture
def no_actors(monkeypatch):
    """Fails the test if the train driver got as far as building its Trainer (actors, Ray)."""
    import pipelines.train as train

    def refuse(*a, **k):
        raise AssertionError("the driver created the Trainer: the pre-flight check did not stop it")

    monkeypatch.setattr(train, "Trainer", refuse)
    return train


# -- train -------------------------------------------------------------------------------------
def test_train_missing_or_truncated_checkpoint_is_one_line_before_any_actor(tmp_path, capsys, no_actors,
                                                                            tiny_policy):
    for ckpt, expect in ((tmp_path / "nowhere", "policy checkpoint not found"),
                         (truncated_copy(tiny_policy, tmp_path / "cut"), "truncated or corrupt")):
        rc = no_actors.main(["--config", DEMO, "--set", f"policy.checkpoint={ckpt}",
                             "--set", f"output_dir={tmp_path / 'out'}"])
        line = one_line(capsys.readouterr().err)
        assert rc == 2 and line.startswith("router-r1 train: ") and expect in line


def test_train_resume_from_a_hash_corrupt_checkpoint_is_one_line(tmp_path, capsys, no_actors):
    from router_r1.infra import checkpoint as ckpt

    out = tmp_path / "run"
    path = ckpt.save(ckpt.checkpoint_dir(out, 3), {"model": {"w": [1.0, 2.0, 3.0]}}, step=3)
    f = path / "model.pt"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # same size, different bytes: only the hash can tell
    f.write_bytes(bytes(data))
    rc = no_actors.main(["--config", DEMO, "--resume", "--set", f"output_dir={out}"])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "sha256 does not match" in line


def test_a_ray_task_error_prints_as_its_cause_in_one_line():
    from pipelines.cli import error_line
    from router_r1.engines.model import CheckpointError

    ray = pytest.importorskip("ray")
    cause = CheckpointError("ckpt/model.pt: sha256 does not match the manifest")
    wrapped = ray.exceptions.RayTaskError("load_checkpoint", "Traceback ...\n  \x1b[36mFile x\x1b[0m", cause)
    assert error_line(wrapped.as_instanceof_cause()) == str(cause)


def test_one_override_parser_for_every_subcommand():
    from pipelines.cli import parse_overrides

    assert parse_overrides(["a.b=1", "c=null", "d=[x, y]", "e={k: v}", "f=true", "g=text"]) == {
        "a.b": 1, "c": None, "d": ["x", "y"], "e": {"k": "v"}, "f": True, "g": "text"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


# -- serve -------------------------------------------------------------------------------------
def serve_main(*args: str) -> int:
    from pipelines.serve import main

    return main(["--no-blocking", *args])


def test_serve_truncated_weights_fail_before_deploying(tmp_path, capsys, tiny_policy):
    rc = serve_main("--checkpoint", str(truncated_copy(tiny_policy, tmp_path / "cut")), "--config", DEMO)
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "model.safetensors" in line and "truncated or corrupt" in line


def test_serve_malformed_api_keys_are_one_masked_line(tmp_path, capsys, monkeypatch, tiny_policy):
    from router_r1.util.redact import leaks

    monkeypatch.setenv("ROUTER_R1_API_KEYS", f"k1-abcdefgh:teamA,{SECRET}")
    rc = serve_main("--checkpoint", str(tiny_policy), "--config", DEMO)
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "ROUTER_R1_API_KEYS: item 2" in line and leaks(line, SECRET) == []


def test_serve_set_parses_yaml_values_like_train(tmp_path, capsys):
    # A mapping override: as a string (the old serve parser) the config would be refused.
    rc = serve_main("--checkpoint", str(tmp_path / "nowhere"), "--config", DEMO,
                    "--set", "serve.api_keys={k-abcdef: teamA}", "--set", "pool_runtime.ledger_dir=null")
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "policy checkpoint not found" in line


# -- evaluate ----------------------------------------------------------------------------------
def run_eval(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **(env or {})}
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "evaluate", *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=300)


def test_evaluate_unknown_single_model_is_one_line(tmp_path, capsys):
    from pipelines.evaluate import main

    csv = write_routerbench(tmp_path / "tiny.csv")
    pool = write_pool(tmp_path / "pool.yaml", [csv])
    rc = main(["--policy", "single:NoSuchModel", "--data", str(csv), "--pool", str(pool), "--no-mlflow",
               "--out", str(tmp_path / "o")])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "no model 'NoSuchModel'" in line


def openai_pool(path: Path, url: str, key_env: str) -> Path:
    path.write_text(f"name: live\nmodels:\n  - name: Live\n    price: 1.0\n"
                    f"    limits: {{max_attempts: 1}}\n"
                    f"    backend: {{kind: openai, base_url: '{url}', api_key_env: {key_env}}}\n")
    return path


def qa_file(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?",
                                        "golden_answers": [str(2 * i)]}) + "\n" for i in range(3)))
    return path


def test_evaluate_with_the_key_unset_fails_before_any_call(tmp_path, capsys, fake_openai, monkeypatch):
    from pipelines.evaluate import main

    monkeypatch.delenv("RR1_EVAL_ABSENT_KEY", raising=False)
    pool = openai_pool(tmp_path / "pool.yaml", fake_openai.url, "RR1_EVAL_ABSENT_KEY")
    rc = main(["--policy", "single:Live", "--data", str(qa_file(tmp_path / "qa.jsonl")), "--pool", str(pool),
               "--no-mlflow", "--out", str(tmp_path / "o")])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and "RR1_EVAL_ABSENT_KEY" in line and fake_openai.count() == 0


def test_evaluate_whose_calls_all_fail_exits_non_zero_and_mlflow_artifacts_sit_by_the_store(
        tmp_path, fake_openai):
    """Every call answered 500: the run says so and exits 1 (not 0 with EM 0). Its MLflow
    artifacts go beside the configured store, not to ./mlruns of the working directory, and the
    planted key is in none of the files the run wrote."""
    from router_r1.util.redact import leaks

    fake_openai.set("Live", "500")
    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir()
    pool = openai_pool(tmp_path / "pool.yaml", fake_openai.url, "RR1_EVAL_KEY")
    r = run_eval("--policy", "single:Live", "--data", str(qa_file(tmp_path / "qa.jsonl")), "--pool", str(pool),
                 "--out", str(tmp_path / "o"), "--mlflow-uri", f"sqlite:///{store / 'mlflow.db'}",
                 cwd=work, env={"RR1_EVAL_KEY": SECRET})
    assert r.returncode == 1, r.stderr[-2000:]
    assert "all 3 calls failed" in r.stderr and "FAILED" in r.stderr.splitlines()[-1]
    assert not (work / "mlruns").exists()
    arts = list((store / "artifacts").rglob("results.md"))
    assert len(arts) == 1
    for f in [*tmp_path.rglob("*")]:
        if f.is_file():
            assert leaks(f.read_bytes().decode("latin-1"), SECRET) == [], f
    assert leaks(r.stdout + r.stderr, SECRET) == []
