"""The replay world (RouterBench, GSM8K) as a training world (`data.kind: replay`): questions,
prompts, warm-start traces and episode outcomes. Ray-free.

- Questions: the replay tables of `data.train`, split by `router_r1.worlds.replay.tables.split_samples` with
  (`data.split_seed`, else `seed`; `data.val_fraction`), the same deterministic hash split `router-r1 evaluate --split`
  uses, so a router trained on `train` is compared on an unseen `val`.
- Prompt: a tiny router cannot read a 2,000-character ARC prompt, so only the question's last
  `policy.max_question_tokens` tokens enter the prompt (router_r1.env.prompt.question_tail; RouterBench
  puts its few-shot examples first and the question last). The replayed call still gets the full
  question (`route_calls`: router_r1.worlds.replay.tables.replay_call).
- Outcome: the label of the called model's reply that the answer adopts
  (`router_r1.worlds.replay.tables.replay_outcome`, docs/evaluation.md), in place of EM against gold answers.
- Warm start: well-formed one-call traces (think -> route -> recorded reply -> think -> answer
  naming the called model, or repeating a short reply). Each trace's model follows one of two
  trace policies (`warmstart.trace_mix`), both from the training split's labels in aggregate per
  task (`eval_name`), never a question's own label, which a router cannot see at test time:
  `task` draws it with weights that favour models accurate on the task (the default);
  `per_task` takes the task's per-task route (router_r1.worlds.replay.routing.per_task_routes:
  the cheapest model within `warmstart.task_margin` of the task's best accuracy). A mix of the two
  starts the router on the cost-aware per-task routing and leaves RL other routes to weigh.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from router_r1.env.episode import Episode, Segment, Tokenizer, truncate_tokens
from router_r1.env.prompt import PromptLayout, PromptOptions, render_prompt, render_prompt_ids, user_turn
from router_r1.env.protocol import information_block
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.types import CallFn, CallResult
from router_r1.worlds.base import Item, Split, World, check_trace_mix
from router_r1.worlds.replay.routing import per_task_routes, task_stats
from router_r1.worlds.replay.tables import (ReplaySample, ReplayTable, model_ids, replay_call, replay_outcome,
                                            resolve_data_path, split_samples)

if TYPE_CHECKING:
    from router_r1.infra.config import RunConfig

# What the warm-start traces say a task is (RouterBench eval names; anything else: "question").
TASK_WORDS = {"arc": "science multiple choice", "mbpp": "python code", "winogrande": "commonsense blank",
              "winograde": "commonsense blank", "gsm8k": "math word problem"}
SHORT_REPLY_WORDS = 3  # replies this short may be repeated verbatim as the answer
# Warm-start trace policies (module docstring); `warmstart.trace_mix` weighs them.
TRACE_POLICIES = ("task", "per_task")
DEFAULT_MIX = {"task": 1.0}


def task_words(eval_name: str) -> str:
    low = eval_name.lower()
    return next((w for k, w in TASK_WORDS.items() if k in low), "question")


def item_id(s: ReplaySample) -> str:
    """The question's id; the same uid `router-r1 evaluate` gives replay items."""
    return f"{s.eval_name}:{s.sample_id}"


