"""Routing policies to evaluate, all calling models through the same pool call function.

A policy turns a batch of `EvalItem`s into `PolicyRun`s (answer + the calls it paid for), given an
async `call(model, query, episode_id=uid) -> CallResult` (the ModelPool's, so every policy is
billed alike):

- direct baselines (send the question to one model; on QA sets in the paper's answer format,
  DIRECT_PROMPT, with the short answer taken out of the reply): `single:<model>`,
  `random`, `cheapest`, `largest` (by known size only: with no size known it refuses, never
  guesses), `most-expensive`, and `oracle` (best per question from the recorded graded scores:
  the cheapest of the models with the question's best score; RouterBench's "Oracle" and the upper
  bound of any one-call router), and `per-task[:margin]` (one model per task, chosen from the
  scores of a *training* split: router_r1.worlds.replay.routing; a task the training split lacks
  goes to the overall route of the training split);
- `EpisodePolicy`: an LLM router (RL-trained checkpoint, or prompt-only: an untrained checkpoint or
  an OpenAI-compatible endpoint prompted with the descriptors) played by the episode machine;
- the RLlib router lives in router_r1.rl_router and plugs in through `RLlibPolicy` there.
Ray-free.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from router_r1.env.episode import Episode, EpisodeConfig, GenerateFn, Tokenizer, run_episodes
from router_r1.env.prompt import render_prompt
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.pool.types import CallFn, CallResult
from router_r1.worlds.replay.routing import per_task_routes, sample_cost, task_stats
from router_r1.worlds.replay.tables import ReplaySample, model_ids

DIRECT_BASELINES = ("random", "cheapest", "largest", "most-expensive", "oracle")


@dataclass
class EvalItem:
    """One question. QA sets carry gold answers; replay sets carry every model's recorded answer."""

    uid: str
    question: str
    golden_answers: list[str] = field(default_factory=list)
    sample: ReplaySample | None = None
    source: str = ""
    # The conversation before the question ({"role", "content"} turns: a simulator follow-up's),
    # rendered into a router's prompt as Serve renders a request's earlier turns.
    history: list[dict[str, str]] = field(default_factory=list)


