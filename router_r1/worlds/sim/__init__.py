"""The simulator: an invented world, simulated candidate models, the oracle, and warm-start traces.

Everything here is a simulation, built deterministically from a seed, so training, tests and the
ModelPool's `simulated` backend can run without any real model. See `knowledge.py` for the
knowledge base, `models.py` for the simulated models, `plans.py` for fixed routing plans,
`oracle.py` for expected rewards, `traces.py` for the supervised warm-start traces, `backend.py`
for the ModelPool backend and `world.py` for the training World built on all of them.
"""
from router_r1.worlds.sim.knowledge import SimConfig, SimQuestion, KnowledgeBase
from router_r1.worlds.sim.models import SimCall, SimModel, SimModelSpec, SimReply, Simulation
from router_r1.worlds.sim.oracle import (best_single_model, by_question_type, expected_rewards, oracle_plan,
                                         oracle_reward, question_type, single_model_policy_reward)
from router_r1.worlds.sim.traces import make_trace, make_traces, tokenizer_corpus

__all__ = ["SimCall", "SimConfig", "SimModel", "SimModelSpec", "SimQuestion", "SimReply",
           "KnowledgeBase", "Simulation", "best_single_model", "by_question_type", "expected_rewards", "make_trace",
           "make_traces", "oracle_plan", "oracle_reward", "question_type", "single_model_policy_reward",
           "tokenizer_corpus"]
