"""The `World` protocol: everything training knows about a data source, and the registry that
picks one from `data.kind`.

A world gives the questions of a split, the text a locally made tokenizer learns from, optional
warm-start traces, each episode's outcome, optional reference policies for the report, and how a
routed call is answered (`route_calls`). The driver (pipelines/train.py) and the rollout actors
(actors/rollout.py) call these methods and never ask which world they run. Built in:

    data.kind     class                                           outcome
    simulated     router_r1.worlds.sim.world:SimulatedWorld       EM/F1 against the simulator's truth
    qa            router_r1.worlds.qa:QAWorld                     EM/F1 against gold answers
    replay        router_r1.worlds.replay.world:ReplayWorld       label of the adopted reply

A user's own world is one class (subclass `World` for the defaults, or write every method) named
in the config: `data: {kind: custom, world: "my_pkg.my_module:MyWorld", options: {...}}`; it is
built with `MyWorld.from_config(cfg, pool)`, by default `MyWorld(**options)` (docs/training.md).

A world may also offer recorded answers (`recorded()`: every candidate model's reply to each of
its questions, with a graded score and a cost or token counts). Then every command runs on it
from the config alone: `train` (the pool's `world` backend answers routed calls from them:
router_r1.worlds.backend), `evaluate --config` (the baselines that read per-model outcomes:
oracle, per-task) and `train-rllib --config` (the RLlib router's environment). The replay world's
tables are one such world; router_r1.worlds.recorded.RecordedWorld makes one from rows.

The question stream is here too: it reshuffles each epoch from (seed, epoch), so its whole state
is two integers, kept in checkpoints: a resumed run sees exactly the questions an uninterrupted
one would. Ray-free.
"""
from __future__ import annotations

import importlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from router_r1.env.episode import Episode, Tokenizer
    from router_r1.env.prompt import PromptLayout
    from router_r1.env.reward import RewardConfig
    from router_r1.infra.config import DataConfig, RunConfig
    from router_r1.pool.descriptors import PoolSpec
    from router_r1.pool.types import CallFn

class DataError(ValueError):
    """A dataset row that does not fit its schema; the message names file, row and field."""


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    golden_answers: list[str]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The conversation before the question ({"role", "content"} turns), rendered into the router's
    # prompt (router_r1.env.prompt.render_prompt_ids(history=...)); empty for a single question.
    history: list[dict[str, str]] = field(default_factory=list, compare=False, hash=False)


# {"id", "question", "golden_answers"} and, for a follow-up, "history" (the turns before the
# question, rendered into its prompt as Serve renders a request's): what rollout workers take.
Item = dict[str, Any]
Split = Literal["train", "val"]

WORLDS: dict[str, str] = {
    "simulated": "router_r1.worlds.sim.world:SimulatedWorld",
    "qa": "router_r1.worlds.qa:QAWorld",
    "replay": "router_r1.worlds.replay.world:ReplayWorld",
}


class RecordedAnswers(Protocol):
    """Every candidate model's recorded reply to a world's questions: what
    router_r1.worlds.replay.tables.ReplayTable is (build one from rows with
    `ReplayTable.from_rows`). `samples` hold per question its `prompt`, task (`eval_name`) and
    `answers` by model id (`response`, graded score `correct` in [0, 1], `cost` in USD or None,
    recorded token counts or None); `models` are the model ids, matched to pool models by
    display name, alias or `backend.replay_column`."""

    samples: list[Any]
    models: list[str]

    def lookup(self, question: str) -> Any | None: ...


def item(id_: str, question: str, golds: Sequence[str], history: Sequence[dict[str, str]] = ()) -> Item:
    """A rollout item; "history" only when there is one, so single questions are as before."""
    out: Item = {"id": id_, "question": question, "golden_answers": list(golds)}
    if history:
        out["history"] = [dict(t) for t in history]
    return out


