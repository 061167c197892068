"""The learner on a tiny policy: GRPO/PPO/SFT steps learn on a fixed batch, information tokens are
never trained on, micro-batching is exact, weights travel through the Ray object store."""
from __future__ import annotations

import pytest
import torch

from actors.learner import Learner
from router_r1.rl import algos
from router_r1.rl.schedule import lr_lambda
from tiny_learner import CORPUS, fixed_batch, tiny_config


def _copy(sd):
    return {k: v.clone() for k, v in sd.items()}


def _token_logp(learner: Learner, batch) -> torch.Tensor:
    """log-prob of every response token under the current policy: (B, T)."""
    tb = batch.to_tensors(learner.tokenizer.pad_token_id)
    with torch.no_grad():
        return learner._forward(learner.model, tb)[0]


def _row_logp(learner: Learner, batch) -> torch.Tensor:
    """Mean log-prob of each row's policy tokens under the current policy: (B,)."""
    m = batch.to_tensors(0).loss_mask.float()
    return (_token_logp(learner, batch) * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_update_changes_weights_and_improves_the_objective(algorithm):
    learner = Learner(tiny_config(algorithm, ppo_epochs=2, micro_batch_size=4, grad_accum=1), CORPUS)
    batch = fixed_batch(learner.tokenizer)
    adv_sign = torch.tensor([1.0, -1.0, 1.0, -1.0])  # rewards 1, 0, 1, 0 in one group
    before, lp0, tok0 = _copy(learner.state_dict()), _row_logp(learner, batch), _token_logp(learner, batch)
    mask = batch.to_tensors(0).loss_mask.float()
    adv = algos.grpo_advantages(torch.tensor(batch.rewards), torch.tensor(batch.group_ids))[:, None] * mask

    def surrogate() -> float:
        """-mean(ratio * A) against the weights before any update (unclipped: after several
        updates every ratio leaves the trust region, where the clipped form stops measuring)."""
        return algos.policy_loss(_token_logp(learner, batch), tok0, adv, mask, clip_eps=1e9)[0].item()

    loss0 = surrogate()

    first = learner.update(batch)
    after = learner.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for key in ("actor/pg_loss", "actor/clipfrac", "actor/entropy", "learner/step_time_s",
                "learner/tokens_per_s", "learner/lr", "learner/grad_norm"):
        assert key in first
    assert "actor/kl" not in first and learner.reference is None  # kl_coef 0: no reference at all
    assert first["learner/staleness"] == 0.0  # every episode came from version 0
    metrics = [learner.update(batch) for _ in range(5)]
    lp = _row_logp(learner, batch)
    # Advantage-weighted log-likelihood (the surrogate at ratio 1) goes up: rewarded answers gain.
    assert (adv_sign * lp).sum() > (adv_sign * lp0).sum() + 0.5
    assert lp[0] - lp[1] > lp0[0] - lp0[1] and lp[2] - lp[3] > lp0[2] - lp0[3]
    assert surrogate() < loss0 - 0.1
    if algorithm == "ppo":
        assert "critic/vf_loss" in first
        assert metrics[-1]["critic/vf_loss"] < first["critic/vf_loss"]
    assert learner.step == 6


def test_sft_step_lowers_nll_on_policy_tokens_only():
    learner = Learner(tiny_config(), CORPUS)
    batch = fixed_batch(learner.tokenizer)
    m0 = learner.sft_step(batch)
    nll0 = -_row_logp(learner, batch).mean()
    for _ in range(8):
        m = learner.sft_step(batch)
    assert m["sft/nll"] < m0["sft/nll"] - 0.5
    assert -_row_logp(learner, batch).mean() < nll0
    # The information text is context, never a target: the loss counts policy tokens only, and
    # the NLL it reports is the mean over exactly those.
    assert m0["sft/policy_tokens"] == sum(sum(x) for x in batch.loss_mask)
    mask = batch.to_tensors(0).loss_mask.float()
    want = -(_token_logp(learner, batch) * mask).sum() / mask.sum()
    assert learner.sft_step(batch)["sft/nll"] == pytest.approx(want.item(), rel=1e-5)


def _param_grads(learner: Learner, tb, adv, old, ref):
    learner.model.zero_grad(set_to_none=True)
    logp, _, _ = learner._forward(learner.model, tb)
    m = tb.loss_mask.float()
    pg, _ = algos.policy_loss(logp, old, adv, m, 0.2)
    kl, _ = algos.kl_penalty(logp, ref, m)
    (pg + 0.1 * kl).backward()
    return {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}


def test_information_tokens_change_no_gradient():
    learner = Learner(tiny_config(), CORPUS)
    tb = fixed_batch(learner.tokenizer).to_tensors(learner.tokenizer.pad_token_id)
    info = tb.loss_mask == 0
    torch.manual_seed(1)
    adv, old, ref = (torch.randn(tb.loss_mask.shape) for _ in range(3))
    g = _param_grads(learner, tb, adv, old, ref)
    poison = lambda x: torch.where(info, torch.full_like(x, 1e4), x)  # noqa: E731
    g2 = _param_grads(learner, tb, poison(adv), poison(old), poison(ref))
    assert g.keys() == g2.keys() and len(g) > 0
    for n in g:
        assert torch.equal(g[n], g2[n]), n


def test_micro_batches_and_accumulation_match_one_big_batch():
    """The token-mean over an optimizer step does not depend on how it is cut into micro-batches."""
    batch = None
    grads = []
    for mbs, accum in ((4, 1), (1, 4), (3, 2)):
        learner = Learner(tiny_config("ppo", micro_batch_size=mbs, grad_accum=accum, kl_coef=0.1), CORPUS)
        batch = batch or fixed_batch(learner.tokenizer)
        seen = {}

        def record(optimizer, args, kwargs, learner=learner, seen=seen):
            seen.update({n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None})

        learner.optimizer.register_step_pre_hook(record)
        learner.update(batch)
        grads.append(seen)
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for k in grads[0]:
            assert torch.allclose(grads[0][k], other[k], rtol=1e-4, atol=1e-7), k


def test_gradient_checkpointing_gives_the_same_update_and_bf16_runs():
    states = []
    for gc in (False, True):  # checkpointing turns prefix sharing off; compare like with like
        learner = Learner(tiny_config("ppo", gradient_checkpointing=gc, share_prefix=False), CORPUS)
        assert getattr(learner.model.lm, "is_activation_checkpointing", gc) == gc
        learner.update(fixed_batch(learner.tokenizer))
        states.append(learner.model.state_dict())
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], atol=1e-6), k
    learner = Learner(tiny_config("grpo", bf16=True), CORPUS)  # autocast; CPU here, CUDA on a GPU
    m = learner.update(fixed_batch(learner.tokenizer))
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())


