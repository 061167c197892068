"""The learner actor: owns the router policy (router_r1.rl.policy_model), its frozen reference and
(PPO) a value head, and turns trajectory batches into optimizer steps with GRPO or PPO.

A plain class; the driver applies Ray at the edge: `ray.remote(num_gpus=..., num_cpus=...)(Learner)`.
The rest is Ray-free: the model and its forward in `rl/policy_model.py`, float32 log-probs in
`rl/logprobs.py`, losses in `rl/algos.py` and `rl/update.py`, the LR schedule in `rl/schedule.py`,
seeding in `infra/seeding.py`. This file wires the optimizers, the process group and the steps.

Design choices (why):
- The reference for KL is the policy as it stands at the first RL `update` (after any supervised
  warm start), or when `reset_reference()` is called; it is saved in checkpoints. It is frozen
  (no grads, eval mode, never in an optimizer) and held in `policy.dtype`; with `kl_coef` 0 it
  is never built, and `actor/kl` is not logged.
- Precision: the policy's weights are in `policy.dtype` (default: the checkpoint's own). With
  `learner.master_dtype: float32` the learner trains float32 master weights (AdamW state float32
  too) under autocast to the policy dtype, and publishes and saves them cast to the policy dtype;
  otherwise weights and optimizer state are in the policy dtype. The value head stays float32.
  Log-probs and entropy are float32, `learner.logprob_chunk` tokens at a time (no full-vocabulary
  float32 tensor); the entropy carries a gradient only when `entropy_coef` > 0.
- The LR schedule steps once per `update` (one driver step); `warmup_steps` and `train.steps`
  are in those units. An update makes ceil(B / (micro_batch_size * grad_accum)) optimizer steps
  per epoch over a random permutation of the rows; each step's loss aggregates its policy
  tokens per `learner.loss_agg` (algos.loss_weights), exactly however the step is cut. SFT and
  RL share one micro-step (`_micro_steps`).
- Sampled as scored: RL log-probs, the reference's and the entropy come from logits divided by
  `episode.temperature`, the temperature the rollouts sample with (`RunConfig.check_training`
  refuses top-p, which the learner cannot score). The old log-probs, recomputed before the first
  optimizer step, are the learner's log-probs at the sampler's weights: their distance to the
  sampler's own (`rollout/logp_diff_mean`, `_max`) measures rollout/learner mismatch. Supervised
  warm-start steps fit the plain (temperature 1) distribution.
- Data parallel (`learner.num_learners`, actors/learner_group.py): with torch.distributed
  initialised and world_size > 1 the model is wrapped in DistributedDataParallel. Every learner
  receives the whole batch and the update is the one learner's: each rank scores every
  world_size-th row and the scores are summed over ranks, so advantages (GRPO groups, PPO's GAE
  and whitening) are computed on the whole batch on every rank; every rank draws the same
  permutation and trains on every world_size-th row of each optimizer step in the same number of
  micro-batches (`rl/update.py:rank_micro_batches`; a rank with no row left runs a zero-loss pass,
  so DDP's all-reduce pairs up), with the step's global loss weights times world_size, as DDP
  averages gradients. Metrics are summed over ranks, so they are the one learner's too.
- Sharding (`learner.sharding`, docs/cluster.md): "zero1" keeps each rank's share of AdamW's state
  only (ZeroRedundancyOptimizer); "fsdp2" shards weights, gradients and AdamW state too
  (fully_shard, rl/fsdp.py). Under FSDP2 rank 0's weights are broadcast before sharding (DDP does
  that itself), gradients are reduce-scattered after every micro-batch (no no_sync: accumulated
  gradients stay sharded), every rank runs the same forwards, scoring's included, and full
  weights (weight sync, `state_dict`, the saved policy, the KL reference, which stays whole on
  every rank) are gathered one all-gather per bucket, by every rank together.
"""
from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from router_r1.engines import weights
from router_r1.engines.model import CheckpointError, resolve_dtype, save_policy
from router_r1.infra import checkpoint
from router_r1.infra.config import RunConfig
from router_r1.infra.seeding import rng_state, seed_everything, set_rng_state
from router_r1.rl import algos, fsdp, logprobs
from router_r1.rl.batch import TensorBatch, TrajectoryBatch
from router_r1.rl.policy_model import (PolicyWithValue, autocast_for, frozen_reference, load_or_build_policy,
                                      prepare_for_training, response_logprobs, zero_backward)
