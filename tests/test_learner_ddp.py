"""Two data-parallel learners over torch.distributed (gloo, CPU): gradients are averaged, so the
replicas stay identical, and metrics are all-reduced."""
from __future__ import annotations

import sys

import pytest
import torch
import torch.multiprocessing as mp


def _worker(rank: int, world: int, out_dir: str) -> None:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from tiny_learner import CORPUS, fixed_batch, tiny_config

    from actors.learner import Learner

    torch.set_num_threads(1)
    # Different seeds per rank: DDP must broadcast rank 0's weights at wrap time.
    learner = Learner(tiny_config("ppo").model_copy(update={"seed": rank}), CORPUS)
    # A file store in tmp: no free-port race with the suite's Ray processes.
    learner.init_process_group(rank, world, init_method=f"file://{out_dir}/rendezvous")
    batch = fixed_batch(learner.tokenizer)
    sft = learner.sft_step(batch)
    metrics = learner.update(batch)
    torch.save({"state": learner.model.state_dict(), "metrics": metrics, "sft": sft}, f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_learners_stay_in_sync(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    assert r0["metrics"] == r1["metrics"] and r0["sft"] == r1["sft"]
    assert r0["metrics"]["learner/optimizer_steps"] == 1.0  # 2 rows per rank, one optimizer step