@dataclass
class ReplayWorld(World):
    """The replay questions of a training run and what scoring them needs. `cfg` (set by
    `from_config`) holds the run's warm-start and prompt settings."""

    table: ReplayTable
    train: list[ReplaySample]
    val: list[ReplaySample]
    by_id: dict[str, ReplaySample] = field(default_factory=dict)
    cfg: RunConfig | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, pool: PoolSpec) -> ReplayWorld:
        check_trace_mix(cfg.warmstart.trace_mix, TRACE_POLICIES, "replay")
        d = cfg.data
        w = cls.load(d.train, pool, d.val_fraction, cfg.split_seed, d.limit, d.val_size)
        w.cfg = cfg
        return w

    @classmethod
    def load(cls, files: Sequence[str], pool: PoolSpec, val_fraction: float, seed: int = 0,
             limit: int | None = None, val_size: int | None = None) -> "ReplayWorld":
        if not files:
            raise ValueError("data.kind 'replay' needs data.train: replay tables (RouterBench CSV, ...)")
        table = ReplayTable.from_files([resolve_data_path(p, pool) for p in files])
        return cls.from_table(table, pool, val_fraction, seed, limit, val_size)

    @classmethod
    def from_table(cls, table: ReplayTable, pool: PoolSpec, val_fraction: float, seed: int = 0,
                   limit: int | None = None, val_size: int | None = None) -> "ReplayWorld":
        """The world over a loaded table (from files, or built in memory by a world of recorded
        answers: router_r1.worlds.recorded)."""
        columns = model_ids(pool, table.models)
        if not columns:
            raise ValueError(f"no pool model ({', '.join(pool.names)}) has a column in the replay tables "
                             f"({', '.join(table.models)})")
        train = split_samples(table.samples, "train", val_fraction, seed)[:limit]
        val = split_samples(table.samples, "val", val_fraction, seed)[:val_size]
        if not train:
            raise ValueError("the replay train split is empty")
        w = cls(table, train, val)
        w.by_id = {item_id(s): s for s in table.samples}
        return w

    @staticmethod
    def items(samples: Sequence[ReplaySample]) -> list[dict[str, Any]]:
        """What rollout workers take: the full question (the replayed call needs it)."""
        return [{"id": item_id(s), "question": s.prompt, "golden_answers": []} for s in samples]

    def questions(self, split: Split) -> list[Item]:
        return self.items(self.train if split == "train" else self.val)

    def recorded(self) -> ReplayTable:
        return self.table

    def tokenizer_corpus(self, pool: PoolSpec, layout: PromptLayout) -> list[str]:
        return tokenizer_corpus(self, pool, layout, seed=self.cfg.seed)

    def warmstart_traces(self, pool: PoolSpec, tokenizer: Tokenizer) -> list[Episode]:
        cfg = self.cfg
        ws = cfg.warmstart
        return make_traces(self, pool, ws.num_traces, cfg.seed + 1, cfg.policy.prompt_options(),
                           cfg.episode.max_obs_tokens, tokenizer, mix=ws.trace_mix, margin=ws.task_margin)

    @staticmethod
    def route_calls(call: CallFn, episodes: Sequence[Episode]) -> CallFn:
        """A routed call answers the sample's own question (recorded answers exist for nothing
        else), whatever sub-question the router wrote."""
        return replay_call(call, {e.uid: e.question for e in episodes})

    def sample_of(self, e: Episode) -> ReplaySample:
        key = str(e.meta.get("group", e.uid.rsplit("#", 1)[0]))
        s = self.by_id.get(key)
        if s is None:
            raise KeyError(f"episode {e.uid!r}: question {key!r} is not in the replay tables")
        return s

    def outcomes(self, episodes: Sequence[Episode], pool: PoolSpec) -> list[float]:
        """Each episode's outcome under the adoption rule (0 for a malformed trajectory)."""
        out = []
        for e in episodes:
            parsed = e.parsed(pool)
            if not parsed.format_ok:
                out.append(0.0)
                continue
            out.append(replay_outcome(parsed.answer, e.calls, self.sample_of(e), pool, self.table.models)[0])
        return out

    def task_routes(self, pool: PoolSpec, margin: float) -> dict[str, str]:
        """eval_name -> the per-task route learned from the training split (routing.per_task_routes)."""
        return per_task_routes(*task_stats(self.train, pool, self.table.models), margin)


def model_weights(acc: dict[str, float], temperature: float) -> dict[str, float]:
    """Softmax of task accuracy: exp((acc - best) / temperature)."""
    best = max(acc.values())
    return {m: math.exp((a - best) / temperature) for m, a in acc.items()}