class World:
    """A data source for training. Subclasses implement `questions`; every other method has a
    default that fits a plain question/gold-answer set. `pool` is always the training view of
    the descriptor file (models unseen in training left out)."""

    @classmethod
    def from_config(cls, cfg: RunConfig, pool: PoolSpec) -> World:
        """Build the world of a run. Default: `cls(**cfg.data.options)` (custom worlds)."""
        return cls(**cfg.data.options)

    def questions(self, split: Split) -> list[Item]:
        """The items of `split`: train (what the stream cycles through) or val (greedy evaluation
        at the start and end of training)."""
        raise NotImplementedError

    def tokenizer_corpus(self, pool: PoolSpec, layout: PromptLayout) -> list[str]:
        """Text for a tiny router's locally trained tokenizer (not called with a checkpoint), its
        prompts in `layout` (`policy.prompt_layout`). Default: every question's rendered prompt
        followed by its gold answers."""
        from router_r1.env.prompt import render_prompt

        return [render_prompt(pool, it["question"], layout=layout) + " ".join(it["golden_answers"])
                for it in self.questions("train") + self.questions("val")]

    def warmstart_traces(self, pool: PoolSpec, tokenizer: Tokenizer) -> list[Episode]:
        """Well-formed demonstrations for the supervised warm start (asked only when
        `warmstart.steps > 0`). Default: none, and the warm start is skipped."""
        return []

    def outcomes(self, episodes: Sequence[Episode], pool: PoolSpec) -> list[float] | None:
        """Each episode's outcome in [0, 1], or None: EM/F1 of the answer against the episode's
        gold answers (router_r1.env.episode_metrics.score_episodes)."""
        return None

    def reference(self, items: Sequence[Item], reward: RewardConfig) -> dict[str, Any] | None:
        """Mean rewards of reference policies on `items`, for the report: a dict with "oracle",
        "best_single" (name, reward), "random" and "expert". Default: none."""
        return None

    def held_out(self) -> str | None:
        """What validation holds out, in words, for the report. Default: not said."""
        return None

    def extra_evals(self) -> dict[str, list[Item]]:
        """Named question sets the driver also plays greedily at the start and end of training
        (e.g. the simulator's held-out entities beside a question-split validation). Default: none."""
        return {}

    def by_type(self, items: Sequence[Item], rows: Sequence[dict[str, Any]],
                reward: RewardConfig) -> dict[str, Any] | None:
        """The report's per-question-type table: `rows` are the router's greedy validation
        episodes (id, em, reward, cost_usd, calls) on `items`. Default: none."""
        return None

    @staticmethod
    def route_calls(call: CallFn, episodes: Sequence[Episode]) -> CallFn:
        """The call function the episodes' routed calls go through. Default: the pool's, as is.
        Per class, not per instance: a rollout actor uses it without loading the world's data."""
        return call

    def recorded(self) -> RecordedAnswers | None:
        """Every candidate model's recorded answer to this world's questions (`RecordedAnswers`),
        looked up by question text; None (the default): the world has none, and the pool's models
        are called for real. With them, the pool's `world` backend answers routed calls, and the
        oracle and per-task baselines and the RLlib router read per-model outcomes from them."""
        return None


def recorded_samples(world: World, split: str) -> tuple[RecordedAnswers, list[Any]]:
    """(recorded answers, one recorded sample per question of `split`: train, val, or all =
    train then val). One line of error when the world records no answers or misses a question."""
    table = world.recorded()
    if table is None:
        raise ValueError(f"the {type(world).__name__} world records no answers (World.recorded); "
                         "this needs every model's recorded answer to each question")
    if split not in ("train", "val", "all"):
        raise ValueError(f"unknown split {split!r}; want train, val or all")
    items = [q for s in (("train", "val") if split == "all" else (split,)) for q in world.questions(s)]
    out = []
    for it in items:
        s = table.lookup(it["question"])
        if s is None:
            raise ValueError(f"the {type(world).__name__} world has no recorded answers to question "
                             f"{it['id']!r} of its {split} split")
        out.append(s)
    return table, out


def check_trace_mix(mix: dict[str, float] | None, known: Sequence[str], world: str) -> None:
    """Refuse, in one line, a `warmstart.trace_mix` naming a policy `world` cannot demonstrate.
    Worlds call it in `from_config`, so a bad mix fails before any actor exists."""
    bad = sorted(set(mix or {}) - set(known))
    if bad:
        choose = f"choose from {list(known)}" if known else "it makes no warm-start traces"
        raise ValueError(f"warmstart.trace_mix: unknown trace policies {bad} for the {world} world; {choose}")


def world_class(data: DataConfig) -> type[World]:
    """The class `data.kind` names (`data.world` for a custom world); imported, not built."""
    target = data.world if data.kind == "custom" else WORLDS.get(data.kind)
    if target is None:
        raise ValueError(f"unknown data.kind {data.kind!r}; choose one of {sorted(WORLDS)} or 'custom'")
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"data.world {target!r}: expected 'package.module:ClassName'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"data.world {target!r} cannot be imported: {e}") from None


def make_world(cfg: RunConfig, pool: PoolSpec) -> World:
    """The world of a run, built from its config over the training pool."""
    return world_class(cfg.data).from_config(cfg, pool)


class QuestionStream:
    """Endless batches over `items`, reshuffled each epoch from (seed, epoch)."""

    def __init__(self, items: list[Item], seed: int = 0):
        if not items:
            raise ValueError("no training questions")
        self.items, self.seed = items, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[Item]:
        out = []
        while len(out) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.items[self._order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "n": len(self.items)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("n") not in (None, len(self.items)):
            raise ValueError(f"checkpoint was taken over {state['n']} training questions, "
                             f"this run has {len(self.items)}; the data changed")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._shuffle()
