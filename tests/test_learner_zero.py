"""Sharded optimizer state (issue #16, item 2, ZeRO stage 1 through torch's own
ZeroRedundancyOptimizer): two gloo learners with `learner.sharding: zero1` give the one learner's
update on the same batch, each holding AdamW state for its shard of the parameters only, and a
checkpoint consolidates the whole state on rank 0."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

CASES = {"grpo_5rows": ("grpo", 5, {"micro_batch_size": 2, "grad_accum": 2, "kl_coef": 0.1, "ppo_epochs": 2}),
         "ppo_3rows": ("ppo", 3, {"micro_batch_size": 1, "grad_accum": 2, "kl_coef": 0.1})}


def _worker(rank: int, world: int, out_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_learner_ddp import uneven_batch
    from tiny_learner import CORPUS, tiny_config

    from actors.learner import Learner
    from router_r1.infra.seeding import rng_state, set_rng_state

    torch.set_num_threads(1)
    if world > 1:
        from actors.learner import init_process_group

        init_process_group(rank, world, init_method=f"file://{out_dir}/rendezvous", timeout_s=120)
    results = {}
    for name, (algorithm, n, options) in CASES.items():
        learner = Learner(tiny_config(algorithm, sharding="zero1", **options).model_copy(update={"seed": rank}), CORPUS)
        sharded = type(learner.optimizer).__name__ == "ZeroRedundancyOptimizer"
        assert sharded == (world > 1)
        batch = uneven_batch(learner.tokenizer, n)
        update = learner.update(batch)
        names = {id(p): k for k, p in learner.model.named_parameters()}
        local = learner.optimizer.optim.state if sharded else learner.optimizer.state
        learner.save_checkpoint(Path(out_dir) / f"ck_{name}_{world}")
        # resume from it: a fresh (sharded) learner continues exactly as this one does
        again = Learner(tiny_config(algorithm, sharding="zero1", **options).model_copy(update={"seed": 7}), CORPUS)
        again.load_checkpoint(Path(out_dir) / f"ck_{name}_{world}")
        state = {k: v.clone() for k, v in learner.model.state_dict().items()}
        rng = rng_state()  # one process, one global RNG: both continue from the checkpoint's
        learner.update(batch)
        set_rng_state(rng)
        again.update(batch)
        resumed_equal = all(torch.equal(v, again.model.state_dict()[k]) for k, v in learner.model.state_dict().items())
        results[name] = {"state": state, "update": update, "resumed_equal": resumed_equal,
                         "local_state": sorted(names[id(p)] for p in local),
                         "local_bytes": sum(t.numel() * t.element_size() for s in local.values()
                                            for t in s.values() if torch.is_tensor(t) and t.dim() > 0)}
    torch.save(results, f"{out_dir}/world{world}_rank{rank}.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_sharded_learners_equal_one(tmp_path):
    mp.spawn(_worker, args=(1, str(tmp_path)), nprocs=1, join=True)
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "world1_rank0.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / f"world2_rank{r}.pt", weights_only=True) for r in (0, 1))
    timing = ("learner/step_time_s", "learner/tokens_per_s")
    for name in CASES:
        a, b, c = one[name], r0[name], r1[name]
        for k, v in b["state"].items():  # ranks identical after the broadcast of each shard
            assert torch.equal(v, c["state"][k]), (name, k)
        for k, v in a["state"].items():  # and equal to the one learner's, up to float summation order
            assert torch.allclose(v, b["state"][k], rtol=1e-3, atol=3e-4), (name, k)
        for k, v in a["update"].items():
            if k not in timing:
                assert b["update"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (name, k)
        # each rank holds AdamW state for its own shard: disjoint, together every parameter
        s0, s1, everything = set(b["local_state"]), set(c["local_state"]), set(a["local_state"])
        assert s0 and s1 and not s0 & s1 and s0 | s1 == everything, name
        assert b["local_bytes"] < a["local_bytes"] and c["local_bytes"] < a["local_bytes"]
        assert b["local_bytes"] + c["local_bytes"] == a["local_bytes"]
        # the checkpoint holds the whole (consolidated) optimizer state, as the one learner's
        sharded = torch.load(tmp_path / f"ck_{name}_2" / "optimizer.pt", weights_only=True)
        single = torch.load(tmp_path / f"ck_{name}_1" / "optimizer.pt", weights_only=True)
        assert a["resumed_equal"] and b["resumed_equal"] and c["resumed_equal"], name
        assert sorted(sharded["state"]) == sorted(single["state"])
        for i, st in single["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(sharded["state"][i][key], st[key], rtol=1e-3, atol=1e-6), (name, i, key)
