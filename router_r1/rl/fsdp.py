"""FSDP2 for the learner (`learner.sharding: fsdp2`): torch.distributed.fsdp.fully_shard over the
policy, and its full weights gathered one all-gather per bucket (Ray-free).

`shard_policy` makes every decoder layer an FSDP2 unit and the whole model (embeddings, final
norm, LM head, value head) the root unit: each rank keeps 1/N of every weight (dim 0, torch.chunk
layout), and with it 1/N of the gradients (reduce-scattered after each backward) and of AdamW's
state (the optimizer steps the local shards). A unit's weights are all-gathered for its forward
and its backward, one unit at a time (Zhao et al. 2023, "PyTorch FSDP"; FSDP2 is the per-parameter
DTensor rewrite, torch >= 2.4).

`gathered_buckets` is how full weights leave a sharded learner (weight sync, the saved policy, the
KL reference): the state is cut into buckets of about `bucket_bytes` in the target dtype, and each
bucket is one all-gather (`all_gather_single`) of every rank's shards of that bucket, flattened,
cast and padded to the same length (one collective per bucket, not one per tensor). Every rank must walk
the same buckets in the same order; every rank gets the full tensors.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from router_r1.engines import weights


def shard_policy(model: nn.Module, lm: nn.Module) -> None:
    """fully_shard each decoder layer of `lm` (a transformers causal LM inside `model`), then
    `model` itself (the root: what is left). In place: parameters become DTensor shards."""
    from torch.distributed.fsdp import fully_shard

    for layer in lm.base_model.layers:
        fully_shard(layer)
    fully_shard(model)


def unique_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict as its own tensors (parameters as DTensors when sharded), a tensor
    held under two names (tied embeddings) once, under its first name."""
    sd = module.state_dict(keep_vars=True)
    first = _first_names(sd)
    return {k: v for k, v in sd.items() if first[k] == k}  # in state-dict order: the same on every rank


def _first_names(sd: dict[str, torch.Tensor]) -> dict[str, str]:
    """name -> the first name holding the same tensor (itself, unless tied)."""
    first: dict[int, str] = {}
    return {k: first.setdefault(id(v), k) for k, v in sd.items()}


def full_state(module: nn.Module, dtype: torch.dtype, bucket_bytes: int, keep: bool = True) -> dict[str, torch.Tensor]:
    """Every name of `module.state_dict()` with its full tensor on CPU, floating ones in `dtype`,
    gathered bucket by bucket (`gathered_buckets`; a collective). Tied names share one tensor.
    Ranks that pass keep=False take part in the gathers and return {}."""
    sd = module.state_dict(keep_vars=True)
    first = _first_names(sd)
    full: dict[str, torch.Tensor] = {}
    for bucket in gathered_buckets(unique_state(module), dtype, bucket_bytes):
        if keep:
            full.update({k: v.cpu() for k, v in bucket.items()})
    return {k: full[first[k]] for k in sd} if keep else {}


@torch.no_grad()
def gathered_buckets(state: dict[str, torch.Tensor], dtype: torch.dtype, bucket_bytes: int,
                     ) -> Iterator[dict[str, torch.Tensor]]:
    """Full tensors of `state` (unique_state of a sharded module), floating ones cast to `dtype`,
    one bucket at a time: one all-gather per bucket that holds a sharded tensor.
    A collective: every rank calls it with the same state and gets the same buckets."""
    elem = torch.finfo(dtype).bits // 8  # sizes in the target dtype, not the trained one
    for names in weights.bucket_names({k: v.numel() * elem for k, v in state.items()}, bucket_bytes):
        sharded = [k for k in names if isinstance(state[k], DTensor)]
        full = dict(zip(sharded, _all_gather([state[k] for k in sharded], dtype)))
        yield {k: full[k] if k in full else _cast(state[k].detach(), dtype) for k in names}


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def _all_gather(tensors: list[DTensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Full tensors of Shard(0) DTensors over one mesh, in one all-gather: rank r holds rows
    [r*c, (r+1)*c) of each, c = ceil(rows / N) (fewer, or none, at the end), padded to c rows."""
    if not tensors:
        return []
    mesh = tensors[0].device_mesh
    n = mesh.size()
    for t in tensors:
        if t.device_mesh != mesh or tuple(t.placements) != (Shard(0),):
            raise ValueError(f"expected Shard(0) over one mesh, got {t.placements} on {t.device_mesh}")
    widths = [math.ceil(t.shape[0] / n) * math.prod(t.shape[1:]) for t in tensors]  # padded elements per rank
    local = tensors[0].to_local()
    buf = torch.zeros(sum(widths), dtype=dtype, device=local.device)
    off = 0
    for t, w in zip(tensors, widths):
        mine = t.to_local().reshape(-1)
        buf[off:off + mine.numel()].copy_(mine)
        off += w
    out = torch.empty(n * buf.numel(), dtype=dtype, device=buf.device)
    dist.all_gather_single(out, buf, group=mesh.get_group())
    out = out.view(n, -1)
    full, off = [], 0
    for t, w in zip(tensors, widths):
        rows = out[:, off:off + w].reshape(-1, *t.shape[1:])[:t.shape[0]]  # rank 0's rows, then rank 1's, ...
        full.append(rows.clone())
        off += w
    return full
