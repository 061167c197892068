"""The learner: owns the router policy, its frozen reference and (PPO) a value head, and turns
trajectory batches into optimizer steps with GRPO or PPO.

A plain class; the driver applies Ray at the edge: `ray.remote(num_gpus=..., num_cpus=...)(Learner)`.
The maths lives in `router_r1.algos`; this file only batches, schedules and moves weights.

Design choices (why):
- Critic (PPO): a linear value head on the policy's last hidden state, trained jointly with the
  policy through the shared trunk (`value_coef` weighs its loss; `vf_lr` may give it its own
  learning rate), as in TRL's value-head models. It costs one extra matmul, not a second LM; a
  separate critic model would be the choice at scale. GRPO has no head.
- The reference for KL is the policy as it stands at the first RL `update` (after any supervised
  warm start), or when `reset_reference()` is called; it is saved in checkpoints.
- Dropout is switched off: the PPO ratio pi/pi_old must compare the same function, and old
  log-probs are recomputed with the current weights before the epochs.
- The LR schedule steps once per `update` (one driver step); `warmup_steps` and `train.steps`
  are in those units. An update makes ceil(B / (micro_batch_size * grad_accum)) optimizer steps
  per epoch; the loss is the token-mean over each optimizer step's policy tokens.
- Data parallel: with torch.distributed initialised and world_size > 1 the model is wrapped in
  DistributedDataParallel; every learner receives the whole batch, computes GRPO advantages on
  all of it (groups must not be split), then trains on its rank's rows; metrics are averaged.
  Each rank's loss is the token-mean of its own rows and DDP averages gradients, so ranks with
  unequal token counts weigh slightly differently from one big batch; PPO whitens advantages
  per rank.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from router_r1 import algos, checkpoint
from router_r1.batch import TensorBatch, TrajectoryBatch
from router_r1.config import RunConfig
from router_r1.policy import (
    CheckpointError,
    build_tiny_policy,
    load_policy,
    save_policy,
    train_tokenizer,
)


class PolicyWithValue(nn.Module):
    """A causal LM plus an optional value head, evaluated on response tokens only.

    forward -> (logits (B, T, V), values (B, T) or None): the logits that predict each response
    token and the value of the state before it, both read at position response_pos - 1. Only
    those positions go through the LM head, never the whole (B, L, V) slab.
    """

    def __init__(self, lm: nn.Module, with_value: bool):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1) if with_value else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)  # V = 0 at start: no bias before any return is seen
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        h = out.last_hidden_state  # (B, L, H)
        pos = (response_pos - 1).clamp(min=0)  # (B, T): the state that emits response token t
        h = h.gather(1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, T, H)
        logits = self.lm.get_output_embeddings()(h)
        values = self.value_head(h).squeeze(-1).float() if self.value_head is not None else None
        return logits, values


def _disable_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def _enable_checkpointing(lm: nn.Module) -> None:
    """Recompute activations in backward (non-reentrant: works under no_grad scoring and DDP).
    transformers >= 5.x names it activation checkpointing; older releases gradient checkpointing."""
    kw = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    """LR multiplier per driver step: linear warmup to 1, then constant, linear or cosine decay
    to 0 at `total_steps`."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


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


