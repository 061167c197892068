"""Data-parallel learners over torch.distributed (gloo, CPU, float32): with rows that do not split
evenly over the ranks (3, 5 and 1 rows on 2), every rank runs the same optimizer steps and backward
passes (no deadlock), and the SFT step and the RL update are the one learner's: same loss and
metrics, same weights afterwards."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

# name -> (algorithm, rows, learner options). Each case has an optimizer step (and an SFT
# micro-batch) in which rank 1 has no row left and must run a zero-weight pass.
CASES = {
    "grpo_3rows": ("grpo", 3, {"micro_batch_size": 1, "grad_accum": 2, "ppo_epochs": 2,
                               "loss_agg": "seq-mean-token-mean"}),
    "ppo_5rows": ("ppo", 5, {"micro_batch_size": 2, "grad_accum": 1, "kl_coef": 0.1, "entropy_coef": 0.01,
                             "vf_clip": 0.5}),
    "grpo_5rows": ("grpo", 5, {"micro_batch_size": 2, "grad_accum": 2, "loss_agg": "seq-mean-token-sum",
                               "kl_coef": 0.1, "kl_estimator": "k2"}),
    "ppo_1row": ("ppo", 1, {"micro_batch_size": 2, "grad_accum": 1}),  # rank 1 scores and trains nothing
}
TIMING = ("learner/step_time_s", "learner/tokens_per_s")


def uneven_batch(tokenizer, n: int):
    """n episodes of different questions, replies and answers (uneven token counts), each as
    prompt | policy | information | policy segments; groups [0, 0, 0] and, from 4 rows on, [1, 1]."""
    from router_r1.rl.batch import TrajectoryBatch

    answers = ["Marlow", "Quenby", "I do not know", "Marlow", "Quenby"]
    infos = ["The capital of Veloria is Marlow.", "Quenby.", "Nobody knows that.",
             "It is Marlow, the old port.", "Veloria?"]
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    prompts, responses, masks = [], [], []
    for i in range(n):
        prompts.append(enc(f"Question {i}: what is the capital of Veloria? " + "Answer with the city. " * (1 + i % 2)))
        segments = [("<think>I should ask a model.</think><search>Alpha-7B: capital of Veloria?</search>", 1),
                    (f"<information>{infos[i]}</information>", 0),
                    (f"<think>It says {answers[i]}.</think><answer>{answers[i]}</answer>", 1)]
        ids = [(enc(text), m) for text, m in segments]
        responses.append([t for seg, _ in ids for t in seg])
        masks.append([m for seg, m in ids for _ in seg])
    return TrajectoryBatch(prompt_ids=prompts, response_ids=responses, loss_mask=masks,
                           rewards=[1.0, 0.0, 0.5, 1.0, 0.0][:n], group_ids=[0, 0, 0, 1, 1][:n],
                           policy_version=[0] * n)


def _worker(rank: int, world: int, out_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_learner import CORPUS, tiny_config

    from actors.learner import Learner

    torch.set_num_threads(1)
    if world > 1:  # a file store in tmp: no free-port race with the suite's Ray processes
        from actors.learner import init_process_group

        init_process_group(rank, world, init_method=f"file://{out_dir}/rendezvous", timeout_s=120)
    results = {}
    for name, (algorithm, n, options) in CASES.items():
        # Different seeds per rank: DDP must broadcast rank 0's weights at wrap time, and the
        # update's row permutation must come from rank 0.
        learner = Learner(tiny_config(algorithm, **options).model_copy(update={"seed": rank}), CORPUS)
        assert (learner.world_size, learner.ddp is not None) == (world, world > 1)
        batch = uneven_batch(learner.tokenizer, n)
        grads = []  # the gradient of every optimizer step (SFT, then the update's), as stepped on

        def record(optimizer, args, kwargs, learner=learner, grads=grads):
            grads.append({k: p.grad.clone() for k, p in learner.model.named_parameters() if p.grad is not None})

        learner.sft_optimizer = learner._new_sft_optimizer()
        learner.sft_optimizer.register_step_pre_hook(record)
        learner.optimizer.register_step_pre_hook(record)
        sft = learner.sft_step(batch)
        update = learner.update(batch)
        results[name] = {"state": learner.model.state_dict(), "sft": sft, "update": update, "grads": grads}
    torch.save(results, f"{out_dir}/world{world}_rank{rank}.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


def _strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in TIMING}


@pytest.mark.slow
def test_uneven_shards_match_one_learner(tmp_path):
    mp.spawn(_worker, args=(1, str(tmp_path)), nprocs=1, join=True)
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "world1_rank0.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / f"world2_rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in CASES:
        a, b, c = one[name], r0[name], r1[name]
        # The two ranks stay identical, and report the same (global) metrics.
        for k, v in b["state"].items():
            assert torch.equal(v, c["state"][k]), (name, k)
        assert _strip(b["update"]) == _strip(c["update"]) and _strip(b["sft"]) == _strip(c["sft"]), name
        # ... and equal the one learner's, up to float summation order: the same metrics, the
        # same optimizer steps, and the same gradient at the first step of SFT and of the update
        # (a missing row, a wrong denominator or a missing x world_size would show here; Adam's
        # update is scale-free, so the weights alone would not tell).
        for part in ("sft", "update"):
            single, dp = _strip(a[part]), _strip(b[part])
            assert single.keys() == dp.keys(), (name, part)
            for k in single:
                assert dp[k] == pytest.approx(single[k], rel=1e-4, abs=1e-6), (name, part, k)
        assert len(a["grads"]) == len(b["grads"]) == len(c["grads"]), name
        first_update = 1  # grads[0] is the SFT step's
        for i in (0, first_update):
            for k, g in a["grads"][i].items():
                assert torch.allclose(b["grads"][i][k], g, rtol=1e-4, atol=1e-7), (name, i, k)
        # Weights after SFT and every optimizer step: float noise, amplified where Adam divides a
        # near-cancelling gradient by its tiny norm, stays far below one step's size (lr 3e-3).
        for k, v in a["state"].items():
            assert torch.allclose(v, b["state"][k], rtol=1e-3, atol=3e-4), (name, k)
    assert one["grpo_3rows"]["update"]["learner/optimizer_steps"] == 4.0  # 2 epochs x steps of 2 + 1 rows
    assert one["ppo_5rows"]["update"]["learner/optimizer_steps"] == 3.0  # 2 + 2 + 1 rows
    assert one["grpo_5rows"]["update"]["learner/optimizer_steps"] == 2.0  # 4 + 1 rows
    assert one["ppo_1row"]["update"]["learner/optimizer_steps"] == 1.0