@dataclass
class PolicyRun:
    """What a policy did on one item: its final answer (None: no answer) and the calls it paid for."""

    answer: str | None
    calls: list[CallResult]
    format_ok: bool = True
    latency_s: float = 0.0  # wall time of this item (calls and generation)
    meta: dict[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    name: str

    async def run(self, items: Sequence[EvalItem], call: CallFn) -> list[PolicyRun]: ...


def total_price(m: ModelDescriptor) -> float:
    return m.price_in + m.price_out


# The direct baselines' prompt on QA sets. The paper scores every method by EM on the text
# inside <answer></answer>, asked for as "your final answer inside <answer> ... </answer>, without
# additional explanation or illustration. For example: <answer> Beijing </answer>" (the Router-R1
# prompt, data_process/prompt_pool.py of ulab-uiuc/Router-R1; Search-R1's direct-inference
# baseline asks the same). It avoids words the simulator reads as relations (write, found, home).
DIRECT_PROMPT = ("Answer the given question directly and concisely. Give only the final answer, a "
                 "short phrase without explanation, inside <answer> and </answer>. For example: "
                 "<answer> Beijing </answer>.\nQuestion: {question}")

_ANSWER_TAG = re.compile(r"<\s*answer\s*>(.*?)<\s*/\s*answer\s*>", re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\b(?:final |short |correct )?answer(?: is:| is|:)\s*(.+)", re.IGNORECASE)
_LEAD = re.compile(r"^(?:A|Answer)\s*:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(\S+)\.\s+(?=\S)")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "no", "mt", "ft", "gen", "col", "lt",
           "sgt", "prof", "rev", "inc", "co", "corp", "ltd", "e.g", "i.e", "u.s", "u.k", "d.c"}


def extract_final_answer(reply: str) -> str:
    """The short answer in a chat model's reply, for EM against gold answers.

    1. The last complete <answer>...</answer> (what the prompt asks for; the reference's
       qa_em.extract_solution takes the last one too), else the text after an unclosed <answer>.
    2. Otherwise the text after the last 'answer is' / 'Answer:' ('The answer is Paris.'), else the
       first non-empty line.
    Then markdown emphasis, a leading 'A:', surrounding quotes, everything after the first
    sentence ('Paris. It is the capital.'; initials and abbreviations such as 'J. K.' or 'St.' do
    not end one) and a trailing period are dropped.
    """
    tags = _ANSWER_TAG.findall(reply)
    if tags:
        return tags[-1].strip()
    opened = list(_ANSWER_OPEN.finditer(reply))
    text = reply[opened[-1].end():] if opened else reply
    text = text.replace("**", "").replace("__", "").replace("`", "").strip()
    said = list(_ANSWER_IS.finditer(text))
    if said and not opened:
        text = said[-1].group(1)
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = _LEAD.sub("", text).strip()
    for m in _SENTENCE_END.finditer(text):
        word = m.group(1).lower()
        if not (len(word) == 1 or word.rstrip(".") in _ABBREV or re.fullmatch(r"(?:\w\.)+\w", word)):
            text = text[:m.start(1) + len(m.group(1))]
            break
    text = text.strip().strip("\"'“”").strip()
    return text[:-1].rstrip() if text.endswith(".") and not text.endswith("..") else text


class DirectPolicy:
    """Send the question to the model `choose(item)` picks; the answer is its reply.

    A QA item (no replay sample) is asked in DIRECT_PROMPT and answered with
    `extract_final_answer` of the reply: a chat model asked a bare question answers "The answer
    is X." at best, which is EM 0 against 'X'. A replay item keeps the bare question and the
    whole reply: the recorded answers are the replies to the dataset's own prompt, and the
    adoption rule scores the reply itself (docs/evaluation.md).
    """

    def __init__(self, name: str, choose: Callable[[EvalItem], str], concurrency: int = 32,
                 prompt: str = DIRECT_PROMPT, notes: list[str] | None = None):
        self.name, self.choose, self.concurrency, self.prompt = name, choose, concurrency, prompt
        # What the report should say about how this policy chose (e.g. sizes it did not know),
        # one line each; `choose` may add to it while the policy runs.
        self.notes: list[str] = notes if notes is not None else []

    async def run(self, items: Sequence[EvalItem], call: CallFn) -> list[PolicyRun]:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(item: EvalItem) -> PolicyRun:
            qa = item.sample is None
            async with sem:
                model = self.choose(item)
                t0 = time.perf_counter()
                query = self.prompt.format(question=item.question.strip()) if qa else item.question
                res = await call(model, query, episode_id=item.uid)
                answer = None if not res.ok else extract_final_answer(res.text) if qa else res.text
                return PolicyRun(answer, [res], True, time.perf_counter() - t0,
                                 {"chosen": model, "reply": res.text[:2000] if res.ok and qa else None})

        return list(await asyncio.gather(*(one(i) for i in items)))


def _stable_rng(seed: int, uid: str) -> random.Random:
    """Per-question randomness that does not depend on order or concurrency."""
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{uid}".encode()).digest()[:8], "big"))


def oracle_choice(pool: PoolSpec, sample: ReplaySample, columns: dict[str, str]) -> str:
    """The cheapest of the models with the question's best recorded graded score (0/1 labels:
    the cheapest correct model, else the cheapest model; ties: pool order). Only models the
    recorded answers know are candidates; a missing score counts 0."""
    cands = [m for m in pool.models if m.name in columns]
    if not cands:
        raise ValueError("oracle: no pool model has a column in the replay tables")
    scored = [(sample.label(columns[m.name]), sample_cost(pool, m, sample, columns[m.name]), i, m)
              for i, m in enumerate(cands)]
    best = max(p[0] for p in scored)
    return min((p for p in scored if p[0] >= best - 1e-12), key=lambda p: (p[1], p[2]))[3].name


class NoKnownSize(ValueError):
    """`largest` over a pool whose descriptors give no model's size (params_b)."""


def largest_model(pool: PoolSpec) -> tuple[ModelDescriptor, list[str]]:
    """(the largest model of known size, the names of models of unknown size). No size known:
    NoKnownSize, never a guess (price is not size)."""
    sized = [m for m in pool.models if m.params_b is not None]
    if not sized:
        raise NoKnownSize(f"largest: no model of pool {pool.name!r} has a known size (params_b); "
                          "unknown size, so there is no largest model (most-expensive ranks by price)")
    return max(sized, key=lambda d: d.params_b), [m.name for m in pool.models if m.params_b is None]


def make_direct_baseline(spec: str, pool: PoolSpec, seed: int = 0, concurrency: int = 32,
                         table_models: Sequence[str] = ()) -> DirectPolicy:
    """`single:<model>`, `random`, `cheapest`, `largest`, `most-expensive` or `oracle`."""
    if spec.startswith("single:"):
        m = pool[spec.split(":", 1)[1]]
        return DirectPolicy(f"single:{m.name}", lambda item, n=m.name: n, concurrency)
    if spec == "random":
        names = pool.names
        return DirectPolicy("random", lambda item: _stable_rng(seed, item.uid).choice(names), concurrency)
    if spec == "cheapest":
        m = min(pool.models, key=total_price)
        return DirectPolicy(f"cheapest ({m.name})", lambda item, n=m.name: n, concurrency)
    if spec == "most-expensive":
        m = max(pool.models, key=total_price)
        return DirectPolicy(f"most-expensive ({m.name})", lambda item, n=m.name: n, concurrency)
    if spec == "largest":
        m, unknown = largest_model(pool)
        notes = [f"largest: unknown size for {', '.join(unknown)}; {m.name} is the largest of the "
                 f"{len(pool.models) - len(unknown)} models of known size"] if unknown else []
        return DirectPolicy(f"largest ({m.name})", lambda item, n=m.name: n, concurrency, notes=notes)
    if spec == "oracle":
        columns = model_ids(pool, table_models)

        def choose(item: EvalItem) -> str:
            if item.sample is None:
                raise ValueError(f"oracle needs replay labels; item {item.uid!r} has none")
            return oracle_choice(pool, item.sample, columns)

        return DirectPolicy("oracle", choose, concurrency)
    raise ValueError(f"unknown baseline {spec!r}; known: single:<model>, {', '.join(DIRECT_BASELINES)}")


def make_per_task_baseline(spec: str, pool: PoolSpec, train: Sequence[ReplaySample],
                           table_models: Sequence[str], concurrency: int = 32) -> DirectPolicy:
    """`per-task[:margin]`: each question goes to its task's model, the cheapest whose accuracy on
    the `train` samples is within `margin` (default 0: the most accurate) of the task's best
    (router_r1.worlds.replay.routing.per_task_routes). Only `train`'s labels are read. A task
    with no training questions (or an item without a task) goes to the overall route: the same
    rule over the whole training split; the policy's `notes` say which tasks did."""
    _, _, arg = spec.partition(":")
    try:
        margin = float(arg) if arg else 0.0
    except ValueError:
        raise ValueError(f"{spec}: the margin must be a number, e.g. per-task:0.05") from None
    if not train:
        raise ValueError(f"{spec}: needs the labels of a training split (router-r1 evaluate --split val)")
    routes = per_task_routes(*task_stats(train, pool, table_models), margin)
    overall = per_task_routes(*task_stats(train, pool, table_models, key=lambda s: "*"), margin).get("*")
    if overall is None:
        raise ValueError(f"{spec}: no pool model has a recorded answer on the training split")
    name = f"per-task:{margin:g}"
    notes: list[str] = []
    fallen: set[str] = set()

    def choose(item: EvalItem) -> str:
        task = item.sample.eval_name if item.sample is not None else None
        route = routes.get(task) if task is not None else None
        if route is not None:
            return route
        label = task if task is not None else "(none)"
        if label not in fallen:
            fallen.add(label)
            notes.append(f"{name}: task {label!r} has no training questions; its questions go to "
                         f"{overall}, the route of the whole training split")
        return overall

    return DirectPolicy(name, choose, concurrency, notes=notes)


class EpisodePolicy:
    """An LLM router played by the episode machine (router_r1.env.episode), in batches.

    `generate` is a batched text generator (HFGenerator.generate or an endpoint's); the router
    sees the descriptors through the rendered prompt, so a pool with unseen models needs nothing
    but a different descriptor file. `render` turns a question and its history (the turns before
    it) into the prompt's (text, ids): a local router's is router_r1.env.prompt.render_prompt_ids
    with its checkpoint's options, the one renderer of training, Serve and the MLflow model. None
    (an endpoint router, no local tokenizer): the full prompt as text.
    """

    def __init__(self, name: str, generate: GenerateFn, pool: PoolSpec, cfg: EpisodeConfig,
                 tokenizer: Tokenizer | None = None, batch_size: int = 16,
                 render: Callable[[str, Sequence[dict[str, str]]], tuple[str, list[int]]] | None = None,
                 max_context: int | None = None):
        self.name, self.generate, self.pool, self.cfg = name, generate, pool, cfg
        self.tokenizer, self.batch_size, self.render = tokenizer, batch_size, render
        self.max_context = max_context

    def episode(self, it: EvalItem) -> Episode:
        """Token mode when the router renders its own prompt ids (a local router), else text."""
        if self.render is None:
            return Episode(it.uid, it.question, it.golden_answers,
                           render_prompt(self.pool, it.question, history=it.history), history=list(it.history))
        text, ids = self.render(it.question, it.history)
        return Episode(it.uid, it.question, it.golden_answers, text, prompt_ids=list(ids), history=list(it.history))

    async def play(self, items: Sequence[EvalItem], call: CallFn) -> list[tuple[Episode, float]]:
        """The finished episodes of `items`, played in batches, each with its share of its batch's
        wall time (what `run` reports, and what `router-r1 unseen` scores and counts routes in)."""
        out: list[tuple[Episode, float]] = []
        for i in range(0, len(items), self.batch_size):
            eps = [self.episode(it) for it in items[i:i + self.batch_size]]
            t0 = time.perf_counter()
            await run_episodes(eps, self.generate, call, self.cfg, self.pool, self.tokenizer,
                               pass_episode_id=True, max_context=self.max_context)
            wall = (time.perf_counter() - t0) / max(1, len(eps))
            out += [(e, wall) for e in eps]
        return out

    async def run(self, items: Sequence[EvalItem], call: CallFn) -> list[PolicyRun]:
        out: list[PolicyRun] = []
        for e, wall in await self.play(items, call):
            parsed = e.parsed(self.pool)
            out.append(PolicyRun(parsed.answer, list(e.calls), parsed.format_ok and not e.truncated,
                                 wall, {"turns": e.turns, "routes": [m for m, _ in e.routes],
                                        "response": e.response[-2000:]}))
        return out
