"""Checkpoints at scale (issue #16): optimizer and reference state optional in a learner
checkpoint, and the start-up check that output_dir is shared between learners and driver."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actors.learner import Learner
from router_r1.infra.preflight import check_shared_output_dir
from tests.tiny_learner import CORPUS, fixed_batch, tiny_config


def _train_cfg(**train):
    cfg = tiny_config(kl_coef=0.01)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})


def test_checkpoint_without_optimizer_and_reference_is_smaller_and_resumes(tmp_path):
    full_cfg, lean_cfg = _train_cfg(), _train_cfg(checkpoint_optimizer=False, checkpoint_reference=False)
    learner = Learner(full_cfg, CORPUS)
    batch = fixed_batch(learner.tokenizer)
    learner.update(batch)
    learner.save_checkpoint(tmp_path / "full")
    learner.cfg = lean_cfg
    learner.save_checkpoint(tmp_path / "lean")
    full = {p.name for p in (tmp_path / "full").iterdir()}
    lean = {p.name for p in (tmp_path / "lean").iterdir()}
    assert {"optimizer.pt", "reference.pt", "model.pt"} <= full
    assert "model.pt" in lean and not {"optimizer.pt", "reference.pt"} & lean

    def size(d):
        return sum(p.stat().st_size for p in (tmp_path / d).iterdir())
    assert size("lean") < size("full") / 2  # AdamW's two moments and the reference are most of it

    resumed = Learner(lean_cfg, CORPUS)
    resumed.load_checkpoint(tmp_path / "lean")
    assert resumed.reference is None and not resumed.optimizer.state  # fresh AdamW moments
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in learner.state_dict().items())
    m = resumed.update(batch)  # the reference is now the resumed policy: KL 0 on the first step
    assert resumed.reference is not None and m["actor/kl"] == pytest.approx(0.0, abs=1e-7)

    exact = Learner(full_cfg, CORPUS)  # the full checkpoint restores optimizer and reference
    exact.load_checkpoint(tmp_path / "full")
    assert exact.optimizer.state and exact.reference is not None
    assert all(torch.equal(exact.reference.state_dict()[k], v) for k, v in learner.reference.state_dict().items())


def _node_local_writer(node_disk: Path):
    """A learner on another node: it writes the same path, but on its own disk."""
    def write(folder: str, token: str) -> list[tuple[str, str]]:
        path = node_disk / Path(folder).relative_to(Path(folder).anchor) / f"{token}.rank0"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
        return [(str(Path(folder) / path.name), "10.0.0.7")]
    return write


def test_output_dir_not_visible_from_the_driver_is_one_clear_line(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError) as e:
        check_shared_output_dir(run_dir, _node_local_writer(tmp_path / "other_node"))
    msg = str(e.value)
    assert "\n" not in msg and "10.0.0.7" in msg and "not visible from the driver" in msg
    assert "must be shared storage" in msg and "NFS" in msg


def test_output_dir_not_writable_from_the_learner_is_one_clear_line(tmp_path):
    def refuse(folder, token):
        raise PermissionError(13, "Permission denied", folder)

    with pytest.raises(ValueError, match="not writable from the learner's node .*PermissionError.*shared storage"):
        check_shared_output_dir(tmp_path / "run", refuse)


@pytest.mark.ray
def test_learner_actors_pass_the_check_on_one_machine_and_leave_nothing(ray_local, tmp_path):
    from actors.learner_group import LearnerGroup

    group = LearnerGroup(Learner, tiny_config(), CORPUS)
    try:
        check_shared_output_dir(tmp_path / "run", group.write_storage_tokens)
        assert not (tmp_path / "run" / ".storage_check").exists()
        with pytest.raises(ValueError, match="not writable"):  # a file where the folder should be
            (tmp_path / "blocked").write_text("x")
            check_shared_output_dir(tmp_path / "blocked", group.write_storage_tokens)
    finally:
        group.kill()
