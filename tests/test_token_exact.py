"""Token-exact RL on a tokenizer that behaves like a real one (tests/bpe_checkpoint.py: tags are
several byte-level BPE tokens, a Qwen chat template, a generation_config with a repetition
penalty): the learner trains on exactly the ids the policy sampled, scored as they were sampled."""
from __future__ import annotations

import asyncio
import random

import pytest
import torch
from bpe_checkpoint import prompt_text, trace

from router_r1.engines.hf import HFGenerator
from router_r1.engines.model import load_policy
from router_r1.env.episode import Episode, EpisodeConfig, run_episodes
from router_r1.env.generation import Generation, cut_generation
from router_r1.env.protocol import STOP_STRINGS
from router_r1.pool.types import CallResult
from router_r1.rl.batch import TrajectoryBatch


@pytest.fixture(scope="module")
def policy(bpe_checkpoint):
    model, tok = load_policy(bpe_checkpoint)
    return model.eval(), tok


def _prompts(tok, n: int) -> list[list[int]]:
    return [tok.encode(prompt_text(tok, trace(random.Random(i))[0]), add_special_tokens=False) for i in range(n)]


def _forward_logprobs(model, prompt: list[int], ids: list[int], temperature: float) -> torch.Tensor:
    """What the learner computes: one full forward, log_softmax(logits / temperature)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(ids)[:, None]).squeeze(1)


def test_the_fixture_splits_tags_into_several_tokens(policy, bpe_checkpoint):
    _, tok = policy
    for tag in ("<search>", "</search>", "<answer>", "</answer>", "<information>", "</information>"):
        assert len(tok.encode(tag, add_special_tokens=False)) >= 3, tag
    assert (bpe_checkpoint / "generation_config.json").read_text().count("repetition_penalty") == 1
    assert tok.chat_template and "<|im_start|>" in prompt_text(tok, "q")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_a_full_forward(policy, temperature):
    model, tok = policy
    prompts = _prompts(tok, 6)
    prompts[1] = prompts[1][7:]  # uneven lengths: left padding must not shift positions
    gens = HFGenerator(model, tok).generate(prompts, max_new_tokens=40, temperature=temperature, seed=3)
    for p, g in zip(prompts, gens):
        assert g.ids and len(g.logprobs) == len(g.ids)
        diff = (_forward_logprobs(model, p, g.ids, temperature) - torch.tensor(g.logprobs)).abs().max()
        assert diff < 1e-4


def test_generation_config_is_ignored(policy):
    """Greedy decoding is the plain argmax of the logits: the checkpoint's repetition penalty,
    top-k and top-p (generation_config.json) play no part."""
    model, tok = policy
    (p,) = _prompts(tok, 1)
    (g,) = HFGenerator(model, tok).generate([p], max_new_tokens=30, temperature=0.0, stop=())
    ids = list(p)
    with torch.no_grad():
        for _ in range(len(g.ids)):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert g.ids == ids[len(p):]


def test_a_turn_ends_with_the_token_that_completes_its_stop(policy):
    model, tok = policy
    gens = HFGenerator(model, tok).generate(_prompts(tok, 8), max_new_tokens=60, temperature=1.0, seed=1)
    stopped = [g for g in gens if g.stop in STOP_STRINGS]
    assert stopped
    for g in stopped:
        assert g.stop in tok.decode(g.ids) and g.stop not in tok.decode(g.ids[:-1])
    # An engine that overshoots (vLLM may) is cut to the same place, log-probs alongside.
    g = stopped[0]
    extra = tok.encode(" and more text", add_special_tokens=False)
    cut = cut_generation(Generation(g.ids + extra, g.logprobs + [-1.0] * len(extra)), tok)
    assert cut.ids == g.ids and cut.logprobs == g.logprobs and cut.stop == g.stop


class RecordingEngine:
    """The real engine, recording what it was given and what it sampled, per context."""

    def __init__(self, gen: HFGenerator):
        self.gen, self.log = gen, []

    def __call__(self, contexts):
        outs = self.gen.generate(contexts, max_new_tokens=48, temperature=1.0, seed=len(self.log))
        self.log.extend((list(c), o) for c, o in zip(contexts, outs))
        return outs


async def _reply(model: str, query: str, episode_id: str | None = None) -> CallResult:
    return CallResult(model=model, text=f"{query} It was founded in Paris.", prompt_tokens=5,
                      completion_tokens=6, cost_usd=1e-6)


def _play(policy, n: int = 16):
    model, tok = policy
    engine = RecordingEngine(HFGenerator(model, tok))
    eps = [Episode(uid=str(i), question="q", golden_answers=["Paris"], prompt=tok.decode(p), prompt_ids=p)
           for i, p in enumerate(_prompts(tok, n))]
    asyncio.run(run_episodes(eps, engine, _reply, EpisodeConfig(max_turns=2, max_new_tokens=48, max_obs_tokens=24),
                             tokenizer=tok, max_context=1024))
    return eps, engine


def test_multi_turn_episode_trains_on_the_sampled_ids(policy):
    model, tok = policy
    eps, engine = _play(policy)
    routed = [e for e in eps if e.calls and len([s for s in e.segments if s.origin == "policy"]) >= 2]
    assert routed, "the fixture's policy should route at least once in 16 episodes"
    batch = TrajectoryBatch.from_episodes(eps, [0.0] * len(eps), list(range(len(eps))))
    by_context: dict[tuple, list[Generation]] = {}
    for c, g in engine.log:  # a GRPO-like batch: several episodes may share one prompt
        by_context.setdefault(tuple(c), []).append(g)
    reencoded_differs = False
    for e, prompt, ids, mask, lps in zip(eps, batch.prompt_ids, batch.response_ids, batch.loss_mask,
                                         batch.sampler_logprobs):
        assert prompt == e.prompt_ids
        context = list(e.prompt_ids)
        pos = 0
        for seg in e.segments:
            n = len(seg.ids)
            if seg.origin == "policy":
                # One of the generations the engine made for exactly prompt + earlier segments,
                # used once; its ids byte for byte.
                cands = by_context[tuple(context)]
                g = next(g for g in cands if g.ids[:n] == seg.ids)
                cands.remove(g)
                assert ids[pos:pos + n] == seg.ids
                assert lps[pos:pos + n] == g.logprobs[:n]
                assert mask[pos:pos + n] == [1] * n
                reencoded_differs |= tok.encode(seg.text, add_special_tokens=False) != seg.ids
            else:
                assert mask[pos:pos + n] == [0] * n and ids[pos:pos + n] == seg.ids
                assert seg.ids == tok.encode(seg.text, add_special_tokens=False)  # encoded once, on insertion
            context += seg.ids
            pos += n
        assert pos == len(ids) == len(mask)
    # The point of all this: encoding the policy's text again would give other ids.
    assert reencoded_differs


def test_learner_scores_the_sampler_logprobs(policy, bpe_checkpoint):
    """rollout/logp_diff_max: |sampler log-prob - learner log-prob| at the same weights, CPU float32."""
    from actors.learner import Learner
    from router_r1.infra.config import load_config

    eps, _ = _play(policy, n=8)
    cfg = load_config(None, {"policy.checkpoint": str(bpe_checkpoint), "learner.group_size": 4,
                             "learner.micro_batch_size": 4, "episode.temperature": 1.0, "mlflow.enabled": False})
    learner = Learner(cfg)
    batch = TrajectoryBatch.from_episodes(eps, [float(i % 2) for i in range(len(eps))], [i // 4 for i in range(len(eps))])
    m = learner.update(batch)
    assert m["rollout/logp_diff_max"] < 1e-3
    assert 0 <= m["rollout/logp_diff_mean"] <= m["rollout/logp_diff_max"]


def test_an_episode_that_would_overflow_its_context_ends(policy):
    model, tok = policy
    (p,) = _prompts(tok, 1)
    e = Episode(uid="x", question="q", golden_answers=[], prompt="", prompt_ids=p)
    engine = RecordingEngine(HFGenerator(model, tok))
    asyncio.run(run_episodes([e], engine, _reply, EpisodeConfig(max_new_tokens=48), tokenizer=tok,
                             max_context=len(p) + 10))
    assert e.done and e.truncated and e.meta.get("context_full") and not engine.log
