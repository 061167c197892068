"""A world of recorded answers in one class: subclass `RecordedWorld`, take your options in
`__init__`, and yield your data set as rows of the long table from `rows()`:

    {"sample_id": "17", "eval_name": "math", "prompt": "What is 7 * 6?", "model": "small-model",
     "response": "42", "correct": 1.0, "cost": 0.0002}

one row per (question, model); `correct` is the graded score in [0, 1]; `cost` (USD) may be None,
and then the call is priced from the model's descriptor with the row's `prompt_tokens` and
`completion_tokens` (else token estimates). Row `model`s are matched to pool models by display
name, alias or `backend.replay_column`; pool models with `backend: {kind: world}` are answered
from these rows (router_r1.worlds.backend), so no table is written to disk.

Named in a config (`data: {kind: custom, world: "my_pkg.mod:MyWorld", options: {...}}`), the
class serves every command: `router-r1 train` (questions split by a hash of (split seed,
eval_name, sample_id) with `data.val_fraction`; outcome: the graded score of the reply the answer
adopts; warm-start traces from the training split), `router-r1 evaluate --config` (the baselines,
oracle and per-task included, and any trained router) and `router-r1 train-rllib --config`.
Everything but `rows` is the replay world's (router_r1.worlds.replay.world.ReplayWorld) and may
be overridden like any World method. Ray-free.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from router_r1.worlds.base import Item, Split, World, check_trace_mix
from router_r1.worlds.replay.tables import ReplayTable
from router_r1.worlds.replay.world import TRACE_POLICIES, ReplayWorld

if TYPE_CHECKING:
    from router_r1.env.episode import Episode, Tokenizer
    from router_r1.env.prompt import PromptLayout
    from router_r1.infra.config import RunConfig
    from router_r1.pool.descriptors import PoolSpec
    from router_r1.pool.types import CallFn


class RecordedWorld(World):
    """See the module docstring. Subclasses write `rows()` (and `__init__` for their options)."""

    _replay: ReplayWorld | None = None

    def rows(self) -> Iterable[dict[str, Any]]:
        """The data set as long-table rows (module docstring)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: RunConfig, pool: PoolSpec) -> RecordedWorld:
        check_trace_mix(cfg.warmstart.trace_mix, TRACE_POLICIES, cls.__name__)
        return cls(**cfg.data.options).attach(cfg, pool)

    def attach(self, cfg: RunConfig, pool: PoolSpec) -> RecordedWorld:
        """Load `rows()` and split them as the run's config says (done by `from_config`)."""
        d = cfg.data
        table = ReplayTable.from_rows(self.rows(), where=type(self).__name__)
        self._replay = ReplayWorld.from_table(table, pool, d.val_fraction, cfg.split_seed, d.limit, d.val_size)
        self._replay.cfg = cfg
        return self

    @property
    def replay(self) -> ReplayWorld:
        if self._replay is None:
            raise ValueError(f"{type(self).__name__}: build it with from_config(cfg, pool), or call "
                             "attach(cfg, pool) first")
        return self._replay

    def questions(self, split: Split) -> list[Item]:
        return self.replay.questions(split)

    def recorded(self) -> ReplayTable:
        return self.replay.table

    def tokenizer_corpus(self, pool: PoolSpec, layout: PromptLayout) -> list[str]:
        return self.replay.tokenizer_corpus(pool, layout)

    def warmstart_traces(self, pool: PoolSpec, tokenizer: Tokenizer) -> list[Episode]:
        return self.replay.warmstart_traces(pool, tokenizer)

    def outcomes(self, episodes: Sequence[Episode], pool: PoolSpec) -> list[float]:
        return self.replay.outcomes(episodes, pool)

    @staticmethod
    def route_calls(call: CallFn, episodes: Sequence[Episode]) -> CallFn:
        """A routed call answers the question's own prompt (the only one with recorded answers)."""
        return ReplayWorld.route_calls(call, episodes)