def make_trace(world: ReplayWorld, s: ReplaySample, model: str, pool: PoolSpec, rng: random.Random,
               options: PromptOptions, max_obs_tokens: int, tokenizer: Tokenizer | None) -> Episode:
    """One well-formed one-call trajectory routing `s` to `model` (a pool display name). With the
    policy's tokenizer the prompt is the rollouts' own (render_prompt_ids); without one (the
    tokenizer corpus, before the tokenizer exists) it is the user turn alone."""
    col = model_ids(pool, world.table.models)[model]
    ans = s.answers[col]
    reply = ans.response or ""
    task = task_words(s.eval_name)
    final = model
    if len(reply.split()) <= SHORT_REPLY_WORDS and reply.strip() and rng.random() < 0.3:
        final = reply.strip()  # adopted by reproduction instead of by name
    segments = [
        Segment(f"<think> {task}: ask {model}. </think>\n<search> {model}: solve it </search>", "policy"),
        Segment(information_block(truncate_tokens(reply, max_obs_tokens, tokenizer)), "information"),
        Segment(f"<think> {model} answered. </think>\n<answer> {final} </answer>", "policy"),
    ]
    call = CallResult(model=model, text=reply, cost_usd=ans.cost or 0.0, attempts=1)
    return Episode(uid=item_id(s), question=s.prompt, golden_answers=[],
                   prompt=(render_prompt_ids(tokenizer, pool, s.prompt, options)[0] if tokenizer is not None
                           else user_turn(pool, s.prompt, options)),
                   segments=segments, calls=[call], routes=[(model, "solve it")], turns=2, done=True,
                   meta={"group": item_id(s), "trace_model": model})


def make_traces(world: ReplayWorld, pool: PoolSpec, n: int, seed: int = 0,
                options: PromptOptions = PromptOptions(layout="compact"), max_obs_tokens: int = 32,
                tokenizer: Tokenizer | None = None, temperature: float = 0.1,
                mix: dict[str, float] | None = None, margin: float = 0.0) -> list[Episode]:
    """`n` traces over training questions (cycled in a seeded order). Each trace's policy is drawn
    from `mix` (TRACE_POLICIES; default all `task`): `task` draws the model from `model_weights`
    of its task's accuracy, `per_task` takes the task's route at `margin` (module docstring; a
    question the route's model has no reply to falls back to `task`)."""
    mix = mix or DEFAULT_MIX
    check_trace_mix(mix, TRACE_POLICIES, "replay")
    rng = random.Random(seed)
    policy_rng = random.Random(f"{seed}-policy")  # its own stream: the default mix draws as before
    acc, cost = task_stats(world.train, pool, world.table.models)  # once: weights and routes
    routes = per_task_routes(acc, cost, margin) if mix.get("per_task") else {}
    columns = model_ids(pool, world.table.models)
    order = list(world.train)
    rng.shuffle(order)
    names, weights = list(mix), list(mix.values())
    traces = []
    for i in range(n):
        s = order[i % len(order)]
        usable = {m: a for m, a in acc[s.eval_name].items()
                  if (x := s.answers.get(columns[m])) is not None and x.response}
        if not usable:
            continue
        policy = policy_rng.choices(names, weights)[0] if len(names) > 1 else names[0]
        if policy == "per_task" and routes.get(s.eval_name) in usable:
            model = routes[s.eval_name]
        else:
            w = model_weights(usable, temperature)
            model = rng.choices(list(w), list(w.values()))[0]
        traces.append(make_trace(world, s, model, pool, rng, options, max_obs_tokens, tokenizer))
    return traces


def tokenizer_corpus(world: ReplayWorld, pool: PoolSpec, layout: PromptLayout = "compact", n_traces: int = 512,
                     tail_chars: int = 600, seed: int = 0) -> list[str]:
    """Texts for the tiny router's tokenizer: the question tails it will read (by characters,
    since the tokenizer does not exist yet), the rendered prompt and traces with replies."""
    texts = [s.prompt[-tail_chars:] for s in world.train + world.val]
    for e in make_traces(world, pool, n_traces, seed, PromptOptions(layout=layout), 10_000, None):
        texts.append(render_prompt(pool, e.question[-tail_chars:], layout=layout) + e.response[:2000])
    return texts
