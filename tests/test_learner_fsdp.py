"""FSDP2 as the sharded learner (issue 25, `learner.sharding: fsdp2`): two gloo learners, each
holding half of every weight, gradient and AdamW moment, give the one learner's SFT step and RL
update on the same batch (losses to 1e-6, weights to float rounding); a checkpoint holds the whole
state and a resumed pair continues exactly as the uninterrupted one; published weights are
gathered one all-gather per bucket and equal the one learner's; the saved policy loads as a plain
transformers checkpoint."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

# name -> (algorithm, rows, learner options): uneven rows over 2 ranks (a rank with an empty
# micro-batch, scoring included), a KL reference, PPO's value head (unused in the SFT step).
CASES = {"grpo_5rows": ("grpo", 5, {"micro_batch_size": 2, "grad_accum": 2, "kl_coef": 0.1, "ppo_epochs": 2}),
         "ppo_3rows": ("ppo", 3, {"micro_batch_size": 1, "grad_accum": 2, "kl_coef": 0.1, "entropy_coef": 0.01})}
LOSSES = ("sft/nll", "actor/pg_loss", "learner/loss", "actor/kl", "critic/vf_loss")
BUCKET_MB = 0.05  # the tiny policy's ~0.4 MB in several buckets


def _worker(rank: int, world: int, out_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import ray
    from test_learner_ddp import uneven_batch
    from tiny_learner import CORPUS, tiny_config

    import actors.learner as learner_mod
    from actors.learner import Learner, rng_state, set_rng_state
    from router_r1.engines.model import load_policy

    torch.set_num_threads(1)
    if world > 1:
        learner_mod.init_process_group(rank, world, init_method=f"file://{out_dir}/rendezvous", timeout_s=120)
    ray.put = lambda obj: obj  # publish_weights' buckets themselves, without a Ray cluster
    gathers = [0]
    all_gather = torch.distributed.all_gather_single

    def counting(*args, **kwargs):
        gathers[0] += 1
        return all_gather(*args, **kwargs)

    torch.distributed.all_gather_single = counting
    results = {}
    for name, (algorithm, n, options) in CASES.items():
        cfg = tiny_config(algorithm, sharding="fsdp2", sync_bucket_mb=BUCKET_MB, **options)
        learner = Learner(cfg.model_copy(update={"seed": rank}), CORPUS)  # rank 0's weights win
        assert learner.fsdp == (world > 1)
        batch = uneven_batch(learner.tokenizer, n)
        metrics = learner.sft_step(batch) | learner.update(batch)
        local = sum(p.to_local().numel() if learner.fsdp else p.numel() for p in learner.model.parameters())
        moments = sum(t.to_local().numel() if learner.fsdp else t.numel()
                      for s in learner.optimizer.state.values() for t in s.values() if t.dim() > 0)
        gathers[0] = 0
        buckets = learner.publish_weights()
        published = {"buckets": len(buckets), "gathers": gathers[0], "state": {k: v for b in buckets for k, v in b.items()}}
        state = learner.state_dict()
        learner.save_policy(Path(out_dir) / f"policy_{name}_{world}")
        saved = load_policy(Path(out_dir) / f"policy_{name}_{world}")[0].state_dict() if rank == 0 else {}
        ck = Path(out_dir) / f"ck_{name}_{world}"
        learner.save_checkpoint(ck)
        again = Learner(cfg.model_copy(update={"seed": 7}), CORPUS)  # other weights until it loads
        again.load_checkpoint(ck)
        rng = rng_state()  # one process, one global RNG: both continue from the checkpoint's
        learner.update(batch)
        set_rng_state(rng)
        again.update(batch)
        after, resumed = learner.state_dict(), again.state_dict()
        results[name] = {"metrics": metrics, "state": state, "published": published, "saved": saved,
                         "local": local, "moments": moments,
                         "resumed_equal": all(torch.equal(v, resumed[k]) for k, v in after.items())}
    torch.save(results, f"{out_dir}/world{world}_rank{rank}.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_fsdp2_learners_equal_one_and_resume_exactly(tmp_path):
    import ray

    put, gather = ray.put, torch.distributed.all_gather_single
    try:  # in this process: the worker's stand-ins for ray.put and all_gather_single must not leak
        _worker(0, 1, str(tmp_path))
    finally:
        ray.put, torch.distributed.all_gather_single = put, gather
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "world1_rank0.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / f"world2_rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in CASES:
        a, b, c = one[name], r0[name], r1[name]
        for k in LOSSES:  # the one learner's step: same losses
            if k in a["metrics"]:
                assert b["metrics"][k] == pytest.approx(a["metrics"][k], abs=1e-6), (name, k)
        assert b["metrics"]["learner/grad_norm"] == pytest.approx(a["metrics"]["learner/grad_norm"], rel=1e-5)
        assert a["state"].keys() == b["state"].keys() and c["state"] == {}  # gathered on rank 0 only
        for k, v in a["state"].items():  # same weights, up to float summation order
            assert torch.allclose(v, b["state"][k], rtol=1e-3, atol=3e-4), (name, k)
        # each rank holds half of every weight and moment (dim 0, padded to whole rows)
        assert b["local"] + c["local"] >= a["local"] and max(b["local"], c["local"]) < 0.6 * a["local"]
        assert b["moments"] + c["moments"] >= a["moments"] and max(b["moments"], c["moments"]) < 0.6 * a["moments"]
        # weight sync: one all-gather per bucket, the same buckets and weights as the one learner's
        pa, pb, pc = a["published"], b["published"], c["published"]
        assert pb["buckets"] == pa["buckets"] > 1 and pb["gathers"] == pc["gathers"] == pb["buckets"]
        assert pc["buckets"] == 0  # rank 1 gathered, rank 0 put
        assert pb["state"].keys() == pa["state"].keys()
        assert all(torch.equal(v, b["state"][k]) for k, v in pb["state"].items())
        assert all(torch.equal(v, b["state"][k]) for k, v in b["saved"].items()) and b["saved"].keys() == b["state"].keys()
        # resume from the sharded checkpoint: exactly the uninterrupted run
        assert a["resumed_equal"] and b["resumed_equal"] and c["resumed_equal"], name
    # the checkpoint holds the whole model, as the one learner's does
    whole = torch.load(tmp_path / "ck_grpo_5rows_2" / "model.pt", weights_only=True)
    single = torch.load(tmp_path / "ck_grpo_5rows_1" / "model.pt", weights_only=True)
    assert whole.keys() == single.keys() and all(whole[k].shape == v.shape for k, v in single.items())


def test_shard_optimizer_is_refused_in_one_line():
    from router_r1.infra.config import load_config

    with pytest.raises(ValueError, match=r"learner.shard_optimizer is now learner.sharding: write `sharding: zero1`"):
        load_config(overrides={"learner.shard_optimizer": True})
