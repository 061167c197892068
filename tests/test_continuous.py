"""Continuous batching for serving (router_r1/engines/continuous.py) on the bpe_checkpoint policy:
the same greedy turns as one-at-a-time generation, a turn joining others mid-decode, sampled
log-probs as the learner scores them, stop strings, and a failing turn isolated."""
from __future__ import annotations

import asyncio
import random

import pytest
import torch
from bpe_checkpoint import prompt_text, trace

from router_r1.engines.continuous import ContinuousHFEngine
from router_r1.engines.hf import HFGenerator, top_p_filter
from router_r1.engines.model import load_policy
from router_r1.env.generation import TurnFailed
from router_r1.env.protocol import STOP_STRINGS


@pytest.fixture(scope="module")
def policy(bpe_checkpoint):
    model, tok = load_policy(bpe_checkpoint)
    return model.eval(), tok


@pytest.fixture
def engine(policy):
    model, tok = policy
    eng = ContinuousHFEngine(HFGenerator(model, tok), max_batch_size=8)
    yield eng
    eng.close()


def _prompts(tok, n: int, seed: int = 0) -> list[list[int]]:
    return [tok.encode(prompt_text(tok, trace(random.Random(seed + i))[0]), add_special_tokens=False)
            for i in range(n)]


def test_greedy_turns_equal_one_at_a_time_generation(policy, engine):
    """Six turns of uneven lengths in one continuous batch: each has the ids, stop and (to float
    rounding) the log-probs that HFGenerator gives the same context alone."""
    model, tok = policy
    prompts = _prompts(tok, 6)
    prompts[1] = prompts[1][5:]
    alone = [HFGenerator(model, tok).generate([p], max_new_tokens=48, temperature=0.0)[0] for p in prompts]

    async def main():
        return await asyncio.gather(*(engine.generate_turn(p, 48) for p in prompts))

    got = asyncio.run(main())
    assert any(g.stop in STOP_STRINGS for g in alone)  # the protocol's stops are reached, not only the budget
    for a, g in zip(alone, got):
        assert g.ids == a.ids and g.stop == a.stop and g.text == a.text
        assert max(abs(x - y) for x, y in zip(g.logprobs, a.logprobs)) < 1e-4
    # Rows shared forward steps: fewer steps than tokens sampled.
    assert engine.steps < engine.tokens


def test_a_turn_joins_a_batch_mid_decode(policy, engine):
    """Turn B arrives while A is decoding: B is answered (its greedy ids as alone) before A ends,
    and A goes on unchanged: token-level admission, not a batch that must finish first."""
    model, tok = policy
    a_prompt, b_prompt = _prompts(tok, 2, seed=10)
    hf = HFGenerator(model, tok)
    a_alone = hf.generate([a_prompt], max_new_tokens=120, temperature=0.0, stop=())[0]
    b_alone = hf.generate([b_prompt], max_new_tokens=8, temperature=0.0, stop=())[0]
    assert len(a_alone.ids) == 120
    a_tokens: list[int] = []

    async def main():
        started = asyncio.Event()

        def a_sink(t: int) -> None:
            a_tokens.append(t)
            if len(a_tokens) == 5:
                started.set()

        a = asyncio.ensure_future(engine.generate_turn(a_prompt, 120, stop=(), on_token=a_sink))
        await started.wait()
        b = await engine.generate_turn(b_prompt, 8, stop=())
        return len(a_tokens), b, await a

    a_at_b_end, b, a = asyncio.run(main())
    assert b.ids == b_alone.ids
    assert a_at_b_end < 120  # A was still decoding when B, which joined after it, was done
    assert a.ids == a_alone.ids == a_tokens  # streamed as sampled, nothing repeated