def test_lr_schedule_warmup_then_decay():
    f = lr_lambda(2, 10, "cosine")
    assert [round(f(s), 3) for s in (0, 1)] == [0.333, 0.667]
    assert f(2) == 1.0 and f(10) == pytest.approx(0.0) and 0 < f(6) < 1
    g = lr_lambda(0, 10, "linear")
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5)
    assert lr_lambda(3, 10, "constant")(9) == 1.0


def test_save_policy_loads_as_a_plain_transformers_checkpoint(tmp_path):
    from router_r1.engines.model import load_policy

    learner = Learner(tiny_config(), CORPUS)
    learner.sft_step(fixed_batch(learner.tokenizer))
    path = learner.save_policy(tmp_path / "policy")
    model, tok = load_policy(path)
    sd = learner.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    text = "<think>x</think><answer>Marlow</answer>"
    assert tok.encode(text) == learner.tokenizer.encode(text)


def test_tiny_policy_without_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="tokenizer_corpus"):
        Learner(tiny_config())


@pytest.mark.ray
def test_publish_weights_through_the_object_store(ray_local):
    ray = ray_local
    actor = ray.remote(num_cpus=0)(Learner).remote(tiny_config(), CORPUS)
    tok = ray.get(actor.get_tokenizer.remote())
    ray.get(actor.sft_step.remote(fixed_batch(tok)))
    refs = ray.get(actor.publish_weights.remote())
    assert isinstance(refs, list) and len(refs) == 1 and isinstance(refs[0], ray.ObjectRef)
    published, current = ray.get(refs[0]), ray.get(actor.state_dict.remote())
    # tied embeddings travel once: the output layer is the input embedding
    assert published.keys() == current.keys() - {"lm_head.weight"}
    assert all(torch.equal(published[k], current[k]) for k in published)
    assert torch.equal(current["lm_head.weight"], published["model.embed_tokens.weight"])
    assert ray.get(actor.version.remote()) == 1
    ray.get(actor.publish_weights.remote())
    assert ray.get(actor.version.remote()) == 2
    ray.kill(actor)