from router_r1.rl.schedule import lr_lambda
from router_r1.rl.update import (LossFn, StepTensors, UpdateMetrics, advantages, batch_metrics,
                                    optimizer_steps, rank_micro_batches, rl_loss)


def init_process_group(rank: int, world_size: int, master_addr: str | None = None,
                       master_port: int | None = None, backend: str | None = None, *,
                       init_method: str | None = None, timeout_s: float = 300.0) -> None:
    """Join the learners' torch.distributed group: nccl on CUDA, gloo on CPU. Rendezvous at
    tcp://master_addr:master_port unless `init_method` says otherwise (e.g. a file:// store);
    a group that cannot form fails after `timeout_s` instead of waiting torch's 30 minutes."""
    if dist.is_initialized():
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, init_method=init_method or f"tcp://{master_addr}:{master_port}",
                            rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))


def _to_policy(t: torch.Tensor, dtype: torch.dtype, device: str) -> torch.Tensor:
    """A copy of a weight tensor on `device`, floating-point ones in the policy dtype."""
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=True)


class Learner:
    """See the module docstring. Public methods are what the driver calls over Ray."""

    def __init__(self, cfg: RunConfig, tokenizer_corpus: list[str] | None = None):
        cfg.check_training()
        self.cfg = cfg
        lc = cfg.learner
        seed_everything(cfg.seed)
        if lc.torch_threads:
            torch.set_num_threads(lc.torch_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(0)  # Ray exposes the actor's GPU(s) as cuda:0..
        self.dtype = resolve_dtype(cfg.policy.dtype, cfg.policy.checkpoint)  # the policy's
        self.train_dtype = torch.float32 if lc.master_dtype == "float32" else self.dtype
        self._autocast = autocast_for(self.device.type, lc.bf16, self.train_dtype, self.dtype)
        lm, self.tokenizer = load_or_build_policy(cfg.policy, self.dtype, cfg.seed, tokenizer_corpus)
        lm = lm.to(self.train_dtype)  # master weights start as the policy's values, exactly
        prepare_for_training(lm, activation_checkpointing=lc.gradient_checkpointing)
        torch.manual_seed(cfg.seed + 1)  # value head init, independent of how the LM was built
        # Not under FSDP2: the prefix's extra trunk call would gather each layer twice on some
        # ranks only, and every rank must run every all-gather.
        self.model = PolicyWithValue(lm, with_value=lc.algorithm == "ppo",
                                     share_prefix=lc.share_prefix and not lc.gradient_checkpointing
                                     and lc.sharding != "fsdp2").to(self.device)
        self.model.train()
        self.reference: PolicyWithValue | None = None

        self.rank, self.world_size = 0, 1
        self._new_optimizer()
        self.sft_optimizer: torch.optim.Optimizer | None = None
        self.step = 0  # RL updates done
        self.sft_steps = 0
        self.policy_version = 0
        self.ddp: nn.Module | None = None
        self.fsdp = False  # the model sharded in place (learner.sharding: fsdp2 over several ranks)
        self._reference_module: PolicyWithValue | None = None  # FSDP2: the reference, refilled by reset_reference
        if dist.is_initialized() and dist.get_world_size() > 1:
            self._wrap_data_parallel()
        seed_everything(cfg.seed)

    # ------------------------------------------------------------------ setup and data parallel
    def init_process_group(self, rank: int, world_size: int, master_addr: str | None = None,
                           master_port: int | None = None, init_method: str | None = None) -> None:
        """Join the process group (driver calls this on every learner when num_learners > 1)."""
        init_process_group(rank, world_size, master_addr, master_port, init_method=init_method)
        if world_size > 1:
            self._wrap_data_parallel()

    def write_storage_token(self, folder: str, token: str) -> tuple[str, str]:
        """Write `token` to a file of this rank's in `folder` (the driver's shared-storage check,
        router_r1.infra.preflight.check_shared_output_dir); returns (path, this node's IP)."""
        import ray

        path = Path(folder) / f"{token}.rank{self.rank}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
        return str(path), ray.util.get_node_ip_address()

    def rendezvous_address(self) -> tuple[str, int]:
        """(ip, free port) of this learner's node, for rank 0 to host the process group."""
        import socket

        import ray
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def _new_optimizer(self) -> None:
        """AdamW over the LM (and value head, at `vf_lr`) and its LR schedule. With
        `learner.sharding: zero1` and several ranks: torch's ZeroRedundancyOptimizer, each rank
        keeping AdamW state for its shard of the parameters only and broadcasting its updated
        shard after each step (ZeRO stage 1; the update equals the unsharded one)."""
        lc = self.cfg.learner
        groups = [{"params": list(self.model.lm.parameters()), "lr": lc.lr}]
        if self.model.value_head is not None:
            groups.append({"params": list(self.model.value_head.parameters()), "lr": lc.vf_lr or lc.lr})
        if lc.sharding == "zero1" and self.world_size > 1:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            self.optimizer = ZeroRedundancyOptimizer(groups[0]["params"], optimizer_class=torch.optim.AdamW, lr=lc.lr)
            for g in groups[1:]:
                self.optimizer.add_param_group(g)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=lc.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(lc.warmup_steps, self.cfg.train.steps, lc.lr_schedule))

    def _wrap_data_parallel(self) -> None:
        """Several ranks: DDP around the model (ZeRO-1: the optimizer remade over the group), or
        with `learner.sharding: fsdp2` the model sharded in place (router_r1.rl.fsdp) after taking
        rank 0's weights, and the optimizer remade over the shards. Before any step."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        lc = self.cfg.learner
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if lc.sharding == "fsdp2":
            for t in self.model.state_dict().values():  # DDP broadcasts rank 0's weights; fully_shard does not
                dist.broadcast(t, src=0)
            if lc.kl_coef != 0:  # the reference stays whole; made now, while there is a whole model to copy
                self._reference_module = frozen_reference(self.model.lm, self.dtype, self.device, lc.share_prefix)
            fsdp.shard_policy(self.model, self.model.lm)
            self.fsdp = True
            self._new_optimizer()
            return
        if lc.sharding == "zero1":  # the group now exists to shard over
            self._new_optimizer()
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # The value head gets no gradient in SFT steps, hence find_unused_parameters for PPO.
        # Gradients as views into DDP's all-reduce buckets: no second, bucketed copy of them.
        self.ddp = DDP(self.model, device_ids=ids, find_unused_parameters=self.model.value_head is not None,
                       gradient_as_bucket_view=True)

    def _sum_over_ranks(self, sums: dict[str, float]) -> dict[str, float]:
        """Each key summed over ranks (every rank passes the same keys)."""
        if self.world_size == 1:
            return dict(sums)
        keys = sorted(sums)
        t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def _shared_generator(self) -> torch.Generator:
        """A generator seeded from rank 0's torch RNG, the same on every rank. That RNG state is
        checkpointed, so a resumed run draws what the uninterrupted one would have."""
        seed = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64)
        if self.world_size > 1:
            seed = seed.to(self.device)
            dist.broadcast(seed, src=0)
        return torch.Generator().manual_seed(int(seed.item()))

    # ------------------------------------------------------------------ tokenizer and weights
    def get_tokenizer(self):
        """The policy's tokenizer object (rollout actors must tokenise exactly as the learner)."""
        return self.tokenizer

    @property
    def _bucket_bytes(self) -> int:
        return int(self.cfg.learner.sync_bucket_mb * weights.MB)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The policy LM's weights on CPU in the policy dtype (keys as the transformers model
        names them). FSDP2: gathered bucket by bucket, a collective ({} on ranks other than 0)."""
        if self.fsdp:
            return fsdp.full_state(self.model.lm, self.dtype, self._bucket_bytes, keep=self.rank == 0)
        return {k: _to_policy(v.detach(), self.dtype, "cpu") for k, v in self.model.lm.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy `state` (names as `state_dict`'s) into the learner's weights, in its own dtype."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model.lm, state, options=StateDictOptions(full_state_dict=True))
        else:
            self.model.lm.load_state_dict(state)

    def version(self) -> int:
        """The version of the last published weights (0 before any publish)."""
        return self.policy_version

    def publish_weights(self) -> list:
        """Put the policy's weights, in the policy dtype and in buckets of about
        `learner.sync_bucket_mb` (router_r1.engines.weights), into the Ray object store from here;
        return one ref per bucket. Tied tensors travel once.

        Weights go learner -> object store -> rollout actors, never through the driver (refs
        nested in a list are not fetched by the caller's ray.get). Bumps `policy_version` by one;
        see `version()`.
        `last_publish()` gives the bytes, buckets and seconds of this publish. FSDP2: a collective
        (every rank gathers each bucket once); ranks other than 0 return []."""
        import ray

        t0 = time.perf_counter()
        if self.fsdp:  # every rank gathers, one all-gather per bucket; rank 0 puts
            refs, nbytes, n = [], 0, 0
            for bucket in fsdp.gathered_buckets(fsdp.unique_state(self.model.lm), self.dtype, self._bucket_bytes):
                n, nbytes = n + 1, nbytes + weights.nbytes(bucket)
                if self.rank == 0:
                    refs.append(ray.put({k: v.cpu() for k, v in bucket.items()}))
        else:
            state = {k: _to_policy(v.detach(), self.dtype, "cpu")
                     for k, v in weights.unique_tensors(self.model.lm.state_dict()).items()}
            buckets = weights.bucket_state_dict(state, self._bucket_bytes)
            refs, nbytes, n = [ray.put(b) for b in buckets], weights.nbytes(state), len(buckets)
        self.policy_version += 1
        self._last_publish = {"sync/bytes": float(nbytes), "sync/buckets": float(n),
                              "sync/publish_s": time.perf_counter() - t0}
        return refs

    def last_publish(self) -> dict[str, float]:
        """sync/bytes, sync/buckets and sync/publish_s (cast + put) of the last publish_weights."""
        return dict(getattr(self, "_last_publish", {}))

    def reset_reference(self) -> None:
        """Freeze a copy of the current policy, in the policy dtype, as the KL reference: no
        grads, eval mode, in no optimizer. None when kl_coef is 0 (nothing would read it)."""
        if self.cfg.learner.kl_coef == 0:
            self.reference = None
            return
        if self.fsdp:  # the policy's full weights, gathered bucket by bucket into the whole reference
            ref = self._reference_module
            weights.copy_into(ref.lm, fsdp.gathered_buckets(fsdp.unique_state(self.model.lm), self.dtype,
                                                            self._bucket_bytes))
            self.reference = ref
            return
        self.reference = frozen_reference(self.model.lm, self.dtype, self.device, self.cfg.learner.share_prefix)

    # ------------------------------------------------------------------ forward passes
    def _forward(self, module: nn.Module, mb: TensorBatch, temperature: float = 1.0,
                 entropy: logprobs.EntropyMode = None,
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(logp, entropy or None, values or None), each (b, t): policy_model.response_logprobs
        at this learner's precision and `learner.logprob_chunk`."""
        return response_logprobs(module, mb, temperature, entropy=entropy, chunk=self.cfg.learner.logprob_chunk,
                                 autocast=self._autocast)

    @torch.no_grad()
    def _logprobs_before_update(self, tb: TensorBatch) -> dict[str, torch.Tensor]:
        """old_logp, ref_logp and (PPO) old_values for every row, (B, T), without gradients.
        With several ranks each scores every world_size-th row and the (B, T) results, zero on
        the others' rows, are summed over ranks: every rank ends with all of them."""
        B, T = tb.response_ids.shape
        temp = self.cfg.episode.temperature
        out = torch.zeros(3, B, T, device=self.device)  # old_logp, ref_logp, old_values
        rows_all = torch.arange(B, device=self.device)
        for rows in rank_micro_batches(rows_all, self.rank, self.world_size, self.cfg.learner.micro_batch_size):
            if len(rows) == 0:
                if self.fsdp:  # every rank runs every layer's all-gather
                    self._forward(self.model, tb.select([0]), temp)
                continue
            mb = tb.select(rows)
            t = mb.response_ids.shape[1]
            logp, _, values = self._forward(self.model, mb, temp)
            out[0, rows, :t] = logp
            if self.reference is not None:
                out[1, rows, :t] = self._forward(self.reference, mb, temp)[0]
            if values is not None:
                out[2, rows, :t] = values
        if self.world_size > 1:
            dist.all_reduce(out)
        return {"old_logp": out[0], "ref_logp": out[1], "old_values": out[2]}

    # ------------------------------------------------------------------ training steps
    def sft_step(self, batch: TrajectoryBatch) -> dict[str, float]:
        """One supervised warm-start step: token-mean cross-entropy on policy tokens only
        (inserted information is context, never a target). Own AdamW at `warmstart.lr`. With
        several ranks each takes every world_size-th row and divides by the whole batch's token
        count: the step is the one learner's."""
        t0 = time.perf_counter()
        ws = self.cfg.warmstart
        if self.sft_optimizer is None:
            self.sft_optimizer = self._new_sft_optimizer()
        lr = ws.lr * lr_lambda(ws.warmup_steps, ws.steps, ws.lr_schedule)(self.sft_steps)
        for group in self.sft_optimizer.param_groups:  # a function of sft_steps: resumes exactly
            group["lr"] = lr
        tb = batch.to_tensors(self.tokenizer.pad_token_id, self.device)
        total = tb.loss_mask.sum().clamp(min=1)  # the whole batch's: every rank has it

        def nll_loss(rows, mb, logp, entropy, values):
            nll = -algos.masked_sum(logp, mb.loss_mask) / total
            return nll, {"nll": nll.item()}

        self.sft_optimizer.zero_grad(set_to_none=True)
        parts = self._micro_steps(tb, torch.arange(len(tb), device=self.device), nll_loss, with_values=False)
        nll_sum = self._sum_over_ranks({"nll": sum(p["nll"] for p in parts)})["nll"]
        grad_norm = self._clip_grads(self.model.lm.parameters())
        self.sft_optimizer.step()
        self.sft_steps += 1
        dt = time.perf_counter() - t0
        return {"sft/nll": nll_sum, "sft/lr": lr, "sft/policy_tokens": float(total),
                "learner/grad_norm": float(grad_norm),
                "learner/step_time_s": dt, "learner/tokens_per_s": float(tb.attention_mask.sum()) / dt}

    def _micro_steps(self, tb: TensorBatch, rows: torch.Tensor, loss_fn: LossFn, *, with_values: bool,
                     temperature: float = 1.0, entropy: logprobs.EntropyMode = None) -> list[dict[str, float]]:
        """The micro-step of SFT and RL alike, over one optimizer step's `rows` (row indices of
        the whole batch, the same on every rank): for each of this rank's micro-batches
        (`rank_micro_batches`) a forward (`_forward`), `loss_fn(rows, mb, logp, entropy, values)
        -> (loss, metrics)` with the loss already the step's global share, and a backward of
        loss x world_size (DDP averages gradients over ranks). Gradients are all-reduced on the
        last micro-batch only; a rank with no row left in one runs a zero pass (`zero_backward`,
        the value head included when `with_values`). Returns the real micro-batches' metrics."""
        module = self.ddp or self.model
        micro_batches = rank_micro_batches(rows, self.rank, self.world_size, self.cfg.learner.micro_batch_size)
        out = []
        for j, mine in enumerate(micro_batches):
            skip_allreduce = self.ddp is not None and j < len(micro_batches) - 1
            with self.ddp.no_sync() if skip_allreduce else contextlib.nullcontext():
                if len(mine) == 0:
                    zero_backward(module, tb.select([0]), with_values, self._autocast)
                    continue
                mb = tb.select(mine)
                logp, ent, values = self._forward(module, mb, temperature, entropy)
                loss, metrics = loss_fn(mine, mb, logp, ent, values)
                (loss * self.world_size).backward()  # DDP averages gradients over ranks
            out.append(metrics)
        return out

    def _clip_grads(self, params) -> float:
        """Clip the gradients' global norm to `learner.grad_clip`; the norm before clipping (FSDP2:
        over every rank's shards)."""
        norm = nn.utils.clip_grad_norm_(params, self.cfg.learner.grad_clip)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def _new_sft_optimizer(self) -> torch.optim.Optimizer:
        """The warm start's own AdamW (its lr is set per step from the schedule)."""
        return torch.optim.AdamW(self.model.lm.parameters(), lr=self.cfg.warmstart.lr)

    def update(self, batch: TrajectoryBatch) -> dict[str, float]:
        """One RL step on a batch of trajectories (GRPO or PPO, per `learner.algorithm`):
        score with the current policy and the reference, compute advantages, then `ppo_epochs`
        passes of clipped-surrogate + kl_coef * KL - entropy_coef * entropy (+ value_coef *
        value loss for PPO), each term aggregated per `loss_agg`, with gradient accumulation and
        clipping; one scheduler step. Every rank is given the whole batch (module docstring)."""
        t0 = time.perf_counter()
        lc = self.cfg.learner
        if self.reference is None and lc.kl_coef != 0:
            self.reset_reference()
        tb = batch.to_tensors(self.tokenizer.pad_token_id, self.device)
        scored = self._logprobs_before_update(tb)
        adv, returns = advantages(tb, scored["old_values"], lc)
        st = StepTensors(scored["old_logp"], scored["ref_logp"] if self.reference is not None else None,
                         scored["old_values"], adv, returns, tb.loss_mask.float())
        # Rows sampled by weights older than the ones this update starts from (rollouts ahead of the
        # learner, rollout.max_staleness): decoupled PPO, weighted by pi_prox / mu (algos.behaviour_weights).
        stale = tb.policy_version < self.policy_version
        behaviour: dict[str, float] = {}
        if bool(stale.any()) and batch.sampler_logprobs:
            st.behaviour_w, behaviour = algos.behaviour_weights(scored["old_logp"], tb.sampler_logp, st.mask,
                                                                stale, lc.behaviour_is_cap)
        lr = self.optimizer.param_groups[0]["lr"]
        acc = UpdateMetrics(with_kl=self.reference is not None, with_critic=returns is not None)

        def loss_fn(rows, mb, logp, entropy, values):
            return rl_loss(rows, logp, entropy, values, st, lc)

        entropy = "grad" if lc.entropy_coef > 0 else "value"  # logged either way; a gradient only if used
        grad_norms: list[float] = []
        for rows_step, weights in optimizer_steps(st.mask, lc, self._shared_generator()):
            st.weights = weights  # loss_fn reads them
            self.optimizer.zero_grad(set_to_none=True)
            for metrics in self._micro_steps(tb, rows_step, loss_fn, with_values=True,
                                             temperature=self.cfg.episode.temperature, entropy=entropy):
                acc.add(metrics)
            grad_norms.append(self._clip_grads(self.model.parameters()))
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        sums = self._sum_over_ranks(acc.sums)
        dt = time.perf_counter() - t0
        ntok = float(tb.attention_mask.sum()) * lc.ppo_epochs
        return acc.result(sums, len(grad_norms)) | {
            "learner/step_time_s": dt, "learner/tokens_per_s": ntok / dt, "learner/lr": lr,
            "learner/grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "learner/optimizer_steps": float(len(grad_norms)), "learner/step": float(self.step),
        } | batch_metrics(tb, adv, returns, scored["old_logp"], bool(batch.sampler_logprobs)) | behaviour

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> str:
        """Everything needed to resume exactly: model (+ value head), reference, optimizers,
        scheduler, counters, RNG states; `extra` (JSON: cost-normaliser state, MLflow run id)
        comes back from `load_checkpoint`. `train.checkpoint_optimizer` / `checkpoint_reference`
        false leave the optimizers / the reference out (smaller, not bit-exact on resume).
        Rank 0 writes; others wait. ZeRO-1 and FSDP2 gather the whole state on rank 0 first (the
        same model file either way; FSDP2's optimizer state is keyed by parameter name)."""
        tc = self.cfg.train
        optimizers = {"optimizer": self.optimizer, "sft_optimizer": self.sft_optimizer} if tc.checkpoint_optimizer else {}
        optimizers = {k: o for k, o in optimizers.items() if o is not None}
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            to_rank0 = StateDictOptions(full_state_dict=True, cpu_offload=True)  # others get {}
            model_state = get_model_state_dict(self.model, options=to_rank0)
            optimizer_states = {k: get_optimizer_state_dict(self.model, o, options=to_rank0) for k, o in optimizers.items()}
        else:
            if "optimizer" in optimizers and hasattr(self.optimizer, "consolidate_state_dict"):
                self.optimizer.consolidate_state_dict(to=0)  # ZeRO: every rank sends its shard to rank 0
            model_state = self.model.state_dict() if self.rank == 0 else {}
            optimizer_states = {k: o.state_dict() for k, o in optimizers.items()} if self.rank == 0 else {}
        if self.rank == 0:
            objects: dict[str, Any] = {"model": model_state, "scheduler": self.scheduler.state_dict(),
                                       "rng": rng_state(), **optimizer_states}
            if self.reference is not None and tc.checkpoint_reference:
                objects["reference"] = self.reference.state_dict()
            meta = {"extra": extra or {}, "algorithm": self.cfg.learner.algorithm, "step": self.step,
                    "sft_steps": self.sft_steps, "policy_version": self.policy_version,
                    "fsdp2": self.fsdp}
            checkpoint.save(path, objects, step=self.step, meta=meta)
        if self.world_size > 1:
            dist.barrier()
        return str(path)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore a `save_checkpoint` folder (verified first); returns its `extra`."""
        objects, _, meta = checkpoint.load(path, map_location="cpu")
        if meta.get("algorithm") != self.cfg.learner.algorithm:
            raise CheckpointError(f"{path}: written by a {meta.get('algorithm')} learner, "
                                  f"this one runs {self.cfg.learner.algorithm}")
        if bool(meta.get("fsdp2")) != self.fsdp and any(k in objects for k in ("optimizer", "sft_optimizer")):
            raise CheckpointError(f"{path}: its optimizer state was written by a "
                                  f"{'' if meta.get('fsdp2') else 'non-'}FSDP2 learner; resume with the same "
                                  "learner.sharding and several learners, or from a checkpoint without it "
                                  "(train.checkpoint_optimizer: false)")
        if self.fsdp:  # every rank reads the whole state and keeps its shards
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, objects["model"], options=StateDictOptions(full_state_dict=True))
        else:
            self.model.load_state_dict(objects["model"])
        self.reference = None  # none saved: the next update takes the resumed policy (if kl_coef > 0)
        if "reference" in objects:
            self.reset_reference()
            if self.reference is not None:
                self.reference.load_state_dict(objects["reference"])
        if "optimizer" in objects:  # else AdamW restarts from zero moments
            self._load_optimizer(self.optimizer, objects["optimizer"])
        self.scheduler.load_state_dict(objects["scheduler"])
        if "sft_optimizer" in objects:
            self.sft_optimizer = self._new_sft_optimizer()
            self._load_optimizer(self.sft_optimizer, objects["sft_optimizer"])
        self.step, self.sft_steps = int(meta["step"]), int(meta["sft_steps"])
        self.policy_version = int(meta["policy_version"])
        set_rng_state(objects["rng"])
        return meta.get("extra", {})

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """A checkpoint's optimizer state into `optimizer`; FSDP2: the whole state, keyed by
        parameter name, of which each rank keeps its shards."""
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # It makes a fresh optimizer's state with one zero-gradient step, which it takes only when
        # no gradient is left over from an earlier step.
        self.model.zero_grad(set_to_none=True)
        set_optimizer_state_dict(self.model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def save_policy(self, path: str | Path) -> str:
        """A plain transformers checkpoint (policy + tokenizer) for serving and evaluation,
        loadable by `router_r1.engines.model.load_policy`, with the prompt options it was trained on.
        FSDP2: a collective (the weights gathered bucket by bucket); rank 0 writes."""
        state = fsdp.full_state(self.model.lm, self.dtype, self._bucket_bytes, keep=self.rank == 0) if self.fsdp else None
        if self.rank == 0:
            save_policy(self.model.lm, self.tokenizer, path,
                        extra={"step": self.step, "policy_version": self.policy_version,
                               "algorithm": self.cfg.learner.algorithm},
                        prompt_options=self.cfg.prompt_options(), dtype=self.dtype, state=state)
        return str(path)
