"""Observation features: hashed n-grams of the question (and of the last reply), plus descriptors.

Hashed word uni/bigrams and character trigrams (the "hashing trick", Weinberger et al., 2009):
no vocabulary to fit or ship, the same text always maps to the same vector, and an unseen
question still lands in the same space. Each model slot carries its descriptor's price, size and
latency, so a pool file that swaps models changes the observation, not the network's shape.
"""
from __future__ import annotations

import functools
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from router_r1.pool.description_words import description_terms
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec

_WORD = re.compile(r"\w+", re.UNICODE)
DESC_FEATURES = 5  # per model slot: log in-price, log out-price, log size, size known, log latency


@dataclass(frozen=True)
class FeatureSpec:
    question_dim: int = 256
    reply_dim: int = 32
    max_models: int = 12  # action slots; pools up to this size fit one trained router
    desc_dim: int = 0  # hashed description words per slot (0: none, the layout before them)

    @property
    def slot_dim(self) -> int:
        return DESC_FEATURES + self.desc_dim

    @property
    def obs_dim(self) -> int:
        # question, last reply, reply length, called mask, step, descriptors, valid mask
        return (self.question_dim + self.reply_dim + 1 + self.max_models + 1
                + self.max_models * self.slot_dim + self.max_models)

    def to_dict(self) -> dict:
        return asdict(self)


QUESTION_TAIL_CHARS = 1200  # few-shot prompts end with the question asked; the shots are shared


def hash_ngrams(text: str, dim: int, tail: int = QUESTION_TAIL_CHARS) -> np.ndarray:
    """L2-normalised signed counts of hashed word 1-2-grams and character 3-grams of the last
    `tail` characters (RouterBench prompts carry five identical shots before the question)."""
    v = np.zeros(dim, dtype=np.float32)
    if dim == 0 or not text:
        return v
    low = text[-tail:].lower()
    words = _WORD.findall(low)
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    squashed = " ".join(words)
    grams += [f"#{squashed[i:i + 3]}" for i in range(max(0, len(squashed) - 2))]
    return signed_hash(grams, dim)


def signed_hash(terms: Sequence[str], dim: int) -> np.ndarray:
    """L2-normalised signed counts of `terms` hashed into `dim` buckets (crc32: the same text
    always maps to the same vector; the sign bit halves collisions' bias)."""
    v = np.zeros(dim, dtype=np.float32)
    for t in terms if dim else ():
        h = zlib.crc32(t.encode("utf-8"))
        v[h % dim] += 1.0 if (h >> 31) & 1 else -1.0
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


@functools.lru_cache(maxsize=4096)
def description_vector(text: str, dim: int) -> np.ndarray:
    """`signed_hash` of `description_terms` (read-only: cached, since an environment re-reads its
    pool's descriptions every episode)."""
    v = signed_hash(description_terms(text), dim)
    v.flags.writeable = False
    return v


def descriptor_features(m: ModelDescriptor) -> list[float]:
    size = m.params_b
    return [math.log1p(m.price_in), math.log1p(m.price_out),
            math.log1p(size) / 5.0 if size is not None else 0.0, float(size is not None),
            math.log1p(m.latency_s)]


def assign_slots(pool: PoolSpec, spec: FeatureSpec, trained: Sequence[str] = ()
                 ) -> list[ModelDescriptor | None]:
    """Model per action slot. Models the router was trained with keep their training slot (by
    display name); other models (unseen in training) fill the free slots in pool order: first
    the slots of trained models that are absent (a swap inherits the slot), then unused ones."""
    slots: list[ModelDescriptor | None] = [None] * spec.max_models
    index = {n: i for i, n in enumerate(trained)}
    rest = []
    for m in pool.models:
        if m.name in index and index[m.name] < spec.max_models:
            slots[index[m.name]] = m
        else:
            rest.append(m)
    trained_slots = set(index.values())
    free = [i for i, s in enumerate(slots) if s is None and i in trained_slots]
    free += [i for i, s in enumerate(slots) if s is None and i not in trained_slots]
    if len(rest) > len(free):
        raise ValueError(f"pool {pool.name!r} has {len(pool.models)} models; this router has "
                         f"{spec.max_models} slots")
    for i, m in zip(free, rest):
        slots[i] = m
    return slots


def pool_features(slots: Sequence[ModelDescriptor | None], desc_dim: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(descriptor block, valid-slot mask) for the models in their slots: per slot the numeric
    descriptor features, then `desc_dim` hashed description terms."""
    desc = np.zeros((len(slots), DESC_FEATURES + desc_dim), dtype=np.float32)
    valid = np.zeros(len(slots), dtype=np.float32)
    for i, m in enumerate(slots):
        if m is not None:
            desc[i, :DESC_FEATURES] = descriptor_features(m)
            desc[i, DESC_FEATURES:] = description_vector(m.description, desc_dim)
            valid[i] = 1.0
    return desc.reshape(-1), valid


def observation(spec: FeatureSpec, question_vec: np.ndarray, reply_text: str | None, called: np.ndarray,
                step: int, max_calls: int, pool_block: tuple[np.ndarray, np.ndarray],
                reply_vec: np.ndarray | None = None) -> np.ndarray:
    """The flat observation vector (layout: see FeatureSpec.obs_dim)."""
    if reply_vec is None:
        reply_vec = hash_ngrams(reply_text or "", spec.reply_dim)
    rlen = math.log1p(len(reply_text)) / 10.0 if reply_text else 0.0
    return np.concatenate([question_vec, reply_vec, [rlen], called, [step / max(1, max_calls)],
                           pool_block[0], pool_block[1]]).astype(np.float32)
