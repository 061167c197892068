"""End-to-end training runs at toy sizes: the CLI in a subprocess with a real SQLite MLflow store,
kill-and-resume determinism, refusal of a corrupt checkpoint, and a rollout actor killed mid-run."""
from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import pytest
import yaml

from router_r1.infra.config import load_config
from train_cli import run_train_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 512}
# Wall-clock and throughput metrics differ between runs by nature; everything else must not.
TIMING = ("time/", "per_s", "step_time", "learner/tokens_per_s", "sync/seconds", "sync/publish_s")


def tiny_config(out: Path, **over) -> dict:
    cfg = {
        "name": "tiny", "seed": 3, "output_dir": str(out / "run"),
        "pool": str(ROOT / "configs" / "pool_simulated.yaml"),
        "pool_runtime": {"actor_name": f"pool_{uuid.uuid4().hex[:8]}", "ledger_dir": None,
                         "cache": False, "num_cpus": 0},
        "policy": {"prompt_layout": "compact", "tokenizer_vocab_size": 400, "tiny": TINY},
        "episode": {"max_turns": 1, "max_new_tokens": 12, "max_obs_tokens": 16},
        "rollout": {"num_actors": 1, "episodes_per_actor": 8, "num_cpus": 0},
        "learner": {"algorithm": "grpo", "group_size": 4, "lr": 1e-3, "num_cpus": 0, "micro_batch_size": 8},
        "warmstart": {"steps": 2, "lr": 1e-3, "batch_size": 4, "num_traces": 16},
        "data": {"kind": "simulated", "sim": {"val_size": 4}},
        "train": {"steps": 2, "checkpoint_every": 1, "sample_every": 1},
        "mlflow": {"enabled": False},
        "ray": {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024},
    }
    for k, v in over.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return cfg


def as_run_config(d: dict):
    return load_config(None, {k: v for k, v in d.items()})


def comparable(m: dict) -> dict:
    return {k: v for k, v in m.items() if not any(t in k for t in TIMING)}


