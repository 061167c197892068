"""`learner.num_learners: 2` through the driver's LearnerGroup on local Ray: two learner actors
form a process group (gloo), train on 3 rows (uneven shards) like one learner, stay identical,
and publish, checkpoint and restore through rank 0; with `learner.sharding: fsdp2` the same, each
holding half of the weights, which every rank gathers for rank 0 to publish and save."""
from __future__ import annotations

import pytest
import torch

from actors.learner import Learner
from actors.learner_group import LearnerGroup
from tiny_learner import CORPUS, fixed_batch, tiny_config

TIMING = ("learner/step_time_s", "learner/tokens_per_s")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["none", "fsdp2"])
def test_two_learner_actors_train_like_one(ray_local, tmp_path, sharding):
    ray = ray_local
    cfg = tiny_config(micro_batch_size=1, grad_accum=2, num_learners=2, num_cpus=0, sharding=sharding)
    group = LearnerGroup(Learner, cfg, CORPUS)
    try:
        assert len(group) == 2
        assert ray.get([a.__ray_call__.remote(lambda self: (self.rank, self.world_size)) for a in group.actors]) \
            == [(0, 2), (1, 2)]
        tok = ray.get(group.rank0.get_tokenizer.remote())
        batch = fixed_batch(tok).select([0, 1, 2])  # 3 rows on 2 ranks
        sft2, m2 = group.sft_step(batch), group.update(batch)

        one = Learner(cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"num_learners": 1})}), CORPUS)
        sft1, m1 = one.sft_step(batch), one.update(batch)
        for got, want in ((sft2, sft1), (m2, m1)):
            assert got.keys() == want.keys()
            for k in want:
                if k not in TIMING:
                    assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
        if sharding == "none":
            s0, s1 = ray.get([a.state_dict.remote() for a in group.actors])
            assert all(torch.equal(s0[k], s1[k]) for k in s0)  # the ranks stay identical
        else:  # each rank holds half; the group gathers them
            s0 = group.state_dict()
        single = one.state_dict()
        assert all(torch.allclose(s0[k], single[k], rtol=1e-3, atol=3e-4) for k in single)

        refs = group.publish_weights()
        assert len(refs) == 1 and group.version() == 1
        published = ray.get(refs[0])
        assert all(torch.equal(v, s0[k]) for k, v in published.items())
        group.save_policy(str(tmp_path / "policy"))
        from router_r1.engines.model import load_policy

        saved = load_policy(tmp_path / "policy")[0].state_dict()
        assert all(torch.equal(saved[k], s0[k]) for k in s0)
        path = group.save_checkpoint(str(tmp_path / "ck"), {"note": "x"})
        assert (tmp_path / "ck").is_dir() and path == str(tmp_path / "ck")
        assert group.load_checkpoint(path) == {"note": "x"}
        assert ray.get([a.version.remote() for a in group.actors]) == [1, 1]  # restored on every rank
    finally:
        group.kill()


@pytest.mark.ray
def test_a_failing_rank_raises_at_once(ray_local):
    """A rank that fails must not leave the driver waiting on the others (which would block in a
    collective until the process group's timeout)."""
    import time

    ray = ray_local

    @ray.remote(num_cpus=0)
    class Slow:
        def run(self):
            time.sleep(60)

    @ray.remote(num_cpus=0)
    class Failing:
        def run(self):
            raise RuntimeError("rank 1 failed")

    slow, failing = Slow.remote(), Failing.remote()
    t0 = time.perf_counter()
    with pytest.raises(ray.exceptions.RayTaskError, match="rank 1 failed"):
        LearnerGroup._all([slow.run.remote(), failing.run.remote()])
    assert time.perf_counter() - t0 < 30
    ray.kill(slow)
    ray.kill(failing)
