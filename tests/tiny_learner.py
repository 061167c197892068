"""A tiny learner and a fixed batch of router episodes, shared by the learner/checkpoint tests."""
from __future__ import annotations

from router_r1.env.episode import Episode, Segment
from router_r1.infra.config import RunConfig
from router_r1.rl.batch import TrajectoryBatch

TINY = {"architecture": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512}

CORPUS = [
    "Question: what is the capital of Veloria? Answer with the city.",
    "<think>I should ask a model.</think><search>Alpha-7B: capital of Veloria?</search>",
    "<information>The capital of Veloria is Marlow.</information><think>It says Marlow.</think>",
    "<answer>Marlow</answer> <answer>Quenby</answer> <answer>I do not know</answer>",
] * 8


def tiny_config(algorithm: str = "grpo", **learner) -> RunConfig:
    lc = {"algorithm": algorithm, "lr": 3e-3, "micro_batch_size": 2, "grad_accum": 2, "kl_coef": 0.0}
    lc.update(learner)
    return RunConfig(seed=0, policy={"tiny": TINY, "tokenizer_vocab_size": 320}, learner=lc,
                     warmstart={"lr": 3e-3}, train={"steps": 20})


def episode(i: int, answer: str, info: str = "The capital of Veloria is Marlow.") -> Episode:
    e = Episode(uid=f"q{i}", question="capital of Veloria?", golden_answers=["Marlow"],
                prompt="Question: what is the capital of Veloria? Answer with the city.\n", policy_version=0)
    e.segments = [Segment("<think>I should ask a model.</think><search>Alpha-7B: capital of Veloria?</search>", "policy"),
                  Segment(f"<information>{info}</information>", "information"),
                  Segment(f"<think>It says Marlow.</think><answer>{answer}</answer>", "policy")]
    return e


def fixed_batch(tokenizer, info: str = "The capital of Veloria is Marlow.") -> TrajectoryBatch:
    """One GRPO group of four: two right answers (reward 1), two wrong (reward 0)."""
    eps = [episode(i, a, info) for i, a in enumerate(["Marlow", "Quenby", "Marlow", "I do not know"])]
    return TrajectoryBatch.from_traces(eps, tokenizer, rewards=[1.0, 0.0, 1.0, 0.0], group_ids=[0, 0, 0, 0])