@pytest.mark.slow
def test_cli_run_writes_checkpoint_and_mlflow_run(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    # The demo's validation: held-out questions, plus the held-out-entity test played beside it.
    cfg = tiny_config(tmp_path, **{"mlflow.enabled": True, "mlflow.tracking_uri": f"sqlite:///{db}",
                                   "mlflow.experiment": "e2e",
                                   "data.sim": {"val_size": 4, "split": "question", "heldout_size": 4}})
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    proc = run_train_cli(cfg_file, tmp_path, 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "router-r1 train: 2 steps" in proc.stdout and "of the oracle" in proc.stdout
    assert "validation holds out questions" in proc.stdout and "held out entities (4 questions" in proc.stdout
    assert "greedy val by question type" in proc.stdout

    run_dir = Path(cfg["output_dir"])
    from router_r1.infra import checkpoint

    last = checkpoint.latest(run_dir)
    assert last is not None and last.name == "step_00000002"
    assert (run_dir / "policy" / "config.json").exists() and (run_dir / "report.json").exists()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["learner.algorithm"] == "grpo" and params["episode.max_turns"] == "1"
    assert not any("api_key" in k for k in params)
    for key in ("reward.mean", "format.ok_rate", "outcome.em", "cost.mean_usd", "calls.per_episode",
                "actor.kl", "actor.entropy", "sync.seconds", "sync.bytes", "rollout.tokens_per_s"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    for key in ("eval_held_out_entities.reward.mean", "eval.reward.mean"):  # start and end
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "training_curves.png", "samples", "checkpoint"} <= names
    # What a person sees: a training experiment, the run's summary first, samples as a table,
    # the warm start's loss per step.
    assert client.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert "| reward |" in run.data.tags["mlflow.note.content"] and "Warm start: 2" in run.data.tags["mlflow.note.content"]
    assert len(client.get_metric_history(run.info.run_id, "sft.nll")) == 2
    table = json.loads((Path(client.download_artifacts(run.info.run_id, "samples/step_000001.json"))).read_text())
    assert {"question", "response", "reward"} <= set(table["columns"]) and len(table["data"]) == 8
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert [m.name for m in models] == ["router"] and models[0].source_run_id == run.info.run_id


def synthetic_reward(episodes, scores):
    """Rewards that vary with the episode's text, so an untrained policy still gets non-zero
    advantages and every RL step really moves the weights and optimizer state."""
    return [dataclasses.replace(s, reward=dataclasses.replace(s.reward, reward=len(e.response) % 7 / 7))
            for e, s in zip(episodes, scores)]


@pytest.mark.ray
@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, ray_local):
    from functools import partial

    from pipelines.train import Trainer
    from router_r1.engines.model import CheckpointError

    T = partial(Trainer, reward_fn=synthetic_reward)

    full = T(as_run_config(tiny_config(tmp_path / "a", **{"train.steps": 3})), progress=False)
    full.run()
    # "Killed" after step 2: the run stops there with its checkpoint, then resumes to step 3.
    cut = tiny_config(tmp_path / "b", **{"train.steps": 2})
    T(as_run_config(cut), progress=False).run()
    resumed = T(as_run_config({**cut, "train": {**cut["train"], "steps": 3}}), resume=True, progress=False)
    resumed.run()
    assert [h["step"] for h in resumed.history] == [1, 2, 3]
    a, b = comparable(full.history[-1]), comparable(resumed.history[-1])
    assert a == b
    assert a["actor/kl"] > 0  # the steps really trained
    assert all(h["rollout/staleness_max"] == 0 for h in full.history)  # max_staleness 0: synchronous

    # A checkpoint edited after it was written is refused, naming the file.
    ckpt_dir = Path(cut["output_dir"]) / "checkpoints" / "step_00000003"
    model = ckpt_dir / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    again = T(as_run_config({**cut, "train": {**cut["train"], "steps": 4}}), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="sha256"):
        again.run()


@pytest.mark.ray
@pytest.mark.slow
def test_rollouts_ahead_of_the_learner_resume_exactly(tmp_path, ray_local):
    """rollout.max_staleness 1: steps train on episodes one version old (between checkpoints),
    and a run cut at a checkpoint and resumed repeats the uninterrupted one exactly."""
    from functools import partial

    from pipelines.train import Trainer

    T = partial(Trainer, reward_fn=synthetic_reward)
    over = {"rollout.max_staleness": 1, "train.checkpoint_every": 2}
    full = T(as_run_config(tiny_config(tmp_path / "a", **over, **{"train.steps": 4})), progress=False)
    full.run()
    assert [h["rollout/staleness_max"] for h in full.history] == [0.0, 1.0, 0.0, 1.0]
    cut = tiny_config(tmp_path / "b", **over, **{"train.steps": 2})
    T(as_run_config(cut), progress=False).run()
    resumed = T(as_run_config({**cut, "train": {**cut["train"], "steps": 4}}), resume=True, progress=False)
    resumed.run()
    assert [comparable(h) for h in resumed.history] == [comparable(h) for h in full.history]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("staleness", [0, 1])
def test_killed_rollout_actor_does_not_stop_training(tmp_path, ray_local, staleness):
    import ray

    from pipelines.train import Hooks, Trainer

    class KillOnce(Hooks):
        killed = False

        def before_rollouts(self, trainer, items, greedy):
            if trainer.step == 2 and not greedy and not self.killed:
                self.killed = True
                ray.kill(trainer.workers.workers[0], no_restart=False)

    cfg = tiny_config(tmp_path, **{"train.steps": 3, "rollout.num_actors": 2, "rollout.episodes_per_actor": 4,
                                   "rollout.max_staleness": staleness, "train.checkpoint_every": 3})
    kill = KillOnce()
    t = Trainer(as_run_config(cfg), progress=False, hooks=[kill])
    report = t.run()
    assert kill.killed and report["restarts"] >= 1
    assert [h["step"] for h in t.history] == [1, 2, 3]
    assert all(len(h) > 10 for h in t.history)
