"""Well-formed warm-start traces on the simulator, for the supervised warm start of a tiny router.

A router built from scratch cannot follow the protocol by chance, so before RL it imitates
complete trajectories written here in the exact protocol:

    <think> I need the birthplace of the founder of Zelix Corp. First I need the founder of
    Zelix Corp. </think>
    <search> Sim-Bio-Small: Who founded Zelix Corp? </search>
    <information>The founder ... is Tomas Velik.</information>      (origin: information)
    <think> The founder of Zelix Corp is Tomas Velik. Now I need ... </think>
    <search> ...: Where was Tomas Velik born? </search> <information>...</information>
    <think> The answer is Kestrel. </think>
    <answer> Kestrel </answer>

Each trace is a core `Episode` whose segments carry their origin, so the SFT loss masks the
inserted information exactly as the RL loss does (`router_r1.env.episode.tokenize_trace`). The
answer is always copied from the last reply, right or wrong: the trace teaches the format and
the routing moves, and which model to trust is then learned from reward.

A follow-up's trace (knowledge.KnowledgeBase.follow_up) carries its history, rendered into the
prompt, and resolves the referent out of it: "<think> I need the birthplace of Tomas Velik.
</think>", then the sub-question about Tomas Velik, the name read in the earlier answer.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from router_r1.env.answer_metrics import exact_match
from router_r1.env.episode import Episode, Segment
from router_r1.env.prompt import PromptLayout, render_prompt
from router_r1.env.protocol import information_block
from router_r1.env.reward import RewardConfig
from router_r1.pool.types import CallResult
from router_r1.worlds.base import check_trace_mix
from router_r1.worlds.sim.knowledge import SimQuestion
from router_r1.worlds.sim.language import RELATIONS
from router_r1.worlds.sim.models import SimCall, Simulation
from router_r1.worlds.sim.oracle import oracle_plan
from router_r1.worlds.sim.plans import Plan, expert_plan, generalist_plan, random_plan

if TYPE_CHECKING:
    from router_r1.infra.config import SwapNames

TracePolicy = Literal["oracle", "expert", "random", "generalist"]
TRACE_POLICIES = ("oracle", "expert", "random", "generalist")
NO_ANSWER = "unknown"  # answered when the last reply stated nothing


def _need(q: SimQuestion, sim: Simulation) -> str:
    """The whole question as a noun phrase: 'the birthplace of the founder of Zelix Corp'."""
    s = sim.world.entities[q.subject].name
    for r in q.relations:
        s = RELATIONS[r].noun_phrase(s)
    return s


def _search(model: str, query: str) -> str:
    return f"<search> {model}: {query} </search>"


def _plan_oracle(sim: Simulation, q: SimQuestion, cfg: RewardConfig) -> Plan:
    calls = oracle_plan(sim, q, cfg).calls
    return [("direct", calls[0])] if len(calls) == 1 else [("hop1", calls[0]), ("hop2", calls[1])]


def make_trace(sim: Simulation, q: SimQuestion, policy: TracePolicy = "oracle",
               rng: random.Random | None = None, reward_cfg: RewardConfig | None = None,
               instructions: str | None = None, layout: PromptLayout = "full", decompose_p: float = 0.5,
               retry: bool = True) -> Episode:
    """One complete, well-formed trajectory for `q`, as a finished `Episode`.

    policy 'oracle': the oracle's plan under `reward_cfg` (cheapest path to the gold answer);
    'expert': the cheapest model strong on each hop's domain, retrying a hedge with the
    strongest; 'random': models drawn at random, so traces also show wrong answers, hedges and
    retries; 'generalist': one call to the model best over all domains (see `plans.py`).
    The prompt is rendered in `layout`.
    """
    rng = rng or random.Random(0)
    if policy == "oracle":
        moves = _plan_oracle(sim, q, reward_cfg or RewardConfig())
    elif policy == "expert":
        moves = expert_plan(sim, q, retry)
    elif policy == "random":
        moves = random_plan(sim, q, rng, decompose_p, retry)
    elif policy == "generalist":
        moves = generalist_plan(sim, q)
    else:
        raise ValueError(f"unknown trace policy {policy!r}; choose from {TRACE_POLICIES}")
    need = _need(q, sim)
    subject = sim.world.entities[q.subject].name
    segments: list[Segment] = []
    think = f"I need {need}."
    if moves[0][0] == "hop1":
        think += f" First I need {RELATIONS[q.relations[0]].noun_phrase(subject)}."
    for i, (_, call) in enumerate(moves):
        segments.append(Segment(f"<think> {think} </think>\n{_search(call.model, call.query)}",
                                "policy"))
        segments.append(Segment(information_block(call.reply.text), "information"))
        following = moves[i + 1][0] if i + 1 < len(moves) else None
        if following == "retry":
            think = f"{call.model} is not sure. I will ask another model."
        elif following == "hop2":
            found = RELATIONS[q.relations[0]].noun_phrase(subject)
            stated = call.reply.stated.name
            think = (f"{found[:1].upper()}{found[1:]} is {stated}. Now I need "
                     f"{RELATIONS[q.relations[1]].noun_phrase(stated)}.")
    last = moves[-1][1].reply.stated
    answer = last.name if last is not None else NO_ANSWER
    segments.append(Segment(f"<think> The answer is {answer}. </think>\n<answer> {answer} </answer>",
                            "policy"))
    history = [dict(t) for t in q.history]
    return Episode(
        uid=q.id, question=q.text, golden_answers=q.golden_answers,
        prompt=render_prompt(sim.pool, q.text, instructions, layout, history=history), segments=segments,
        calls=[_call_result(sim, c) for _, c in moves],
        routes=[(c.model, c.query) for _, c in moves],
        turns=sum(s.origin == "policy" for s in segments), done=True,
        meta={"trace_policy": policy, "em": exact_match(answer, q.golden_answers)}, history=history)


def _call_result(sim: Simulation, c: SimCall) -> CallResult:
    return CallResult(model=c.model, text=c.reply.text, prompt_tokens=c.prompt_tokens,
                      completion_tokens=c.completion_tokens, cost_usd=c.cost_usd,
                      latency_s=sim.descriptor(c.model).latency_s, attempts=1)


def swap_subject(ep: Episode, old: str, kind: str, sim: Simulation, rng: random.Random,
                 names: SwapNames = "all") -> Episode:
    """The same trace about another entity of the subject's kind: `old` (the question's subject)
    is renamed everywhere, in the question, the sub-questions, the replies and the answer. The
    facts become false; the text stays consistent. With one fresh name per trace the router cannot
    tie a question's words to a remembered name: the only way to write the right name is to copy
    it out of the question (docs/training.md, the demo's choices). A follow-up's subject is named
only in its history (the earlier answer), renamed there too: it is copied out of the history.
    `names`: "all" draws the new name among every entity of the kind, held-out ones included
    (about false facts, as pretraining text would name them); "training" only among entities
    training questions may ask about, so no renamed trace asks about a held-out entity (a
    validation or test subject under the entity rule, a test one under the question rule); it may
    still name one as an answer or a hop, as training questions do."""
    text = " ".join([ep.question, *(t["content"] for t in ep.history), *(x.text for x in ep.segments)])
    world = sim.world
    choices = [e.name for e in world.by_kind(kind) if e.name != old and e.name not in text
               and (names == "all" or world.trained_subject(e.id))]
    if not choices:
        return ep
    new = rng.choice(choices)
    return Episode(uid=ep.uid, question=ep.question.replace(old, new), golden_answers=ep.golden_answers,
                   prompt="", segments=[Segment(x.text.replace(old, new), x.origin) for x in ep.segments],
                   calls=ep.calls, routes=[(m, q.replace(old, new)) for m, q in ep.routes], turns=ep.turns,
                   done=True, meta={**ep.meta, "subject_swap": True}, pool=ep.pool,
                   history=[{**t, "content": t["content"].replace(old, new)} for t in ep.history])


DEFAULT_MIX = {"expert": 0.6, "random": 0.4}


def make_traces(sim: Simulation, questions: Sequence[SimQuestion],
                mix: dict[str, float] | None = None, seed: int = 0,
                reward_cfg: RewardConfig | None = None,
                instructions: str | None = None, layout: PromptLayout = "full",
                subject_swap: float = 0.0, swap_names: SwapNames = "all") -> list[Episode]:
    """One trace per question, its policy drawn with the weights of `mix` (default: 60% expert,
    40% random: the format and sensible routing, plus enough variety for RL to explore from).
    A `subject_swap` share of them have their subject renamed (`swap_subject`): fresh names in
    every trace, drawn as `swap_names` says (`swap_subject`). A swapped trace keeps no prompt: the
    rollout worker renders it from the renamed question."""
    mix = mix or DEFAULT_MIX
    check_trace_mix(mix, TRACE_POLICIES, "simulated")
    if not 0.0 <= subject_swap <= 1.0:
        raise ValueError(f"subject_swap must be in [0, 1], got {subject_swap}")
    subject_rng = random.Random(f"{seed}-subject-swap")
    rng = random.Random(seed)
    names, weights = list(mix), list(mix.values())
    out = []
    for q in questions:
        ep = make_trace(sim, q, rng.choices(names, weights)[0], rng, reward_cfg,
                        instructions=instructions, layout=layout)
        if subject_swap and subject_rng.random() < subject_swap:
            subject = sim.world.entities[q.subject]
            ep = swap_subject(ep, subject.name, subject.kind, sim, subject_rng, swap_names)
        out.append(ep)
    return out


def tokenizer_corpus(sim: Simulation, n_traces: int = 1000, seed: int = 0,
                     instructions: str | None = None, layout: PromptLayout = "full") -> list[str]:
    """Texts to train the tiny router's tokenizer on locally: every entity name, every question
    of every split, and full prompts + traces over training questions (mixed policies), so
    every word the router will read or write in the simulator is in its vocabulary."""
    w = sim.world
    texts = [e.name for e in w.entities.values()]
    texts += [q.text for split in ("train", "val", "test") for q in w.all_questions(split)]
    for ep in make_traces(sim, w.questions("train", n_traces, seed=seed), seed=seed,
                          instructions=instructions, layout=layout):
        texts.append(ep.prompt + ep.response)
    return texts
