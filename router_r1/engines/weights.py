"""Weights in transit: a state dict cut into buckets of bounded size, one object-store ref each.

The learner publishes its weights in the policy dtype as a list of buckets (`bucket_state_dict`);
every rollout engine loads them bucket by bucket into its own tensors, in place (`HFGenerator`:
`copy_` into its parameters; vLLM: the model's `load_weights` in every worker), so neither side
ever holds a second full copy on disk or in one message. A tensor that aliases another one (tied
input/output embeddings) is sent once: loading it in place fills both names.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

MB = 2 ** 20


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without names whose tensor shares storage with an earlier name (tied weights)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def bucket_names(sizes: dict[str, int], bucket_bytes: int) -> list[list[str]]:
    """Consecutive names of `sizes` (name -> bytes) in buckets of at most `bucket_bytes` each; a
    single tensor larger than that is a bucket of its own (tensors are never split)."""
    if bucket_bytes <= 0:
        raise ValueError("bucket_bytes must be positive")
    buckets: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for k, n in sizes.items():
        if cur and size + n > bucket_bytes:
            buckets.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += n
    if cur:
        buckets.append(cur)
    return buckets


def bucket_state_dict(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[dict[str, torch.Tensor]]:
    """`state` cut into buckets of consecutive names, at most `bucket_bytes` each (`bucket_names`)."""
    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}
    return [{k: state[k] for k in names} for names in bucket_names(sizes, bucket_bytes)]


@torch.no_grad()
def copy_into(model: torch.nn.Module, buckets: Iterable[dict[str, torch.Tensor]]) -> int:
    """Copy each bucket's tensors into `model`'s own parameters and buffers, in place; returns
    the number of names loaded. An unknown name or a shape mismatch is an error (a policy of
    another architecture), never silently skipped."""
    own = model.state_dict(keep_vars=True)
    n = 0
    for bucket in buckets:
        for k, v in bucket.items():
            if k not in own:
                raise KeyError(f"weight {k!r} is not a parameter of the rollout model")
            dst = own[k]
            if dst.shape != v.shape:
                raise ValueError(f"weight {k!r}: shape {tuple(v.shape)} != the model's {tuple(dst.shape)}")
            dst.copy_(v)
            n += 1
    return n
