"""Training checkpoints: atomic writes, verified loads, exact resume of the learner."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from actors.learner import Learner
from router_r1.engines.model import CheckpointError
from router_r1.infra import checkpoint
from tiny_learner import CORPUS, fixed_batch, tiny_config


def test_save_load_round_trip_and_manifest(tmp_path):
    path = checkpoint.save(tmp_path / "ck", {"a": {"w": torch.arange(5)}, "b": [1, 2.5, "x"]}, step=7,
                           meta={"extra": {"run_id": "abc"}})
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"a.pt", "b.pt"} and manifest["step"] == 7
    assert manifest["files"]["a.pt"]["bytes"] == (path / "a.pt").stat().st_size
    objects, step, meta = checkpoint.load(path)
    assert torch.equal(objects["a"]["w"], torch.arange(5)) and objects["b"] == [1, 2.5, "x"]
    assert step == 7 and meta == {"extra": {"run_id": "abc"}}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = checkpoint.save(tmp_path / "ck", {"model": {"w": torch.randn(100)}}, step=1)
    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt: \d+ bytes, the manifest says"):
        checkpoint.load(path)


def test_edited_file_is_refused_naming_it(tmp_path):
    path = checkpoint.save(tmp_path / "ck", {"model": {"w": torch.zeros(100)}}, step=1)
    data = bytearray((path / "model.pt").read_bytes())
    data[-40] ^= 0xFF  # same size, different bytes
    (path / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.pt: sha256 does not match"):
        checkpoint.load(path)


def test_partial_and_missing_checkpoints_are_refused(tmp_path):
    path = checkpoint.save(tmp_path / "ck", {"model": {"w": torch.zeros(3)}}, step=1)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json; the checkpoint is partial"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nowhere")
    path = checkpoint.save(tmp_path / "ck2", {"model": {"w": torch.zeros(3)}}, step=1)
    (path / "model.pt").unlink()
    with pytest.raises(CheckpointError, match=r"model\.pt: missing"):
        checkpoint.load(path)


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        checkpoint.save(tmp_path / "ck", {"ok": [1], "bad": Unpicklable()}, step=1)
    assert list(tmp_path.iterdir()) == []


def test_latest_picks_the_newest_complete_checkpoint(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    for step in (2, 10, 5):
        checkpoint.save(checkpoint.checkpoint_dir(tmp_path, step), {"x": [step]}, step=step)
    assert checkpoint.latest(tmp_path) == checkpoint.checkpoint_dir(tmp_path, 10)
    newest = checkpoint.checkpoint_dir(tmp_path, 12)
    checkpoint.save(newest, {"x": [12]}, step=12)
    (newest / "x.pt").write_bytes(b"short")  # a newer but broken one is passed over
    (tmp_path / "checkpoints" / "step_00000099").mkdir()  # an unfinished one too
    assert checkpoint.latest(tmp_path) == checkpoint.checkpoint_dir(tmp_path, 10)
    assert [p.name for p in checkpoint.prune(tmp_path, keep=2)] == ["step_00000002", "step_00000005", "step_00000010"]


def _strip_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith(("learner/step_time", "learner/tokens_per_s"))}


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_learner_resume_is_exact(tmp_path, algorithm):
    """Save after k steps, restore into a fresh learner: step k+1 matches the uninterrupted run."""
    cfg = tiny_config(algorithm, lr_schedule="cosine", warmup_steps=1)
    a = Learner(cfg, CORPUS)
    batch = fixed_batch(a.tokenizer)
    a.sft_step(batch)
    a.update(batch)
    a.policy_version = 3
    extra = {"normalizer": {"kind": "window", "costs": [0.1, 0.2]}, "mlflow_run_id": "r123"}
    a.save_checkpoint(tmp_path / "ck", extra)
    rand_a = (torch.rand(3), np.random.rand(), random.random())
    step_a = _strip_timing(a.update(batch))

    b = Learner(cfg.model_copy(update={"seed": 99}), CORPUS)  # different seed: everything must come from disk
    assert b.load_checkpoint(tmp_path / "ck") == extra
    assert (b.step, b.policy_version) == (1, 3)
    rand_b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(rand_a[0], rand_b[0]) and rand_a[1:] == rand_b[1:]
    step_b = _strip_timing(b.update(batch))
    assert step_a == step_b
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        assert torch.equal(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"])
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


def test_learner_refuses_a_corrupt_or_foreign_checkpoint(tmp_path):
    a = Learner(tiny_config("grpo"), CORPUS)
    a.save_checkpoint(tmp_path / "ck", {})
    with pytest.raises(CheckpointError, match="written by a grpo learner, this one runs ppo"):
        Learner(tiny_config("ppo"), CORPUS).load_checkpoint(tmp_path / "ck")
    f = tmp_path / "ck" / "optimizer.pt"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match=r"optimizer\.pt"):
        a.load_checkpoint(tmp_path / "ck")
