"""`router-r1 train`: the RL training driver (Router-R1, Zhang et al., 2025, on Ray).

One short loop of named steps, each a method of `Trainer`:

    start Ray -> model pool -> learner -> rollout workers -> warm start (optional SFT)
    loop: sync weights -> rollouts -> rewards -> learner update (advantages inside) -> log -> checkpoint
    end: greedy evaluation vs the world's reference policies -> report -> final artifacts

The trainer is composed, never subclassed: it takes its pieces as arguments, the world (the data
source: questions, outcomes, warm-start traces, reference policies; router_r1.worlds.base), a
reward function, the learner class and hooks called at named points (`Hooks`). It never asks
which world it runs.

The driver does only light work (scoring, batching, logging); generation lives in rollout
actors, gradients in the learner actor, candidate-model calls in the ModelPool actor. A rollout
actor that dies is restarted by Ray (`rollout.max_restarts`); its episodes are re-issued after its
weights are re-synced, and training goes on. `--resume` continues from the newest complete
checkpoint: model, optimizer, scheduler and RNG (learner), step, cost-normaliser window, data
position, metric history and the MLflow run id (driver).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.cli import (add_overrides_argument, error_line,  # one override parser for every subcommand
                           parse_overrides)
from router_r1.engines.model import CheckpointError
from router_r1.env.episode import Episode
from router_r1.env.episode_metrics import EpisodeScore, score_episodes, summarize, trajectory_record
from router_r1.env.reward import CostNormalizer, ReferenceCostNormalizer, make_normalizer
from router_r1.infra import checkpoint as ckpt
from router_r1.infra.config import RunConfig, load_config
from router_r1.infra.tracking import make_tracker
from router_r1.pool.descriptors import PoolSpec
from router_r1.worlds.base import Item, QuestionStream, World, make_world

log = logging.getLogger("router_r1.train")
ROOT = Path(__file__).resolve().parents[1]
REPORT_KEYS = (("reward/mean", "reward"), ("outcome/em", "EM"), ("format/ok_rate", "format-ok rate"),
               ("cost/mean_usd", "cost/episode (USD)"), ("calls/per_episode", "calls/episode"))

# Training rewards: a batch's episodes and their scores (world outcome + core reward) -> the
# scores the learner trains on. E.g. reward shaping, or a synthetic reward in tests.
RewardFn = Callable[[list[Episode], list[EpisodeScore]], list[EpisodeScore]]


class Hooks:
    """Called by the trainer at named points; each default does nothing. Pass instances as
    `Trainer(..., hooks=[...])` to observe or perturb a run (tests, experiments)."""

    def before_rollouts(self, trainer: Trainer, items: list[Item], greedy: bool) -> None:
        """Before each batch of rollouts (training: greedy False; evaluation: True)."""

    def after_scores(self, trainer: Trainer, episodes: list[Episode], scores: list[EpisodeScore],
                     normalizer: CostNormalizer) -> None:
        """After each batch of episodes is scored (training rewards and greedy evaluation)."""

    def after_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After each training step is logged."""


