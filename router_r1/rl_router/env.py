"""The routing environment: one question per episode, real recorded answers, the Router-R1 reward.

Actions: `k < max_models` calls the pool's k-th model (its recorded reply and cost); `max_models`
answers with the last reply. The recorded answers are a world's (World.recorded: `run_config`
names a run config whose `data:` section builds it, as `router-r1 train` does; the replay tables
are one such world) or replay tables given directly (`data`: files; `samples`: loaded ones). The episode ends on an answer, on an invalid
slot (a model the pool does not have: scored like a format violation, as when the LLM router names
an unknown model), or after `max_calls` calls (the last reply is the answer). Reward at the end only,
the same core reward as the LLM router (router_r1.env.reward; Router-R1 eq. 2-5): format is always
well formed here, the outcome is the correctness label of the adopted (last) reply, and the cost
reward comes from the configured normaliser over episode costs. Ray-free.

A `catalog` (descriptors of more models, answered by the same tables) makes a `catalog_share` of
episodes run over a random pool of `catalog_sizes` catalog models in random slots: a router that
sees one fixed pool can tell its models apart by price alone and never needs a description; over
ever-changing pools it must read each descriptor, which is what a model unseen in training offers.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from router_r1.env.reward import RewardConfig, compute_reward, make_normalizer
from router_r1.worlds.replay.routing import sample_cost
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec, load_pool
from router_r1.rl_router.features import FeatureSpec, assign_slots, hash_ngrams, observation, pool_features
from router_r1.worlds.replay.tables import (ReplaySample, ReplayTable, model_ids, resolve_data_path,
                                            split_samples)


@functools.lru_cache(maxsize=4)
def _load_split(paths: tuple[str, ...], split: str, val_fraction: float, seed: int
                ) -> tuple[list[ReplaySample], list[str]]:
    """Loaded once per process: a vectorised env builds many RouterEnv copies."""
    table = ReplayTable.from_files(list(paths))
    return split_samples(table.samples, split, val_fraction, seed), table.models


@functools.lru_cache(maxsize=4)
def _load_world_split(run_config: str, split: str) -> tuple[list[ReplaySample], list[str]]:
    """The recorded samples of `split` (train, val or all) of the world `run_config` names, built
    as `router-r1 train` builds it (over the config's pool, training view). Once per process."""
    from router_r1.infra.config import load_config
    from router_r1.worlds.base import make_world, recorded_samples

    cfg = load_config(run_config)
    table, samples = recorded_samples(make_world(cfg, cfg.load_pool().seen()), split)
    return samples, list(table.models)


_QVEC_CACHE: dict[tuple[int, int], tuple[list[ReplaySample], list[np.ndarray]]] = {}


def _question_vectors(samples: list[ReplaySample], dim: int) -> list[np.ndarray]:
    """Hashed once per sample list (the cache holds the list, so its id cannot be reused)."""
    key = (id(samples), dim)
    hit = _QVEC_CACHE.get(key)
    if hit is None or hit[0] is not samples:
        if len(_QVEC_CACHE) > 8:
            _QVEC_CACHE.clear()
        hit = _QVEC_CACHE[key] = (samples, [hash_ngrams(s.prompt, dim) for s in samples])
    return hit[1]


def training_pool(pool: PoolSpec, holdout: Sequence[str] = ()) -> PoolSpec:
    """The models a router may see in training: descriptors marked seen, minus `holdout`."""
    seen = pool.seen()
    drop = {pool[n].name for n in holdout}
    return seen.subset([m.name for m in seen.models if m.name not in drop])


class RouterEnv(gym.Env):
    """See module docstring. `config` (an RLlib EnvContext is a dict) holds either live objects
    (`samples`, `pool`: tests, evaluation) or what to load (`run_config` or `data`, `pool_path`,
    `split`, ...)."""

    metadata: dict[str, Any] = {}

    def __init__(self, config: dict[str, Any] | None = None):
        config = dict(config or {})
        self.spec_f = FeatureSpec(**config.get("features", {}))
        pool = config.get("pool")
        if pool is None:
            pool = load_pool(config["pool_path"])
        self.pool: PoolSpec = training_pool(pool, config.get("holdout", ()))
        trained = set(self.pool.names)
        held_out = pool.subset([m.name for m in pool.models if m.name not in trained])
        samples = config.get("samples")
        table_models = config.get("table_models")
        if samples is None and config.get("run_config"):
            samples, table_models = _load_world_split(str(config["run_config"]), config.get("split", "train"))
        elif samples is None:
            samples, table_models = _load_split(
                tuple(str(resolve_data_path(p, pool)) for p in config["data"]), config.get("split", "train"),
                float(config.get("val_fraction", 0.2)), int(config.get("split_seed", 0)))
        if not samples:
            raise ValueError("RouterEnv: no samples to train on")
        self.samples: list[ReplaySample] = samples if isinstance(samples, list) else list(samples)
        table_models = table_models or sorted({m for s in self.samples for m in s.answers})
        self.columns = model_ids(self.pool, table_models)
        missing = [m.name for m in self.pool.models if m.name not in self.columns]
        catalog = config.get("catalog")
        if catalog is None and config.get("catalog_path"):
            catalog = load_pool(config["catalog_path"])
        self.catalog: list[ModelDescriptor] = []
        if catalog is not None:
            clash = {m.name for m in catalog.models} & {m.name for m in self.pool.models}
            if clash:
                raise ValueError(f"RouterEnv: catalog models also in the pool: {sorted(clash)}")
            self.catalog = list(catalog.models)
            cat_columns = model_ids(catalog, table_models)
            held_columns = set(model_ids(held_out, table_models).values())
            leaked = sorted(n for n, c in cat_columns.items() if c in held_columns)
            if leaked:  # a held-out model's answers under another name
                raise ValueError(f"RouterEnv: catalog models answer with a held-out model's column: {leaked}")
            self.columns |= cat_columns
            missing += [m.name for m in self.catalog if m.name not in self.columns]
        if missing:
            raise ValueError(f"RouterEnv: models without replay columns: {missing}")
        self.catalog_share = float(config.get("catalog_share", 0.5 if self.catalog else 0.0))
        lo, hi = config.get("catalog_sizes", (2, 5))
        self.catalog_sizes = (int(lo), int(hi))
        if self.catalog_share and not 1 <= lo <= hi <= min(len(self.catalog), self.spec_f.max_models):
            raise ValueError(f"RouterEnv: catalog_sizes {lo}..{hi} must lie in 1..min(catalog size "
                             f"{len(self.catalog)}, max_models {self.spec_f.max_models})")
        self.reward_cfg = RewardConfig(**config.get("reward", {}))
        self.normalizer = make_normalizer(self.reward_cfg)
        self.max_calls = int(config.get("max_calls", 2))
        # Random slot per model each episode: the policy must read the descriptor features to
        # know which model a slot holds, which is what lets it take models it never saw.
        self.shuffle_slots = bool(config.get("shuffle_slots", False))
        self.slots = assign_slots(self.pool, self.spec_f)  # training: pool order
        self.pool_block = pool_features(self.slots, self.spec_f.desc_dim)
        self._own = (self.slots, self.pool_block)  # restored after a catalog episode
        self._qvec = _question_vectors(self.samples, self.spec_f.question_dim)
        self._rvec: dict[tuple[int, str], np.ndarray] = {}
        n = self.spec_f.max_models
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.spec_f.obs_dim,), np.float32)
        self.action_space = gym.spaces.Discrete(n + 1)
        self._rng = np.random.default_rng(config.get("seed", 0))
        self._i = 0
        self._called = np.zeros(n, dtype=np.float32)
        self._step = 0
        self._last: tuple[str, str] | None = None  # (model name, reply)
        self._cost = 0.0

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._i = int(options["index"]) if options and "index" in options else int(
            self._rng.integers(len(self.samples)))
        self._called[:] = 0.0
        self._step, self._last, self._cost = 0, None, 0.0
        models = self.pool.models
        if self.catalog_share and self._rng.random() < self.catalog_share:
            k = int(self._rng.integers(self.catalog_sizes[0], self.catalog_sizes[1] + 1))
            models = [self.catalog[int(j)] for j in self._rng.choice(len(self.catalog), k, replace=False)]
        if self.shuffle_slots or models is not self.pool.models:
            perm = self._rng.permutation(self.spec_f.max_models)[:len(models)]
            self.slots = [None] * self.spec_f.max_models
            for m, k in zip(models, perm):
                self.slots[int(k)] = m
            self.pool_block = pool_features(self.slots, self.spec_f.desc_dim)
        else:  # the pool in its own slots (again, after a catalog episode)
            self.slots, self.pool_block = self._own
        return self._obs(), {}

    def step(self, action: int):
        action = int(action)
        if action == self.spec_f.max_models:
            return self._finish()
        model = self.slots[action]
        if model is None:  # no such model in this pool
            return self._obs(), self.reward_cfg.format_penalty, True, False, {"invalid": True}
        sample = self.samples[self._i]
        col = self.columns[model.name]
        reply = sample.answers.get(col)
        self._called[action] = 1.0
        self._step += 1
        if reply is not None and reply.response is not None:
            self._cost += sample_cost(self.pool, model, sample, col)
            self._last = (model.name, reply.response)
        if self._step >= self.max_calls:
            return self._finish()
        return self._obs(), 0.0, False, False, {}

    # -- internals -----------------------------------------------------------------------------
    def _finish(self):
        sample = self.samples[self._i]
        outcome = 0.0 if self._last is None else sample.label(self.columns[self._last[0]])
        self.normalizer.update([self._cost])
        r = compute_reward(True, outcome, self._cost, self.normalizer.score(self._cost), self.reward_cfg)
        info = {"outcome": outcome, "cost_usd": self._cost, "calls": self._step,
                "model": None if self._last is None else self._last[0]}
        return self._obs(), float(r.reward), True, False, info

    def _obs(self) -> np.ndarray:
        reply_vec = None
        if self._last is not None:
            key = (self._i, self._last[0])
            reply_vec = self._rvec.get(key)
            if reply_vec is None:
                reply_vec = self._rvec[key] = hash_ngrams(self._last[1], self.spec_f.reply_dim)
        return observation(self.spec_f, self._qvec[self._i], None if self._last is None else self._last[1],
                           self._called, self._step, self.max_calls, self.pool_block, reply_vec)
