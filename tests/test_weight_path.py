"""Weight sync goes learner -> object store -> rollout actors, never through the driver.

The driver's `sync_weights` must only forward references: it never `ray.put`s weights, never
receives a tensor from `ray.get`, and the refs it hands the rollout actors were created (owned)
by the learner actor, not by the driver. The same path serves the vLLM engine (its
`load_state_dict` receives what the rollout actor fetched), so checking it here covers both.
"""
from __future__ import annotations

import pytest
import torch

from tests.test_train_e2e import as_run_config, tiny_config


def _holds_tensor(x, depth: int = 0) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if depth > 4:
        return False
    if isinstance(x, dict):
        return any(_holds_tensor(v, depth + 1) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_holds_tensor(v, depth + 1) for v in x)
    return False


@pytest.mark.ray
def test_driver_forwards_learner_owned_refs_and_never_holds_weights(ray_local, tmp_path, monkeypatch):
    import ray

    from pipelines.train import Trainer

    t = Trainer(as_run_config(tiny_config(tmp_path)), progress=False)
    t.start_ray()  # already up: the session's Ray
    t.create_pool()
    t.create_learner()
    t.create_rollout_workers()
    try:
        got, put = [], []
        real_get, real_put = ray.get, ray.put

        def spy_get(refs, *a, **kw):
            value = real_get(refs, *a, **kw)
            got.append(value)
            return value

        def spy_put(value, *a, **kw):
            put.append(value)
            return real_put(value, *a, **kw)

        monkeypatch.setattr(ray, "get", spy_get)
        monkeypatch.setattr(ray, "put", spy_put)
        t.sync_weights()
        t.sync_weights()
        monkeypatch.undo()

        assert got, "the spy saw no ray.get: it is not measuring the driver"
        assert not put, "the driver put something into the object store during weight sync"
        assert not any(_holds_tensor(v) for v in got), "a tensor reached the driver"
        refs = t.workers.refs
        assert refs and all(isinstance(r, ray.ObjectRef) for r in refs)
        driver = ray.get_runtime_context().get_worker_id()
        learner = ray.get(t.learner.rank0.__ray_call__.remote(lambda self: ray.get_runtime_context().get_worker_id()))
        owner = refs[0].owner_address()
        # The owner address names the worker that created the object: the learner, not the driver.
        assert bytes.fromhex(learner) in owner and bytes.fromhex(driver) not in owner
        # and the rollout actors really loaded those weights (same version, same values)
        versions = ray.get([w.get_version.remote() for w in t.workers.workers])
        assert versions == [t.version] == [ray.get(t.learner.rank0.version.remote())]
        w0 = ray.get(t.workers.workers[0].__ray_call__.remote(
            lambda self: {k: v.clone() for k, v in self.engine.model.state_dict().items()}))
        lw = ray.get(t.learner.rank0.state_dict.remote())
        assert all(torch.equal(w0[k], lw[k]) for k in lw)
    finally:
        t.shutdown()  # kills the actors; the session's Ray stays (the trainer does not own it)
