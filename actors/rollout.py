"""Rollout actor: plays batches of multi-round episodes with the current policy.

Each worker holds a copy of the router policy behind a generation engine (transformers `generate`
on CPU/GPU, or vLLM on a GPU) and plays episodes with the core's episode machine, one batched
generation per turn across every live episode, calling candidate models through the shared
ModelPool. Weights arrive from the learner through the object store: the learner puts its state
dict once, every worker gets the same refs (`set_weights`). Each episode is stamped with the
policy version it was generated with.

Plain class; `ray.remote` is applied at the edge (`RolloutActor`, `rollout_actor_options`), so the
worker runs in-process in tests. A restarted actor comes back with fresh (version -1) weights;
the driver re-syncs it before re-issuing its episodes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from router_r1.engines.hf import HFGenerator
from router_r1.engines.model import build_tiny_policy, dtype_name, load_policy, load_tokenizer, resolve_dtype
from router_r1.engines.weights import unique_tensors
from router_r1.env.episode import Episode, run_episodes
from router_r1.env.prompt import render_prompt_ids
from router_r1.infra.config import RunConfig
from router_r1.rl.batch import TrajectoryBatch
from router_r1.worlds.base import Item, world_class

log = logging.getLogger(__name__)



def make_vllm_engine(cfg: RunConfig, tokenizer=None, seed: int = 0):
    """A vLLM engine in the policy dtype that starts from in-memory weights, never a weight file.

    With `policy.checkpoint` vLLM reads the folder's config and tokenizer and starts with dummy
    weights: the learner's arrive with the first sync (`set_weights`, before any rollout). A
    tiny policy built from config is built here on CPU (the learner's initial weights), its
    config and tokenizer alone go to a temp folder for vLLM to read, the weights are loaded in
    memory with `load_buckets`, and the folder is removed."""
    from router_r1.engines.vllm import VLLMGenerator

    r = cfg.rollout
    dtype = resolve_dtype(cfg.policy.dtype, cfg.policy.checkpoint)
    kw = dict(seed=seed, dtype=dtype_name(dtype), gpu_memory_utilization=r.gpu_memory_utilization,
              tensor_parallel_size=r.tensor_parallel_size, max_model_len=r.max_model_len, load_format="dummy")
    if cfg.policy.checkpoint:
        return VLLMGenerator(cfg.policy.checkpoint, **kw)
    if tokenizer is None:
        raise ValueError("a vLLM engine for a tiny policy needs the learner's tokenizer")
    model = build_tiny_policy(cfg.policy.tiny.model_dump(), tokenizer, seed=cfg.seed, dtype=dtype)
    folder = Path(tempfile.mkdtemp(prefix="router_r1_vllm_"))
    try:
        model.config.save_pretrained(folder)
        cfg_file = folder / "config.json"  # vLLM reads the architecture and sizes; dtype is passed
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "dtype": dtype_name(dtype)}))
        tokenizer.save_pretrained(folder)
        engine = VLLMGenerator(folder, **kw)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    engine.load_buckets([unique_tensors(model.state_dict())])
    return engine


class RolloutWorker:
    """Generates episodes for a list of questions. See the module docstring."""

    def __init__(self, cfg: RunConfig, tokenizer=None, pool: Any = None, worker_index: int = 0,
                 run_id: str = "run"):
        """`tokenizer`: the learner's tokenizer (a tiny policy is rebuilt around it from
        cfg.policy.tiny); ignored when cfg.policy.checkpoint is set. `pool`: a ModelPool actor
        handle or an in-process PoolCore, anything `PoolClient` accepts."""
        from actors.model_pool import PoolClient  # Ray-side import, kept out of module import

        self.cfg, self.index = cfg, worker_index
        # The training view: models unseen in training are neither in the prompt nor callable
        # (the episode machine answers a route to one with unknown_model).
        self.spec = cfg.load_pool().seen()
        self.prompt_options = cfg.prompt_options()  # those the learner saves with the policy
        if cfg.rollout.torch_threads:
            torch.set_num_threads(cfg.rollout.torch_threads)
        device = "cuda" if cfg.rollout.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        dtype = resolve_dtype(cfg.policy.dtype, cfg.policy.checkpoint)  # the learner publishes in it
        if not cfg.policy.checkpoint and tokenizer is None:
            raise ValueError("a rollout worker needs cfg.policy.checkpoint or the learner's tokenizer")
        if cfg.rollout.engine == "vllm":
            self.tokenizer = load_tokenizer(cfg.policy.checkpoint) if cfg.policy.checkpoint else tokenizer
            self.engine = make_vllm_engine(cfg, tokenizer, seed=cfg.seed + worker_index)
        elif cfg.rollout.engine == "transformers":
            if cfg.policy.checkpoint:
                model, tok = load_policy(cfg.policy.checkpoint, device=device, dtype=dtype)
            else:
                tok = tokenizer
                model = build_tiny_policy(cfg.policy.tiny.model_dump(), tok, seed=cfg.seed, dtype=dtype).to(device)
            model.eval()
            self.tokenizer = tok
            self.engine = HFGenerator(model, tok, device=device)
        else:
            raise ValueError(f"unknown rollout engine {cfg.rollout.engine!r}; choose 'transformers' or 'vllm'")
        self.version = -1
        self.client = PoolClient(pool, run_id=run_id) if pool is not None else None
        self.route_calls = world_class(cfg.data).route_calls  # per class: no world data loaded here

    # -- weights -------------------------------------------------------------------------------
    def set_weights(self, refs: Sequence[Any], version: int) -> float:
        """Load the learner's published weight buckets (ObjectRefs, or the dicts themselves
        in-process) into the engine in place, bucket by bucket. Returns the seconds it took."""
        t0 = time.perf_counter()
        self.engine.load_buckets(_resolve(refs))
        self.version = int(version)
        return time.perf_counter() - t0

    def get_version(self) -> int:
        return self.version

    # -- rollouts ------------------------------------------------------------------------------
    def prompt_ids(self, question: str, history: Sequence[dict[str, str]] = ()) -> tuple[str, list[int]]:
        """(text, ids) of the prompt an episode of `question` starts from (router_r1.env.prompt.render_prompt_ids
        with the options the learner saves with the policy); `history`: the turns before it (a
        follow-up's), rendered as Serve renders a request's conversation."""
        return render_prompt_ids(self.tokenizer, self.spec, question, self.prompt_options, history)

    def rollout(self, items: Sequence[Item], n_samples: int = 1, seed: int = 0,
                greedy: bool = False) -> list[Episode]:
        """Play `n_samples` episodes per item to the end. Sampling is seeded per turn from `seed`,
        so the same weights, items and seed give the same episodes."""
        if self.client is None:
            raise RuntimeError("this rollout worker was built without a model pool")
        rendered: dict[tuple, tuple[str, list[int]]] = {}  # once per question and history
        prompts = []
        for it in items:
            key = (it["question"], *((t["role"], t["content"]) for t in it.get("history", ())))
            if key not in rendered:
                rendered[key] = self.prompt_ids(it["question"], it.get("history", ()))
            prompts.append(rendered[key])
        episodes = [Episode(uid=f"{it['id']}#{k}", question=it["question"],
                            golden_answers=list(it["golden_answers"]), prompt=text, prompt_ids=list(ids),
                            history=list(it.get("history", [])), policy_version=self.version,
                            meta={"group": str(it["id"]), "sample": k})
                    for it, (text, ids) in zip(items, prompts) for k in range(n_samples)]
        ep_cfg = self.cfg.episode
        turn = 0

        def generate(contexts: list[list[int]]):
            nonlocal turn
            turn += 1
            # softmax(logits / temperature): what the learner scores (RunConfig.check_training
            # refuses top_p < 1 for training). One seed per turn: distinct across the turns and
            # the workers of a step (worker i plays `seed + i`; turns < 1009), and the vLLM
            # engine derives a distinct seed per row from it (engines.vllm.row_seeds), so no two
            # samples of a step share a seed.
            return self.engine.generate(contexts, max_new_tokens=ep_cfg.max_new_tokens,
                                        temperature=0.0 if greedy else ep_cfg.temperature,
                                        top_p=ep_cfg.top_p, seed=seed * 1009 + turn)

        # The world's rule for routed calls (replay: each answers the sample's own question).
        call = self.route_calls(self.client.call, episodes)
        t0 = time.perf_counter()
        asyncio.run(run_episodes(episodes, generate, call, ep_cfg, self.spec, self.tokenizer,
                                 pass_episode_id=True, max_context=self.engine.max_context,
                                 batch_wait_s=self.cfg.rollout.batch_wait_s))
        wall = time.perf_counter() - t0
        for e in episodes:
            e.meta.update(worker=self.index, rollout_wall_s=wall)
        return episodes

    def encode_traces(self, traces: Sequence[Episode], max_response_tokens: int | None = None) -> TrajectoryBatch:
        """Warm-start demonstrations (text written by a world, never sampled) as a batch, encoded
        here with the policy's tokenizer so that the driver never tokenises. A trace without prompt
        ids gets the prompt rollouts render (chat template, question tail), so supervised and RL
        steps condition on the same prompt. A trace that carries its own pool (`Episode.pool`: a
        synthetic pool, router_r1.worlds.sim.synthetic) is rendered over that pool, with the same
        options; one with a history (a follow-up) with its history."""
        for e in traces:
            if not e.prompt_ids:
                e.prompt, e.prompt_ids = render_prompt_ids(self.tokenizer, e.pool or self.spec, e.question,
                                                           self.prompt_options, e.history)
        return TrajectoryBatch.from_traces(traces, self.tokenizer, max_response_tokens)


def _resolve(refs: Sequence[Any]) -> list[dict]:
    """ObjectRefs -> values with one `ray.get` (never in a loop); plain dicts pass through."""
    if refs and not isinstance(refs[0], dict):
        import ray

        return ray.get(list(refs))
    return list(refs)


def rollout_actor_options(cfg: RunConfig) -> dict[str, Any]:
    """Ray options for one rollout actor, from cfg.rollout, spread over nodes. Tasks are not retried by Ray: the
    driver re-issues a dead actor's episodes itself after re-syncing its weights."""
    r = cfg.rollout
    # SPREAD: one actor per node while nodes last, so rollouts scale out (and one lost node
    # costs one actor's share) instead of packing onto the first node that fits.
    return {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "resources": dict(r.resources) or None,
            "max_restarts": r.max_restarts, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}


def make_rollout_actor():
    import ray

    return ray.remote(RolloutWorker)


@dataclass
class PendingRollout:
    """A rollout in flight: what was asked, the weights it was submitted with (kept alive, so a
    restarted worker can get them again) and the actor tasks still out."""

    n_items: int
    n_samples: int
    seed: int
    greedy: bool
    chunks: list[list[Item]]
    refs: list[Any]
    version: int
    tasks: dict[Any, int] = field(default_factory=dict)


class RolloutGroup:
    """The driver's view of its rollout actors: one weight sync for all, one rollout spread over
    all, and recovery when an actor dies.

    Ray restarts a dead actor (`max_restarts`), but the new instance has no weights: whatever it
    was doing fails with RayActorError, and anything it answers with the wrong policy version
    was generated by fresh random weights. Either way its weights are re-sent and its share is
    re-issued. After `max_restarts` failures of one slot, the slot gets a brand-new actor.
    """

    def __init__(self, make_worker: Callable[[int], Any], size: int, max_restarts: int):
        self.make_worker, self.max_restarts = make_worker, max_restarts
        self.workers = [make_worker(i) for i in range(size)]
        self.refs: list[Any] = []
        self.version = -1
        self.restarts = 0
        self._failures = [0] * size

    def sync(self, refs: list[Any], version: int, wait: bool = True) -> None:
        """Every worker loads the weights behind `refs` (one ray.put by the learner, many gets).
        `wait=False` (rollouts ahead of the learner): the loads queue behind each worker's
        rollouts in flight, which keep the weights they were submitted with."""
        self.refs, self.version = refs, version
        if wait:
            self._gather({w.set_weights.remote(refs, version): i for i, w in enumerate(self.workers)},
                         lambda i: self.workers[i].set_weights.remote(self.refs, self.version))
        else:  # a failed load shows as a dead or stale worker in the next `collect`
            for w in self.workers:
                w.set_weights.remote(refs, version)

    def submit(self, items: Sequence[Item], n_samples: int, seed: int, greedy: bool = False) -> PendingRollout:
        """Start a rollout with the weights synced last: `items` dealt round-robin over the workers
        (worker i: seed + i). `collect` waits for it."""
        k = len(self.workers)
        chunks = [list(items[i::k]) for i in range(k)]
        p = PendingRollout(len(items), n_samples, seed, greedy, chunks, self.refs, self.version)
        p.tasks = {self._submit_chunk(p, i): i for i in range(k) if chunks[i]}
        return p

    def collect(self, p: PendingRollout) -> list[Episode]:
        """The episodes of a submitted rollout in item order, each item's `n_samples` adjacent. A
        dead or restarted worker gets the rollout's own weights again and its chunk re-issued, so
        the episodes are those of the weights the rollout was submitted with."""

        def resubmit(i: int):
            # Calls to one actor run in order: the weights land before the re-issued rollout.
            self.workers[i].set_weights.remote(p.refs, p.version)
            return self._submit_chunk(p, i)

        results = self._gather(p.tasks, resubmit, check=lambda eps: all(e.policy_version == p.version for e in eps))
        k = len(self.workers)
        out: list[Episode] = []
        for j in range(p.n_items):
            start = (j // k) * p.n_samples
            out.extend(results[j % k][start:start + p.n_samples])
        return out

    def rollout(self, items: Sequence[Item], n_samples: int, seed: int, greedy: bool = False) -> list[Episode]:
        """`submit` then `collect`: a rollout with the weights synced last."""
        return self.collect(self.submit(items, n_samples, seed, greedy))

    def _submit_chunk(self, p: PendingRollout, i: int):
        return self.workers[i].rollout.remote(p.chunks[i], p.n_samples, p.seed + i, p.greedy)

    def _gather(self, pending: dict[Any, int], resubmit: Callable[[int], Any],
                check: Callable[[Any], bool] | None = None) -> dict[int, Any]:
        """Wait for every task (ray.wait, never ray.get in a loop); re-issue a dead worker's."""
        import ray
        from ray.exceptions import RayActorError

        done: dict[int, Any] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                value = ray.get(ready[0])
                if check is None or check(value):
                    done[i] = value
                    continue
                reason = "answered with stale weights (restarted)"
            except RayActorError as e:
                reason = f"died ({type(e).__name__})"
            self._recover(i, reason)
            pending[resubmit(i)] = i
        return done

    def _recover(self, i: int, reason: str) -> None:
        self.restarts += 1
        self._failures[i] += 1
        log.warning("rollout worker %d %s; re-sending weights and re-issuing its work", i, reason)
        if self._failures[i] > self.max_restarts:  # Ray will not restart it again
            self.workers[i] = self.make_worker(i)
            self._failures[i] = 0

    def kill(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
