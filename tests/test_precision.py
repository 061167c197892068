"""Precision as configured (issue #16): `policy.dtype` from loading to saving, a frozen reference
in the policy dtype (none when kl_coef is 0), and float32 master weights of a bf16 policy."""
from __future__ import annotations

import json

import pytest
import torch

from actors.learner import Learner
from router_r1.engines.model import build_tiny_policy, load_policy, save_policy, train_tokenizer
from router_r1.infra.config import RunConfig
from tests.tiny_learner import CORPUS, TINY, fixed_batch, tiny_config


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A Qwen2-architecture checkpoint saved in bfloat16 (config.json says so)."""
    tok = train_tokenizer(CORPUS, 320)
    model = build_tiny_policy(TINY, tok, seed=3, dtype=torch.bfloat16)
    return save_policy(model, tok, tmp_path_factory.mktemp("ckpt") / "bf16")


def _cfg(checkpoint, **learner) -> RunConfig:
    base = tiny_config(**learner)
    return base.model_copy(update={"policy": base.policy.model_copy(update={"checkpoint": str(checkpoint)})})


def _params(module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_bf16_checkpoint_loads_and_saves_as_bf16_bit_exact(bf16_checkpoint, tmp_path):
    assert json.loads((bf16_checkpoint / "config.json").read_text())["dtype"] == "bfloat16"
    model, tok = load_policy(bf16_checkpoint)  # default: the checkpoint's own dtype
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    as_f32, _ = load_policy(bf16_checkpoint, dtype="float32")  # asked for explicitly
    assert {p.dtype for p in as_f32.parameters()} == {torch.float32}
    save_policy(model, tok, tmp_path / "again")
    back, _ = load_policy(tmp_path / "again")
    sd, sd2 = model.state_dict(), back.state_dict()
    assert all(sd2[k].dtype == torch.bfloat16 and torch.equal(sd[k], sd2[k]) for k in sd)
    # a float32 model saved as bf16 (master weights): the file and its config are bf16
    save_policy(as_f32, tok, tmp_path / "cast", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "cast" / "config.json").read_text())["dtype"] == "bfloat16"
    cast, _ = load_policy(tmp_path / "cast")
    assert all(torch.equal(cast.state_dict()[k], sd[k]) for k in sd)
    assert as_f32.dtype == torch.float32  # the model itself was not cast


def test_learner_trains_a_bf16_policy_with_a_frozen_bf16_reference(bf16_checkpoint, tmp_path):
    learner = Learner(_cfg(bf16_checkpoint, kl_coef=0.01))
    assert learner.dtype == torch.bfloat16
    assert {p.dtype for p in learner.model.lm.parameters()} == {torch.bfloat16}
    m = learner.update(fixed_batch(learner.tokenizer))
    ref = learner.reference
    assert ref is not None and "actor/kl" in m and m["actor/kl"] >= 0
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad or p.grad is not None for p in ref.parameters())
    assert not ref.training and all(not mod.training for mod in ref.modules())
    in_opt = {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    assert not in_opt & _params(ref), "reference parameters in the optimizer"
    assert not {id(p) for p in learner.optimizer.state} & _params(ref), "optimizer state for the reference"
    assert learner.optimizer.state, "the policy itself has optimizer state after a step"
    state = learner.optimizer.state[next(iter(learner.model.lm.parameters()))]
    assert state["exp_avg"].dtype == torch.bfloat16  # no master weights: state in the policy dtype
    assert {v.dtype for v in learner.state_dict().values() if v.is_floating_point()} == {torch.bfloat16}
    learner.save_policy(tmp_path / "policy")
    assert load_policy(tmp_path / "policy")[0].dtype == torch.bfloat16


def test_float32_master_weights_of_a_bf16_policy_publish_and_save_bf16(bf16_checkpoint, tmp_path):
    learner = Learner(_cfg(bf16_checkpoint, kl_coef=0.01, master_dtype="float32"))
    start, _ = load_policy(bf16_checkpoint)
    assert {p.dtype for p in learner.model.lm.parameters()} == {torch.float32}
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in learner.state_dict().items())
    learner.update(fixed_batch(learner.tokenizer))
    state = learner.optimizer.state[next(iter(learner.model.lm.parameters()))]
    assert state["exp_avg"].dtype == torch.float32
    assert {p.dtype for p in learner.reference.parameters()} == {torch.bfloat16}
    published = learner.state_dict()
    assert {v.dtype for v in published.values() if v.is_floating_point()} == {torch.bfloat16}
    master = learner.model.lm.state_dict()
    assert all(torch.equal(published[k], master[k].to(torch.bfloat16)) for k in published)
    learner.save_policy(tmp_path / "policy")
    saved, _ = load_policy(tmp_path / "policy")
    assert saved.dtype == torch.bfloat16
    assert all(torch.equal(saved.state_dict()[k], published[k]) for k in published)


def test_no_reference_when_kl_coef_is_zero(tmp_path):
    learner = Learner(tiny_config(kl_coef=0.0), CORPUS)
    m = learner.update(fixed_batch(learner.tokenizer))
    assert learner.reference is None and "actor/kl" not in m
    learner.save_checkpoint(tmp_path / "ck")
    assert (tmp_path / "ck" / "model.pt").exists() and not (tmp_path / "ck" / "reference.pt").exists()
    again = Learner(tiny_config(kl_coef=0.0), CORPUS)
    again.load_checkpoint(tmp_path / "ck")
    assert again.reference is None


def test_tiny_policy_in_bf16_is_the_float32_init_rounded():
    tok = train_tokenizer(CORPUS, 320)
    f32 = build_tiny_policy(TINY, tok, seed=1)
    bf = build_tiny_policy(TINY, tok, seed=1, dtype=torch.bfloat16)
    assert all(torch.equal(bf.state_dict()[k], v.to(torch.bfloat16)) for k, v in f32.state_dict().items())