class Learner:
    """See the module docstring. Public methods are what the driver calls over Ray."""

    def __init__(self, cfg: RunConfig, tokenizer_corpus: list[str] | None = None):
        self.cfg = cfg
        lc = cfg.learner
        seed_everything(cfg.seed)
        if lc.torch_threads:
            torch.set_num_threads(lc.torch_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(0)  # Ray exposes the actor's GPU(s) as cuda:0..
        if cfg.policy.checkpoint:
            lm, tok = load_policy(cfg.policy.checkpoint)
        else:
            if not tokenizer_corpus:
                raise ValueError("a tiny policy (no policy.checkpoint) needs tokenizer_corpus to train its tokenizer")
            tok = train_tokenizer(tokenizer_corpus, cfg.policy.tokenizer_vocab_size)
            lm = build_tiny_policy(cfg.policy.tiny, tok, seed=cfg.seed)
        self.tokenizer = tok
        if lc.gradient_checkpointing:
            _enable_checkpointing(lm)
        _disable_dropout(lm)
        torch.manual_seed(cfg.seed + 1)  # value head init, independent of how the LM was built
        self.model = PolicyWithValue(lm, with_value=lc.algorithm == "ppo").to(self.device)
        self.model.train()
        self.reference: PolicyWithValue | None = None

        groups = [{"params": list(self.model.lm.parameters()), "lr": lc.lr}]
        if self.model.value_head is not None:
            groups.append({"params": list(self.model.value_head.parameters()), "lr": lc.vf_lr or lc.lr})
        self.optimizer = torch.optim.AdamW(groups, lr=lc.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(lc.warmup_steps, cfg.train.steps, lc.lr_schedule))
        self.sft_optimizer: torch.optim.Optimizer | None = None
        self.step = 0  # RL updates done
        self.sft_steps = 0
        self.policy_version = 0
        self.rank, self.world_size = 0, 1
        self.ddp: nn.Module | None = None
        if dist.is_initialized() and dist.get_world_size() > 1:
            self._wrap_ddp()
        seed_everything(cfg.seed)

    # ------------------------------------------------------------------ setup and data parallel
    def init_process_group(self, rank: int, world_size: int, master_addr: str | None = None,
                           master_port: int | None = None, init_method: str | None = None) -> None:
        """Join the process group (driver calls this on every learner when num_learners > 1)."""
        init_process_group(rank, world_size, master_addr, master_port, init_method=init_method)
        if world_size > 1:
            self._wrap_ddp()

    def rendezvous_address(self) -> tuple[str, int]:
        """(ip, free port) of this learner's node, for rank 0 to host the process group."""
        import socket

        import ray
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def _wrap_ddp(self) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # The value head gets no gradient in SFT steps, hence find_unused_parameters for PPO.
        self.ddp = DDP(self.model, device_ids=ids, find_unused_parameters=self.model.value_head is not None)

    def _shard(self, n: int) -> list[int]:
        return list(range(self.rank, n, self.world_size))

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: v / self.world_size for k, v in zip(keys, t.tolist())}

    # ------------------------------------------------------------------ tokenizer and weights
    def get_tokenizer(self):
        """The policy's tokenizer object (rollout actors must tokenise exactly as the learner)."""
        return self.tokenizer

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The policy LM's weights on CPU (keys as the transformers model names them)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.lm.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.lm.load_state_dict(state)

    def version(self) -> int:
        """The version of the last published weights (0 before any publish)."""
        return self.policy_version

    def publish_weights(self, version: int | None = None) -> list:
        """Put the policy's CPU state dict into the Ray object store from here and return [ref].

        Weights go learner -> object store -> rollout actors, never through the driver (a ref
        nested in a list is not fetched by the caller's ray.get). Bumps `policy_version` by one,
        or sets it to `version` when the driver numbers versions itself; see `version()`."""
        import ray

        ref = ray.put(self.state_dict())
        self.policy_version = self.policy_version + 1 if version is None else int(version)
        return [ref]

    def reset_reference(self) -> None:
        """Freeze a copy of the current policy as the KL reference."""
        ref = PolicyWithValue(copy.deepcopy(self.model.lm), with_value=False)
        ref.requires_grad_(False)
        ref.eval()
        self.reference = ref.to(self.device)

    # ------------------------------------------------------------------ forward passes
    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cfg.learner.bf16)

    def _forward(self, module: nn.Module, mb: TensorBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logp (b, t), logits (b, t, V) float, values (b, t) or None) for a micro-batch."""
        with self._autocast():
            logits, values = module(mb.input_ids, mb.attention_mask, mb.response_pos)
        logits = logits.float()
        return algos.token_logprobs(logits, mb.response_ids), logits, values

    def _micro_batches(self, rows: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(rows, self.cfg.learner.micro_batch_size))

    @torch.no_grad()
    def _score(self, tb: TensorBatch) -> dict[str, torch.Tensor]:
        """old_logp, ref_logp and (PPO) old_values for every row, (B, T), without gradients."""
        B, T = tb.response_ids.shape
        out = {k: torch.zeros(B, T, device=self.device) for k in ("old_logp", "ref_logp", "old_values")}
        for rows in self._micro_batches(torch.arange(B, device=self.device)):
            mb = tb.select(rows)
            t = mb.response_ids.shape[1]
            logp, _, values = self._forward(self.model, mb)
            out["old_logp"][rows, :t] = logp
            out["ref_logp"][rows, :t] = self._forward(self.reference, mb)[0]
            if values is not None:
                out["old_values"][rows, :t] = values
        return out

    # ------------------------------------------------------------------ training steps
    def sft_step(self, batch: TrajectoryBatch) -> dict[str, float]:
        """One supervised warm-start step: token-mean cross-entropy on policy tokens only
        (inserted information is context, never a target). Own AdamW at `warmstart.lr`."""
        t0 = time.perf_counter()
        ws = self.cfg.warmstart
        if self.sft_optimizer is None:
            self.sft_optimizer = self._new_sft_optimizer()
        lr = ws.lr * lr_lambda(ws.warmup_steps, ws.steps, ws.lr_schedule)(self.sft_steps)
        for group in self.sft_optimizer.param_groups:  # a function of sft_steps: resumes exactly
            group["lr"] = lr
        if self.world_size > 1:
            batch = batch.select(self._shard(len(batch)))
        tb = batch.to_tensors(self.tokenizer.pad_token_id, self.device)
        module = self.ddp or self.model
        total = tb.loss_mask.sum().clamp(min=1)
        self.sft_optimizer.zero_grad(set_to_none=True)
        nll_sum = 0.0
        chunks = self._micro_batches(torch.arange(len(tb), device=self.device))
        for j, rows in enumerate(chunks):
            mb = tb.select(rows)
            with self._no_sync(j < len(chunks) - 1):
                logp, _, _ = self._forward(module, mb)
                nll = -algos.masked_sum(logp, mb.loss_mask) / total
                nll.backward()
            nll_sum += nll.item()
        grad_norm = nn.utils.clip_grad_norm_(self.model.lm.parameters(), self.cfg.learner.grad_clip)
        self.sft_optimizer.step()
        self.sft_steps += 1
        dt = time.perf_counter() - t0
        return self._reduce_metrics({
            "sft/nll": nll_sum, "sft/loss": nll_sum, "sft/lr": lr, "sft/policy_tokens": float(total),
            "learner/grad_norm": float(grad_norm),
            "learner/step_time_s": dt, "learner/tokens_per_s": float(tb.attention_mask.sum()) / dt})

    def _new_sft_optimizer(self) -> torch.optim.Optimizer:
        """The warm start's own AdamW (its lr is set per step from the schedule)."""
        return torch.optim.AdamW(self.model.lm.parameters(), lr=self.cfg.warmstart.lr)

    def _no_sync(self, skip_allreduce: bool):
        """DDP: all-reduce gradients only on the last micro-batch of an optimizer step."""
        if self.ddp is not None and skip_allreduce:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def _advantages(self, tb: TensorBatch, scored: dict[str, torch.Tensor],
                    seq_adv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(advantages (B, T), returns (B, T) or None), zero on non-policy tokens."""
        mask = tb.loss_mask.float()
        lc = self.cfg.learner
        if lc.algorithm == "grpo":
            return seq_adv[:, None] * mask, None
        token_rewards = algos.last_token_rewards(tb.rewards, mask)
        adv, returns = algos.gae_advantages(token_rewards, scored["old_values"], mask, lc.gamma, lc.gae_lambda)
        return algos.masked_whiten(adv, mask), returns

    def update(self, batch: TrajectoryBatch) -> dict[str, float]:
        """One RL step on a batch of trajectories (GRPO or PPO, per `learner.algorithm`):
        score with the current policy and the reference, compute advantages, then `ppo_epochs`
        passes of clipped-surrogate + kl_coef * KL - entropy_coef * entropy (+ value_coef *
        value loss for PPO) with gradient accumulation and clipping; one scheduler step."""
        t0 = time.perf_counter()
        lc = self.cfg.learner
        if self.reference is None:
            self.reset_reference()
        full = batch.to_tensors(self.tokenizer.pad_token_id, self.device)
        # GRPO groups are whole only in the full batch: normalise first, shard after.
        seq_adv = algos.grpo_advantages(full.rewards, full.group_ids) if lc.algorithm == "grpo" else None
        if self.world_size > 1:
            rows = torch.tensor(self._shard(len(full)), device=self.device)
            tb, seq_adv = full.select(rows), (seq_adv[rows] if seq_adv is not None else None)
        else:
            tb = full
        scored = self._score(tb)
        adv, returns = self._advantages(tb, scored, seq_adv)
        mask = tb.loss_mask.float()
        module = self.ddp or self.model
        lr = self.optimizer.param_groups[0]["lr"]

        sums: dict[str, float] = defaultdict(float)
        weight_total = 0.0
        grad_norms: list[float] = []
        B = len(tb)
        mini = lc.micro_batch_size * lc.grad_accum
        for _ in range(lc.ppo_epochs):
            perm = torch.randperm(B).to(self.device)
            for start in range(0, B, mini):
                rows_step = perm[start:start + mini]
                step_tokens = mask[rows_step].sum()
                if step_tokens == 0:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                chunks = self._micro_batches(rows_step)
                for j, rows in enumerate(chunks):
                    mb = tb.select(rows)
                    t = mb.response_ids.shape[1]
                    m = mask[rows, :t]
                    with self._no_sync(j < len(chunks) - 1):
                        logp, logits, values = self._forward(module, mb)
                        pg, metrics = algos.policy_loss(logp, scored["old_logp"][rows, :t], adv[rows, :t], m, lc.clip_eps)
                        kl, kl_metrics = algos.kl_penalty(logp, scored["ref_logp"][rows, :t], m, kind="k3")
                        with torch.set_grad_enabled(lc.entropy_coef > 0):
                            entropy = algos.masked_mean(algos.entropy_from_logits(logits), m)
                        loss = pg + lc.kl_coef * kl - lc.entropy_coef * entropy
                        metrics |= kl_metrics | {"actor/entropy": entropy.item()}
                        if values is not None:
                            vf, vf_metrics = algos.value_loss(values, scored["old_values"][rows, :t],
                                                              returns[rows, :t], m, clip=lc.clip_eps)
                            loss = loss + lc.value_coef * vf
                            metrics |= vf_metrics
                        w = m.sum() / step_tokens  # token-mean over the optimizer step
                        (loss * w).backward()
                    metrics["learner/loss"] = loss.item()
                    wt = float(m.sum())
                    for k, v in metrics.items():
                        sums[k] += v * wt
                    weight_total += wt
                grad_norms.append(float(nn.utils.clip_grad_norm_(self.model.parameters(), lc.grad_clip)))
                self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        dt = time.perf_counter() - t0

        out = {k: v / max(weight_total, 1.0) for k, v in sums.items()}
        ntok = float(tb.attention_mask.sum()) * lc.ppo_epochs
        out |= {
            "learner/step_time_s": dt, "learner/tokens_per_s": ntok / dt, "learner/lr": lr,
            "learner/grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "learner/optimizer_steps": float(len(grad_norms)), "learner/step": float(self.step),
            # Episodes behind the newest weights in the batch (0 when all came from one version).
            "learner/staleness": float(tb.policy_version.max() - tb.policy_version.float().mean()),
            "actor/advantages_mean": algos.masked_mean(adv, mask).item(),
            "actor/response_length": float(tb.response_mask.sum(1).float().mean()),
            "actor/policy_tokens": float(mask.sum(1).mean()),
            "critic/score_mean": float(tb.rewards.mean()),
        }
        if returns is not None:
            out["critic/returns_mean"] = algos.masked_mean(returns, mask).item()
        return self._reduce_metrics(out)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> str:
        """Everything needed to resume exactly: model (+ value head), reference, optimizers,
        scheduler, counters, RNG states; `extra` (JSON: cost-normaliser state, MLflow run id)
        comes back from `load_checkpoint`. Rank 0 writes; others wait."""
        if self.rank == 0:
            objects: dict[str, Any] = {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state()}
            if self.reference is not None:
                objects["reference"] = self.reference.state_dict()
            if self.sft_optimizer is not None:
                objects["sft_optimizer"] = self.sft_optimizer.state_dict()
            meta = {"extra": extra or {}, "algorithm": self.cfg.learner.algorithm, "step": self.step,
                    "sft_steps": self.sft_steps, "policy_version": self.policy_version}
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
        self.model.load_state_dict(objects["model"])
        if "reference" in objects:
            self.reset_reference()
            self.reference.load_state_dict(objects["reference"])
        else:
            self.reference = None
        self.optimizer.load_state_dict(objects["optimizer"])
        self.scheduler.load_state_dict(objects["scheduler"])
        if "sft_optimizer" in objects:
            self.sft_optimizer = self._new_sft_optimizer()
            self.sft_optimizer.load_state_dict(objects["sft_optimizer"])
        self.step, self.sft_steps = int(meta["step"]), int(meta["sft_steps"])
        self.policy_version = int(meta["policy_version"])
        set_rng_state(objects["rng"])
        return meta.get("extra", {})

    def save_policy(self, path: str | Path) -> str:
        """A plain transformers checkpoint (policy + tokenizer) for serving and evaluation,
        loadable by `router_r1.policy.load_policy`, with the prompt options it was trained on."""
        from router_r1.prompt import PromptOptions

        save_policy(self.model.lm, self.tokenizer, path,
                    extra={"step": self.step, "policy_version": self.policy_version,
                           "algorithm": self.cfg.learner.algorithm},
                    prompt_options=PromptOptions.from_policy(self.cfg.policy))
        return str(path)