def test_warm_start_lr_follows_its_schedule():
    cfg = tiny_config()
    cfg = cfg.model_copy(update={"warmstart": cfg.warmstart.model_copy(
        update={"steps": 6, "warmup_steps": 2, "lr_schedule": "cosine"})})
    learner = Learner(cfg, CORPUS)
    batch = fixed_batch(learner.tokenizer)
    lrs = [learner.sft_step(batch)["sft/lr"] for _ in range(6)]
    f = lr_lambda(2, 6, "cosine")
    assert lrs == pytest.approx([3e-3 * f(k) for k in range(6)])
    assert lrs[0] < lrs[1] < lrs[2] and lrs[2] > lrs[3] > lrs[5]  # warmup, then decay


# -- issue 12: scored as sampled, training-config checks, options wired through ---------------------
def _with_temperature(cfg, temperature: float):
    return cfg.model_copy(update={"episode": cfg.episode.model_copy(update={"temperature": temperature})})


def _sampler_logprobs(learner: Learner, batch, temperature: float) -> list[list[float]]:
    """What a sampler at `temperature` would report for each response token (0 on inserted
    ones), computed here from the raw logits, independently of the learner's scoring code."""
    tb = batch.to_tensors(learner.tokenizer.pad_token_id)
    with torch.no_grad():
        logits, _ = learner.model(tb.input_ids, tb.attention_mask, tb.response_pos)
        lp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, tb.response_ids[..., None])[..., 0]
    lp = torch.where(tb.loss_mask.bool(), lp, torch.zeros_like(lp))
    return [lp[i, :len(r)].tolist() for i, r in enumerate(batch.response_ids)]


def test_update_scores_at_the_sampling_temperature_and_reports_logp_diff():
    import dataclasses

    cfg = _with_temperature(tiny_config(micro_batch_size=4, grad_accum=1), 0.7)
    learner = Learner(cfg, CORPUS)
    batch = fixed_batch(learner.tokenizer)
    assert "rollout/logp_diff_mean" not in learner.update(batch)  # no sampler log-probs: no figure

    learner = Learner(cfg, CORPUS)
    at_07, at_1 = _sampler_logprobs(learner, batch, 0.7), _sampler_logprobs(learner, batch, 1.0)
    mask = [m for row in batch.loss_mask for m in row]
    gap = max(abs(a - b) for ra, rb in zip(at_07, at_1) for a, b in zip(ra, rb))
    assert gap > 0.05  # the temperature matters on these tokens, so the next check is not vacuous
    m = learner.update(dataclasses.replace(batch, sampler_logprobs=at_07))
    assert m["rollout/logp_diff_max"] < 1e-5 and m["rollout/logp_diff_mean"] < 1e-6

    # Hand-made mismatch: +0.1 on every policy token, +0.5 on one; inserted tokens are ignored.
    learner = Learner(cfg, CORPUS)
    shifted = [[lp + 0.1 * m for lp, m in zip(row, mrow)] for row, mrow in zip(at_07, batch.loss_mask)]
    shifted[2][batch.loss_mask[2].index(1)] += 0.4
    shifted[1][batch.loss_mask[1].index(0)] += 9.0  # an information token: not a policy token
    m = learner.update(dataclasses.replace(batch, sampler_logprobs=shifted))
    n = sum(mask)
    assert m["rollout/logp_diff_max"] == pytest.approx(0.5, abs=1e-5)
    assert m["rollout/logp_diff_mean"] == pytest.approx((0.1 * (n - 1) + 0.5) / n, abs=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"learner": {"group_size": 1}}, "group_size is 1"),
    ({"episode": {"temperature": 0.0}}, "temperature is 0.0"),
    ({"episode": {"top_p": 0.9}}, "top_p is 0.9"),
])
def test_training_refuses_settings_the_learner_cannot_score(change, message):
    from router_r1.infra.config import RunConfig

    raw = tiny_config().model_dump()
    for section, values in change.items():
        raw[section].update(values)
    cfg = RunConfig.model_validate(raw)  # a valid config (evaluation may sample greedily) ...
    with pytest.raises(ValueError, match=message):
        cfg.check_training()  # ... but not a valid training run
    with pytest.raises(ValueError, match=message):
        Learner(cfg, CORPUS)
    tiny_config("ppo", group_size=1).check_training()  # PPO has no groups


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_update_aggregates_the_policy_loss_per_loss_agg(loss_agg):
    """First update, one optimizer step: the ratio is 1 (scored at the same weights), so the
    loss is -agg(A) with A_i = +-0.5 / std([1, 0, 1, 0]) on row i's n_i policy tokens."""
    learner = Learner(tiny_config(micro_batch_size=4, grad_accum=1, loss_agg=loss_agg), CORPUS)
    batch = fixed_batch(learner.tokenizer)
    n = [sum(m) for m in batch.loss_mask]
    a = 0.5 / (1 / 3) ** 0.5
    adv = [a, -a, a, -a]
    want = {"token-mean": -sum(x * k for x, k in zip(adv, n)) / sum(n),
            "seq-mean-token-mean": -sum(adv) / 4,
            "seq-mean-token-sum": -sum(x * k for x, k in zip(adv, n)) / 4}[loss_agg]
    assert len(set(n)) > 1  # uneven lengths: the three aggregations differ
    m = learner.update(batch)
    assert m["actor/pg_loss"] == pytest.approx(want, abs=1e-5)
    assert m["actor/ratio_mean"] == pytest.approx(1.0, abs=1e-6)