def test_sampled_logprobs_are_the_learners(policy, engine):
    """Per-turn temperature and top-p: each log-prob is log_softmax(top_p(logits / T)) of a full
    forward, the sampler's distribution."""
    model, tok = policy
    prompts = _prompts(tok, 3, seed=20)
    params = [(1.0, 1.0), (0.7, 0.9), (1.3, 0.95)]

    async def main():
        return await asyncio.gather(*(engine.generate_turn(p, 30, temperature=t, top_p=q, stop=())
                                      for p, (t, q) in zip(prompts, params)))

    for p, (t, q), g in zip(prompts, params, asyncio.run(main())):
        assert len(g.ids) == len(g.logprobs) > 0
        with torch.no_grad():
            logits = model(torch.tensor([p + g.ids])).logits[0, len(p) - 1:-1].float()
        want = torch.log_softmax(top_p_filter(logits / t, q), -1).gather(1, torch.tensor(g.ids)[:, None])
        assert (want.squeeze(1) - torch.tensor(g.logprobs)).abs().max() < 1e-4


def test_a_turn_stops_at_its_stop_string_and_streams_only_what_it_keeps(policy, engine):
    model, tok = policy
    (p,) = _prompts(tok, 1, seed=3)
    alone = HFGenerator(model, tok).generate([p], max_new_tokens=64, temperature=0.0)[0]
    assert alone.stop in STOP_STRINGS
    heard: list[int] = []
    g = asyncio.run(engine.generate_turn(p, 64, on_token=heard.append))
    assert g.stop == alone.stop and g.ids == alone.ids == heard
    assert engine.kept == len(g.ids) <= engine.tokens  # tokens past the stop are counted, not kept
    assert g.text.rstrip().endswith(alone.stop)


def test_a_failing_turn_fails_alone(policy, engine, monkeypatch):
    """A forward step that raises ends transformers' loop and fails every row in it: the turn that
    caused it gets its own error, the turns batched with it are finished alone from where they
    were, and the next turn runs in a new manager."""
    model, tok = policy
    prompts = _prompts(tok, 4, seed=30)
    hf = HFGenerator(model, tok)
    alone = [hf.generate([p], max_new_tokens=40, temperature=0.0, stop=())[0] for p in prompts]
    poison = tok.convert_tokens_to_ids("<|im_start|>")
    bad = prompts[0][:-1] + [poison, poison, poison]  # a token run nothing else has
    real = model.forward

    def forward(*args, **kw):
        ids = kw.get("input_ids", args[0] if args else None)
        flat = ids.reshape(-1).tolist()
        if any(flat[i:i + 3] == [poison] * 3 for i in range(len(flat) - 2)):
            raise RuntimeError("poisoned step")
        return real(*args, **kw)

    monkeypatch.setattr(model, "forward", forward)

    async def main():
        ok = [asyncio.ensure_future(engine.generate_turn(p, 40, stop=())) for p in prompts]
        await asyncio.sleep(0.05)  # the good turns are decoding when the poisoned one joins
        res = await asyncio.gather(engine.generate_turn(bad, 40, stop=()), *ok, return_exceptions=True)
        after = await engine.generate_turn(prompts[1], 40, stop=())
        return res, after

    (bad_res, *good), after = asyncio.run(main())
    assert isinstance(bad_res, TurnFailed) and "poisoned step" in str(bad_res)
    assert [g.ids for g in good] == [a.ids for a in alone]
    assert engine.alone >= 1 and after.ids == alone[1].ids


def test_out_of_vocabulary_ids_fail_before_any_manager(engine):
    with pytest.raises(TurnFailed, match="outside the vocabulary"):
        asyncio.run(engine.generate_turn([1, 2, 10 ** 6], 8))
    assert not engine._managers


def test_seeded_turns_go_alone_and_repeat(policy, engine):
    """The manager draws from one generator; a seeded turn is HFGenerator's, seed for seed."""
    model, tok = policy
    (p,) = _prompts(tok, 1, seed=40)
    want = HFGenerator(model, tok).generate([p], max_new_tokens=20, temperature=1.0, seed=7, stop=())[0]

    async def main():
        return await asyncio.gather(*(engine.generate_turn(p, 20, temperature=1.0, seed=7, stop=()) for _ in range(2)))

    for g in asyncio.run(main()):
        assert g.ids == want.ids
    assert engine.alone == 2 and not engine._managers