class Trainer:
    """The driver. `run()` executes the steps of the module docstring and returns the report."""

    def __init__(self, cfg: RunConfig, resume: bool = False, progress: bool = True, *,
                 world: World | None = None, reward_fn: RewardFn | None = None, hooks: Sequence[Hooks] = ()):
        """`world`: the data source (default: the one `cfg.data` names, router_r1.worlds.base.make_world).
        `reward_fn`: applied to each training batch's scores (default: none). `hooks`: see `Hooks`."""
        cfg.check_training()
        self.cfg, self.resume, self.progress = cfg, resume, progress
        self.reward_fn, self.hooks = reward_fn, list(hooks)
        self.run_dir = Path(cfg.output_dir).resolve()
        # The training view: models marked seen_in_training: false are neither shown (prompts,
        # warm-start traces, tokenizer corpus) nor callable (rollouts, the pool actor) in training.
        self.spec = cfg.load_pool().seen()
        self.world = world if world is not None else make_world(cfg, self.spec)
        self.backends = world_backends(self.spec, self.world)  # before Ray starts: a refusal is one line
        # data.val_size: the first N validation questions, whatever the world (None: all of them);
        # greedy validation bills the candidate endpoints for every question it plays.
        self.val_items = self.world.questions("val")[:cfg.data.val_size]
        self.stream = QuestionStream(self.world.questions("train"), cfg.seed)
        self.normalizer = make_normalizer(cfg.reward)
        self.tracker = make_tracker(cfg.mlflow)
        self.history: list[dict[str, float]] = []
        self.evals: dict[str, dict[str, float]] = {}
        self.eval_rows: dict[str, list[dict[str, Any]]] = {}  # label -> one row per greedy episode
        self.extra_evals = self.world.extra_evals()  # name -> items, played at the start and end
        self.step, self.version, self._restarts_before = 0, 0, 0
        self.sft_losses: list[float] = []  # the warm start's loss per step
        self.inflight: deque = deque()  # PendingRollouts of the next steps, submitted ahead (train_loop)
        self._launched = 0  # the last step whose rollouts were submitted
        self._current_bar = None
        self._owns_ray = False

    # -- setup ---------------------------------------------------------------------------------
    def start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        r = self.cfg.ray
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}}
        if r.address:  # join a cluster: resources are the cluster's
            ray.init(address=r.address, namespace=r.namespace, runtime_env=env)
        else:
            # address="local": always a fresh local Ray, never a stray cluster left on this machine.
            ray.init(address="local", num_cpus=r.num_cpus, object_store_memory=r.object_store_memory,
                     namespace=r.namespace, include_dashboard=False, log_to_driver=False,
                     runtime_env=env)
        self._owns_ray = True

    def create_pool(self) -> None:
        from actors.model_pool import get_or_create_pool

        self.pool_actor = get_or_create_pool(self.spec, self.cfg.pool_runtime, run_id=self.cfg.name,
                                       backends=self.backends)

    def create_learner(self) -> None:
        """`learner.num_learners` learner actors in one process group, behind a LearnerGroup."""
        import ray

        from actors.learner import Learner
        from actors.learner_group import LearnerGroup

        corpus = None if self.cfg.policy.checkpoint else self.tokenizer_corpus()
        self.learner = LearnerGroup(Learner, self.cfg, corpus)
        self.tokenizer_ref = self.learner.rank0.get_tokenizer.remote()
        self.tokenizer = ray.get(self.tokenizer_ref)

    def create_rollout_workers(self) -> None:
        from actors.rollout import RolloutGroup

        self.workers = RolloutGroup(self._new_worker, self.cfg.rollout.num_actors, self.cfg.rollout.max_restarts)

    def _new_worker(self, index: int):
        from actors.rollout import make_rollout_actor, rollout_actor_options

        return make_rollout_actor().options(**rollout_actor_options(self.cfg)).remote(
            self.cfg, self.tokenizer_ref, self.pool_actor, index, self.cfg.name)

    def tokenizer_corpus(self) -> list[str]:
        """Text for the tiny policy's local tokenizer, from the world."""
        return self.world.tokenizer_corpus(self.spec, self.cfg.policy.prompt_layout)

    # -- the named steps -------------------------------------------------------------------------
    def warmstart_traces(self) -> list[Episode]:
        """The world's well-formed demonstrations (none: no warm start)."""
        if self.cfg.warmstart.steps <= 0:
            return []
        return self.world.warmstart_traces(self.spec, self.tokenizer)

    def warm_start(self, traces: list[Episode]) -> dict[str, float]:
        """Supervised steps on the world's traces, so a tiny model learns the format. A rollout
        worker encodes the traces once (the driver never tokenises). Each step's loss goes to the
        progress bar or a log line every tenth, and to MLflow (`sft/nll`, by warm-start step) at the end."""
        import ray

        ws = self.cfg.warmstart
        encoded = ray.get(self.workers.workers[0].encode_traces.remote(traces, self.cfg.episode.max_response_tokens))
        every = max(1, ws.steps // 10)
        bar = self._bar(range(ws.steps), "warm start")
        for s in bar:
            batch = encoded.select([(s * ws.batch_size + j) % len(traces) for j in range(ws.batch_size)])
            nll = float(self.learner.sft_step(batch)["sft/nll"])
            self.sft_losses.append(nll)
            if self._current_bar is not None:
                self._current_bar.set_postfix(nll=f"{nll:.3f}")
            elif (s + 1) % every == 0 or s + 1 == ws.steps:
                log.info("warm start %d/%d: nll %.3f", s + 1, ws.steps, nll)
        self.tracker.log_series("sft/nll", self.sft_losses)  # one store round-trip per 1,000 steps, not per step
        return {"warmstart/loss_first": self.sft_losses[0], "warmstart/loss_last": self.sft_losses[-1]}

    def sync_weights(self, wait: bool = True) -> float:
        """The learner puts its weights once; every rollout worker gets the same refs (without
        `wait`, after the rollouts it is running: see `train_loop`)."""
        t0 = time.perf_counter()
        refs = self.learner.publish_weights()
        self.version = self.learner.version()  # the learner numbers its weights
        self.workers.sync(refs, self.version, wait=wait)
        seconds = time.perf_counter() - t0
        self.last_sync = {**self.learner.last_publish(), "sync/seconds": seconds}
        return seconds

    def submit_rollouts(self, items: list[Item], n_samples: int, seed: int, greedy: bool = False):
        """Start rollouts of `items` with the weights synced last (`RolloutGroup.submit`)."""
        for h in self.hooks:
            h.before_rollouts(self, items, greedy)
        return self.workers.submit(items, n_samples, seed, greedy)

    def rollouts(self, items: list[Item], n_samples: int, seed: int, greedy: bool = False) -> list[Episode]:
        return self.workers.collect(self.submit_rollouts(items, n_samples, seed, greedy))

    def rewards(self, episodes: list[Episode]) -> list[EpisodeScore]:
        """Training rewards: the scores under the run's normaliser, then `reward_fn`."""
        scores = self.score(episodes, self.normalizer)
        return scores if self.reward_fn is None else self.reward_fn(episodes, scores)

    def score(self, episodes: list[Episode], normalizer: CostNormalizer) -> list[EpisodeScore]:
        """The core reward of each episode with the world's outcome (None: EM/F1 against gold)."""
        outcomes = self.world.outcomes(episodes, self.spec)
        scores = score_episodes(episodes, self.spec, self.cfg.reward, normalizer, outcomes)
        for h in self.hooks:
            h.after_scores(self, episodes, scores, normalizer)
        return scores

    def update(self, episodes: list, scores: list) -> dict[str, float]:
        """The episodes' ids and sampler log-probs exactly as sampled, with their rewards, to the
        learner (nothing is tokenised here)."""
        from router_r1.rl.batch import TrajectoryBatch

        groups: dict[str, int] = {}
        gids = [groups.setdefault(e.meta["group"], len(groups)) for e in episodes]
        batch = TrajectoryBatch.from_episodes(episodes, [s.reward.reward for s in scores], gids,
                                              self.cfg.episode.max_response_tokens)
        m = self.learner.update(batch)
        m["batch/policy_tokens"] = float(sum(sum(x) for x in batch.loss_mask))
        return m

    def evaluate(self, label: str, items: list[dict] | None = None) -> dict[str, float]:
        """Greedy episodes on the validation questions (or `items`), scored with the stateless
        reference cost normaliser (as the world's reference policies are)."""
        eps = self.rollouts(self.val_items if items is None else items, 1, seed=0, greedy=True)
        scores = self.score(eps, ReferenceCostNormalizer(self.cfg.reward.reference_cost_usd))
        m = summarize(eps, scores, self.spec)
        self.evals[label] = m
        self.eval_rows[label] = [{"id": e.uid.rsplit("#", 1)[0], "em": s.em, "reward": s.reward.reward,
                                  "cost_usd": e.cost_usd, "calls": len(e.calls)} for e, s in zip(eps, scores)]
        return m

    def evaluate_extra(self, when: str) -> None:
        """The world's extra question sets (`World.extra_evals`), greedily, as `<name>_<when>`."""
        for name, items in self.extra_evals.items():
            step = 0 if when == "start" else self.step
            self.tracker.log_metrics(_prefixed(self.evaluate(f"{name}_{when}", items), f"eval_{name}/"), step=step)

    def save_checkpoint(self) -> Path:
        path = ckpt.checkpoint_dir(self.run_dir, self.step)
        extra = {"step": self.step, "version": self.version, "normalizer": self.normalizer.state_dict(),
                 "stream": self.stream.state_dict(), "mlflow_run_id": self.tracker.run_id,
                 "history": self.history, "evals": self.evals, "restarts": self.restarts}
        self.learner.save_checkpoint(str(path), extra)
        if self.cfg.train.keep_checkpoints:  # the newest N; older ones are deleted
            ckpt.prune(self.run_dir, self.cfg.train.keep_checkpoints)
        return path

    def load_checkpoint(self) -> Path:
        path = ckpt.latest(self.run_dir)
        if path is None:
            raise CheckpointError(f"--resume: no complete checkpoint under {self.run_dir / 'checkpoints'}"
                                  f"{_skipped(self.run_dir)}")
        newer = [d.name for d in path.parent.iterdir() if d.is_dir() and d.name.startswith("step_")
                 and d.name > path.name]
        if newer:
            log.warning("skipping incomplete checkpoints %s; resuming from %s", ", ".join(sorted(newer)), path.name)
        extra = self.learner.load_checkpoint(str(path))
        self.step = self._launched = int(extra["step"])
        self.normalizer.load_state_dict(extra["normalizer"])
        self.stream.load_state_dict(extra["stream"])
        self.history, self.evals = list(extra.get("history", [])), dict(extra.get("evals", {}))
        self._restarts_before = int(extra.get("restarts", 0))
        self._resumed_run_id = extra.get("mlflow_run_id")
        return path

    @property
    def restarts(self) -> int:
        """Rollout-actor restarts over the whole run (resumed runs included)."""
        return self._restarts_before + (self.workers.restarts if hasattr(self, "workers") else 0)

    def check_shared_storage(self) -> None:
        """Every learner writes a token into output_dir and the driver reads it back: checkpoints
        are written on the learners' nodes and read here (router_r1.infra.preflight)."""
        from router_r1.infra.preflight import check_shared_output_dir

        check_shared_output_dir(self.run_dir, self.learner.write_storage_tokens)

    def set_aside_old_checkpoints(self) -> None:
        """A fresh run in a used output_dir: move the old run's checkpoints aside (never delete),
        so a later --resume cannot pick up a checkpoint of a different run."""
        old = self.run_dir / "checkpoints"
        if old.is_dir() and any(old.iterdir()):
            dest = self.run_dir / f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}"
            old.rename(dest)
            log.warning("%s held checkpoints of an earlier run; moved to %s (use --resume to continue "
                        "a run)", self.run_dir, dest.name)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, t_start = self.cfg, time.perf_counter()
        self.start_ray()
        try:
            self.create_pool()
            self.create_learner()
            self.check_shared_storage()
            self.create_rollout_workers()
            if self.resume:
                path = self.load_checkpoint()
                log.info("resumed from %s at step %d", path, self.step)
            else:
                self.set_aside_old_checkpoints()
            self.tracker.start(run_id=getattr(self, "_resumed_run_id", None), run_name=cfg.name)
            self.tracker.log_params(cfg.flat())  # flat() holds no secrets by design
            self.sync_weights()
            if not self.resume:
                traces = self.warmstart_traces()
                if traces:
                    self.evaluate("untrained")
                    self.tracker.log_metrics(self.warm_start(traces), step=0)
                    self.sync_weights()
                self.tracker.log_metrics(_prefixed(self.evaluate("start"), "eval/"), step=0)
                self.evaluate_extra("start")
            self.train_loop()
            self.tracker.log_metrics(_prefixed(self.evaluate("end"), "eval/"), step=self.step)
            self.evaluate_extra("end")
            report = self.report(time.perf_counter() - t_start)
            self.finish(report)
            return report
        except BaseException:
            self.tracker.end("FAILED")
            raise
        finally:
            self.shutdown()

    def train_loop(self) -> None:
        """sync -> rollout -> reward -> update -> log -> checkpoint, `train.steps` times. With
        `rollout.max_staleness` k > 0 the rollouts of the next k steps are submitted before a
        step's update and run while the learner works (AReaL's bounded staleness, Fu et al. 2025):
        step s trains on episodes of weights at most k versions old."""
        cfg = self.cfg
        k = cfg.rollout.max_staleness
        for _ in self._bar(range(self.step, cfg.train.steps), "train", total=cfg.train.steps, initial=self.step):
            self.step += 1
            self.sync_weights(wait=k == 0)
            t0 = time.perf_counter()
            while len(self.inflight) < 1 + k and self._launched < self._launch_limit():
                self.launch_rollout()
            episodes = self.workers.collect(self.inflight.popleft())
            rollout_s = time.perf_counter() - t0  # the learner waited this long for its episodes
            scores = self.rewards(episodes)
            t1 = time.perf_counter()
            m = self.update(episodes, scores)
            learner_s = time.perf_counter() - t1
            staleness = [self.version - e.policy_version for e in episodes]
            metrics = {**summarize(episodes, scores, self.spec), **_numeric(m),
                       **self.last_sync, "time/rollout_s": rollout_s, "time/learner_s": learner_s,
                       "time/step_s": time.perf_counter() - t0,
                       "rollout/tokens_per_s": m["batch/policy_tokens"] / max(rollout_s, 1e-9),
                       "rollout/policy_tokens_per_episode": m["batch/policy_tokens"] / len(episodes),
                       "rollout/staleness_mean": sum(staleness) / len(staleness),
                       "rollout/staleness_max": float(max(staleness)),
                       "rollout/restarts": float(self.restarts)}
            self.after_step(episodes, scores, metrics, rollout_s, learner_s)

    def _launch_limit(self) -> int:
        """The last step whose rollouts may be launched now: never past the next checkpoint, so a
        checkpoint is taken with no rollout in flight and a resumed run launches exactly what an
        uninterrupted one does (one pipeline bubble per checkpoint)."""
        ce, steps = self.cfg.train.checkpoint_every, self.cfg.train.steps
        return min(steps, -(-self.step // ce) * ce) if ce else steps

    def launch_rollout(self) -> None:
        """Submit the rollouts of the next step to be launched, with the weights synced last."""
        cfg = self.cfg
        self._launched += 1
        group = cfg.learner.group_size if cfg.learner.algorithm == "grpo" else 1
        n_questions = max(1, cfg.rollout.num_actors * cfg.rollout.episodes_per_actor // group)
        items = self.stream.next_batch(n_questions)
        self.inflight.append(self.submit_rollouts(items, group, seed=cfg.seed * 100_003 + self._launched * 101))

    def after_step(self, episodes: list[Episode], scores: list[EpisodeScore], metrics: dict[str, float],
                   rollout_s: float, learner_s: float) -> None:
        """Log the step, show it, sample trajectories, evaluate and checkpoint when due."""
        cfg = self.cfg
        self.history.append({"step": self.step, **metrics})
        self.tracker.log_metrics(metrics, step=self.step)
        for h in self.hooks:
            h.after_step(self, metrics)
        self._show_step(metrics, rollout_s, learner_s)
        if cfg.train.sample_every and self.step % cfg.train.sample_every == 0:
            self.tracker.log_samples([trajectory_record(e, s, self.step) for e, s in
                                      list(zip(episodes, scores))[:8]], f"samples/step_{self.step:06d}.json")
        if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.steps:
            self.tracker.log_metrics(_prefixed(self.evaluate(f"step_{self.step}"), "eval/"), step=self.step)
        if (cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0) \
                or self.step == cfg.train.steps:
            self.save_checkpoint()

    def _show_step(self, metrics: dict[str, float], rollout_s: float, learner_s: float) -> None:
        bar = self._current_bar
        if bar is None:  # no progress bar: one log line every train.log_every steps
            if self.step % self.cfg.train.log_every and self.step != self.cfg.train.steps:
                return
            log.info("step %d: reward %.3f, EM %.3f, format-ok %.3f, cost %.2e, calls/episode %.2f, "
                     "logp diff mean %.1e max %.1e, staleness %.1f (rollout %.1f s, update %.1f s)",
                     self.step, metrics["reward/mean"], metrics["outcome/em"], metrics["format/ok_rate"],
                     metrics["cost/mean_usd"], metrics["calls/per_episode"],
                     metrics.get("rollout/logp_diff_mean", float("nan")),
                     metrics.get("rollout/logp_diff_max", float("nan")), metrics["rollout/staleness_mean"],
                     rollout_s, learner_s)
        else:
            bar.set_postfix(reward=f"{metrics['reward/mean']:.2f}", em=f"{metrics['outcome/em']:.2f}",
                            fmt=f"{metrics['format/ok_rate']:.2f}", cost=f"{metrics['cost/mean_usd']:.1e}",
                            calls=f"{metrics['calls/per_episode']:.2f}",
                            dlogp=f"{metrics.get('rollout/logp_diff_max', float('nan')):.1e}")

    # -- the end ---------------------------------------------------------------------------------
    def report(self, wall_s: float) -> dict[str, Any]:
        """Start -> end figures (training batches and greedy validation) and, where the world
        has reference policies, the trained router's reward as a fraction of the oracle's and
        the best single model's."""
        first, last = self.history[:3], self.history[-3:]
        rep: dict[str, Any] = {"steps": self.step, "wall_s": wall_s, "restarts": self.restarts,
                               "train": {k: [_mean(first, k), _mean(last, k)] for k, _ in REPORT_KEYS},
                               "eval": {label: {k: m.get(k) for k, _ in REPORT_KEYS}
                                        for label, m in self.evals.items()},
                               "shares": {label: {k.removeprefix("calls/share/"): v for k, v in m.items()
                                                  if k.startswith("calls/share/")}
                                          for label, m in self.evals.items()}}
        if self.history:  # the learning curve: the training batches' reward, about 8 points
            every = max(1, -(-len(self.history) // 8))
            blocks = [self.history[i:i + every] for i in range(0, len(self.history), every)]
            rep["curve"] = {"every": every, "reward": [[b[-1]["step"], _mean(b, "reward/mean")] for b in blocks]}
        if "end" not in self.evals:
            return rep
        if self.world.held_out():
            rep["held_out"] = self.world.held_out()
        ref = self._reference(self.val_items, "end")
        if ref is not None:
            rep["reference"] = ref
        by_type = self.world.by_type(self.val_items, self.eval_rows.get("end", []), self.cfg.reward)
        if by_type:
            rep["by_type"] = by_type
        for name, items in self.extra_evals.items():  # e.g. held-out entities: the harder test
            start, end = self.evals.get(f"{name}_start", {}), self.evals.get(f"{name}_end", {})
            rep.setdefault("extra", {})[name] = {
                "n": len(items), "reward": [start.get("reward/mean"), end.get("reward/mean")],
                "em": [start.get("outcome/em"), end.get("outcome/em")],
                "reference": self._reference(items, f"{name}_end")}
        return rep

    def greedy_curve(self) -> list[dict[str, float]]:
        """The greedy validation reward by RL step, as rows for the curves' panel: the start of
        RL (step 0), every `train.eval_every` steps, the end."""
        steps = {"start": 0, "end": self.step} | {label: int(label.removeprefix("step_"))
                                                  for label in self.evals if label.startswith("step_")}
        return sorted(({"step": step, "eval/reward/mean": self.evals[label]["reward/mean"]}
                       for label, step in steps.items() if label in self.evals), key=lambda r: r["step"])

    def _reference(self, items: list[dict], label: str) -> dict[str, Any] | None:
        """The world's reference policies on `items`, and eval `label`'s reward as a fraction."""
        ref = self.world.reference(items, self.cfg.reward)
        if ref is None or label not in self.evals:
            return None
        end = self.evals[label]["reward/mean"]
        best_name, best = ref["best_single"]
        return {"oracle": ref["oracle"], "best_single": [best_name, best],
                "random": ref["random"], "expert": ref["expert"],
                "fraction_of_oracle": end / ref["oracle"] if ref["oracle"] else None,
                "fraction_of_best_single": end / best if best else None}

    def finish(self, report: dict[str, Any]) -> None:
        policy_dir = self.run_dir / "policy"
        self.learner.save_policy(str(policy_dir))
        (self.run_dir / "report.json").write_text(json.dumps(report, indent=2))
        if self.tracker.run_id:
            t = self.tracker
            t.log_metrics({f"report/{k}": v for k, v in _numeric(report.get("reference", {})).items()},
                          step=self.step)
            t.log_dict(report, "report.json")
            t.log_curves(self.history + self.greedy_curve(), self.sft_losses)
            t.describe_run(run_summary(report, self.sft_losses))
            last = ckpt.latest(self.run_dir)
            if last is not None:
                t.log_dir(last, f"checkpoint/{last.name}")
            # The prompt options travel inside the policy folder (router_r1.json, by save_policy).
            from router_r1.serving.mlflow_model import log_router

            log_router(t, policy_dir, self.cfg.pool, {"episode": self.cfg.episode.model_dump()})
            t.end("FINISHED")

    def shutdown(self) -> None:
        import ray

        if hasattr(self, "workers"):
            self.workers.kill()
        if hasattr(self, "learner"):
            self.learner.kill()
        pool = getattr(self, "pool", None)
        if pool is not None:
            try:
                ray.get(pool.close.remote(), timeout=30)
            except Exception as e:  # the ledger is flushed on a best-effort basis at exit
                log.warning("model pool did not close cleanly: %s", e)
            ray.kill(pool)
        if self._owns_ray:
            ray.shutdown()

    def _bar(self, it, desc: str, **kw):
        self._current_bar = None
        if not self.progress:
            return it
        from tqdm import tqdm

        self._current_bar = tqdm(it, desc=desc, dynamic_ncols=True, **kw)
        return self._current_bar


def world_backends(spec: PoolSpec, world: World) -> dict[str, Any] | None:
    """The pool's `world` backend over the run's own world, when a pool model names it
    (router_r1.worlds.backend): the world's recorded answers travel with the pool actor."""
    if "world" not in spec.kinds():
        return None
    recorded = world.recorded()
    if recorded is None:
        raise ValueError(f"pool models with backend kind 'world' need recorded answers, and the "
                         f"{type(world).__name__} world records none (World.recorded)")
    from router_r1.worlds.backend import WorldBackend

    return {"world": WorldBackend(spec, recorded=recorded)}


def _mean(rows: list[dict], key: str) -> float | None:
    xs = [r[key] for r in rows if key in r]
    return sum(xs) / len(xs) if xs else None


def _numeric(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _prefixed(d: dict[str, float], prefix: str) -> dict[str, float]:
    return {prefix + k: v for k, v in d.items()}


def _skipped(run_dir: Path) -> str:
    root = run_dir / "checkpoints"
    bad = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    return f" (incomplete or corrupt, refused: {', '.join(bad)})" if bad else ""


def format_report(rep: dict[str, Any]) -> str:
    """What the run changed: the training batches first -> last, and what RL changed on greedy
    episodes from the start of RL (right after the warm start) to its end, on validation and on
    each extra question set (held-out entities), with the learning curve."""
    lines = [f"router-r1 train: {rep['steps']} steps in {rep['wall_s']:.0f} s"
             + (f", {rep['restarts']} rollout-actor restarts" if rep["restarts"] else "")]
    ev = rep["eval"]
    extra = [name for name in rep.get("extra", {}) if f"{name}_start" in ev and f"{name}_end" in ev]
    cols = [("greedy val", "start", "end")] + [(n.replace("_", " "), f"{n}_start", f"{n}_end") for n in extra]
    lines.append("  what RL changed: training batches over its first -> last 3 steps; greedy episodes at the "
                 "start of RL (right after the warm start) -> its end")
    lines.append(f"  {'':22s} {'train: first -> last':>24s}" + "".join(
        f"   {title + ': start -> end':>30s}" for title, _, _ in cols))
    for key, name in REPORT_KEYS:
        a, b = rep["train"][key]
        row = f"  {name:22s} {_f(a):>11s} -> {_f(b):<10s}"
        for _, s, e in cols:
            row += f"   {_f((ev.get(s) or {}).get(key)):>16s} -> {_f((ev.get(e) or {}).get(key)):<10s}"
        lines.append(row.rstrip())
    shares = rep.get("shares") or {}
    for title, s, e in cols:
        if shares.get(s) and shares.get(e):
            lines.append(f"  {title} calls by model, start -> end: " + ", ".join(
                f"{m} {shares[s][m]:.2f} -> {shares[e].get(m, 0.0):.2f}" for m in shares[s]))
    curve = rep.get("curve")
    if curve:  # the training batches' reward, a point per block of steps
        lines.append(f"  learning curve, training reward (mean of each {curve['every']} steps, by last step): "
                     + ", ".join(f"{s} {_f(r)}" for s, r in curve["reward"]))
    steps = [(label.removeprefix("step_"), m) for label, m in ev.items() if label.startswith("step_")]
    if steps:  # train.eval_every: the greedy validation reward along the way
        path = [("start", ev.get("start")), *steps, ("end", ev.get("end"))]
        lines.append("  greedy val reward by step: " + ", ".join(
            f"{label} {_f(m.get('reward/mean'))}" for label, m in path if m))
    if "untrained" in ev:
        lines.append(f"  before warm start: format-ok {_f(ev['untrained'].get('format/ok_rate'))}, "
                     f"reward {_f(ev['untrained'].get('reward/mean'))}")
    ref = rep.get("reference")
    if ref:
        lines.append(f"  val reward {_f(ev['end']['reward/mean'])} = {_f(ref['fraction_of_oracle'])} of the oracle "
                     f"({_f(ref['oracle'])}) and {_f(ref['fraction_of_best_single'])} of the best single model "
                     f"({ref['best_single'][0]}: {_f(ref['best_single'][1])}); random routing {_f(ref['random'])}; "
                     f"descriptor-only expert {_f(ref['expert'])}")
    if rep.get("held_out"):
        lines.append(f"  validation holds out {rep['held_out']}")
    for name, x in rep.get("extra", {}).items():
        r = x.get("reference") or {}
        lines.append(f"  {name.replace('_', ' ')} ({x['n']} questions, also played greedily at the start and "
                     f"end): greedy reward {_f(x['reward'][0])} -> {_f(x['reward'][1])}, EM {_f(x['em'][0])} -> "
                     f"{_f(x['em'][1])}" + (f", {_f(r.get('fraction_of_oracle'))} of the oracle ({_f(r.get('oracle'))}); "
                                            f"best single {_f(r['best_single'][1])}, random {_f(r.get('random'))}"
                                            if r else ""))
    if rep.get("by_type"):
        lines.append("  greedy val by question type (EM / calls per episode; a one-call policy asks one model "
                     "the whole question):")
        for kind, t in rep["by_type"].items():
            p, r = t["policies"], t["router"]
            singles = ", ".join(f"{k.removeprefix('single:')} {_f(v['em'])}" for k, v in p.items()
                                if k.startswith("single:"))
            lines.append(f"    {kind} (n={t['n']}): router {_f(r['em'])} / {_f(r['calls'])}; one call: {singles}, "
                         f"best per question {_f(p['oracle (one call)']['em'])}; expert {_f(p['expert']['em'])} / "
                         f"{_f(p['expert']['calls'])}; oracle {_f(p['oracle']['em'])} / {_f(p['oracle']['calls'])}")
    return "\n".join(lines)


def run_summary(rep: dict[str, Any], sft_losses: list[float]) -> str:
    """The run page's description (Markdown): what the warm start and RL changed, at a glance."""
    ev = rep["eval"]
    labels = [("start", "end")] + [(f"{n}_start", f"{n}_end") for n in rep.get("extra", {})
                                   if f"{n}_start" in ev and f"{n}_end" in ev]
    rows = ["| greedy | validation, start of RL | end of RL |" + "".join(
                f" {s.removesuffix('_start').replace('_', ' ')}, start of RL | end of RL |" for s, _ in labels[1:]),
            "|---|" + "---:|---:|" * len(labels)]
    for key, name in REPORT_KEYS:
        rows.append(f"| {name} |" + "".join(f" {_f((ev.get(s) or {}).get(key))} | {_f((ev.get(e) or {}).get(key))} |"
                                            for s, e in labels))
    shares = rep.get("shares") or {}
    for m in (shares.get("start") or {}):
        rows.append(f"| calls to {m} (share) |" + "".join(
            f" {_f((shares.get(s) or {}).get(m))} | {_f((shares.get(e) or {}).get(m))} |" for s, e in labels))
    ref = rep.get("reference")
    head = [f"**router-r1 train**: {rep['steps']} RL steps in {rep['wall_s']:.0f} s."]
    if sft_losses:
        head.append(f"Warm start: {len(sft_losses)} supervised steps, loss {sft_losses[0]:.3f} -> {sft_losses[-1]:.3f}.")
    if ref:
        head.append(f"End: {_f(ref['fraction_of_oracle'])} of the oracle ({_f(ref['oracle'])}); best single model "
                    f"{ref['best_single'][0]} {_f(ref['best_single'][1])}, random {_f(ref['random'])}.")
    return " ".join(head) + "\n\n" + "\n".join(rows) + "\n\nCurves: `training_curves.png`; sample episodes: `samples/`."


def _f(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.2e}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-r1 train", description="Train a router with RL on Ray.")
    p.add_argument("--config", required=True, help="run config YAML, e.g. configs/demo.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    add_overrides_argument(p)
    p.add_argument("--steps", type=int, help="training steps (overrides train.steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(args.set)
        if args.steps is not None:
            overrides["train.steps"] = args.steps
        cfg = load_config(args.config, overrides)
        # Pre-flight, on the driver, before any actor exists: a bad checkpoint is one line now,
        # not an ActorDiedError from the learner 40 s later.
        from router_r1.infra.preflight import check_policy_checkpoint, check_resume

        if cfg.policy.checkpoint:
            check_policy_checkpoint(cfg.policy.checkpoint)
        if args.resume:
            check_resume(Path(cfg.output_dir).resolve())
        report = Trainer(cfg, resume=args.resume, progress=not args.no_progress).run()
    except (CheckpointError, ValueError, FileNotFoundError) as e:  # Ray task errors subclass their cause
        print(f"router-r1 train: {error_line(e)}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
