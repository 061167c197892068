"""How an RL update is cut (router_r1.rl.update): optimizer steps over a permutation per epoch,
each step's loss weights, and every rank's micro-batches of a step."""
from __future__ import annotations

import torch

from router_r1.rl import algos
from router_r1.rl.update import optimizer_steps, rank_micro_batches
from tiny_learner import tiny_config


def test_rank_micro_batches_give_every_rank_the_same_number_of_passes():
    rows = torch.tensor([7, 3, 5, 1, 0])
    assert [r.tolist() for r in rank_micro_batches(rows, 0, 1, 2)] == [[7, 3], [5, 1], [0]]
    r0, r1 = (rank_micro_batches(rows, rank, 2, 2) for rank in (0, 1))
    assert [r.tolist() for r in r0] == [[7, 5], [0]]  # every other row, from the rank's own
    assert [r.tolist() for r in r1] == [[3, 1], []]  # as many passes; the last one empty
    one = rank_micro_batches(torch.tensor([4]), 1, 2, 2)
    assert [r.tolist() for r in one] == [[]]  # a rank with no row still runs one (zero) pass


def test_optimizer_steps_cover_every_row_per_epoch_and_skip_steps_without_policy_tokens():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float)
    lc = tiny_config(micro_batch_size=1, grad_accum=2, ppo_epochs=2, loss_agg="seq-mean-token-sum").learner
    steps = list(optimizer_steps(mask, lc, torch.Generator().manual_seed(0)))
    per_epoch = [torch.cat([r for r, _ in steps[:3]]), torch.cat([r for r, _ in steps[3:]])]
    assert len(steps) == 6 and all(sorted(p.tolist()) == [0, 1, 2, 3, 4] for p in per_epoch)
    for rows, weights in steps:
        off = torch.ones(len(mask), dtype=torch.bool)
        off[rows] = False
        assert (weights[off] == 0).all()  # a step's loss is its own rows'
        assert torch.equal(weights[rows], algos.loss_weights(mask[rows], lc.loss_agg))
    lonely = torch.tensor([[0.0], [0.0], [1.0]])  # rows 0 and 1 have no policy token
    lc1 = tiny_config(micro_batch_size=1, grad_accum=1).learner
    assert [r.tolist() for r, _ in optimizer_steps(lonely, lc1, torch.Generator().manual_seed(0))] == [[2]]