def test_update_passes_kl_estimator_and_vf_clip_through(monkeypatch):
    import actors.learner as learner_module

    seen = []
    real_kl, real_vf = algos.kl_penalty, algos.value_loss

    def kl(*args, **kw):
        seen.append(("kl", args[3]))
        return real_kl(*args, **kw)

    def vf(*args, clip, **kw):
        seen.append(("vf", clip))
        return real_vf(*args, clip=clip, **kw)

    monkeypatch.setattr(learner_module.algos, "kl_penalty", kl)
    monkeypatch.setattr(learner_module.algos, "value_loss", vf)
    learner = Learner(tiny_config("ppo", micro_batch_size=4, grad_accum=1, clip_eps=0.3, vf_clip=0.05,
                                  kl_estimator="k2", kl_coef=0.1), CORPUS)
    learner.update(fixed_batch(learner.tokenizer))
    assert set(seen) == {("kl", "k2"), ("vf", 0.05)}


def test_stale_rows_are_weighted_by_the_truncated_importance_ratio():
    """Staleness 1 on a fixed batch: every row sampled by the weights one version back (mu), with
    the sampler's log-probs 0.25 below the learner's on every policy token. The first optimizer
    step's ratio pi / pi_prox is 1, so the clipped surrogate is the advantage and decoupled PPO
    scales the policy loss by pi_prox / mu = e^0.25 (under the cap 2): pg_loss(stale) =
    e^0.25 * pg_loss(fresh), by hand. With a cap of 1.1 every weight is truncated to 1.1."""
    import dataclasses
    import math

    cfg = tiny_config(micro_batch_size=4, grad_accum=1)
    fresh_learner = Learner(cfg, CORPUS)
    batch = fixed_batch(fresh_learner.tokenizer)
    lp = _sampler_logprobs(fresh_learner, batch, 1.0)
    below = [[x - 0.25 * m for x, m in zip(row, mrow)] for row, mrow in zip(lp, batch.loss_mask)]
    fresh_learner.policy_version = 1
    fresh = fresh_learner.update(dataclasses.replace(batch, sampler_logprobs=below, policy_version=[1] * 4))
    assert "actor/behaviour_is_mean" not in fresh  # sampled by the current weights: on-policy loss

    results = {}
    for cap in (2.0, 1.1):
        learner = Learner(tiny_config(micro_batch_size=4, grad_accum=1, behaviour_is_cap=cap), CORPUS)
        learner.policy_version = 1
        results[cap] = learner.update(dataclasses.replace(batch, sampler_logprobs=below, policy_version=[0] * 4))
    stale = results[2.0]
    assert stale["actor/behaviour_is_mean"] == pytest.approx(math.exp(0.25), abs=1e-4)
    assert stale["actor/stale_token_frac"] == 1.0 and stale["actor/behaviour_is_clipfrac"] == 0.0
    assert stale["actor/pg_loss"] == pytest.approx(math.exp(0.25) * fresh["actor/pg_loss"], rel=1e-4)
    assert results[1.1]["actor/pg_loss"] == pytest.approx(1.1 * fresh["actor/pg_loss"], rel=1e-4)
    assert results[1.1]["actor/behaviour_is_clipfrac"] == 1.0
