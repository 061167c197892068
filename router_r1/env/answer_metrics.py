"""Answer scoring: SQuAD-style normalisation, exact match and token F1.

Follows the official SQuAD v1.1 evaluation script (Rajpurkar et al., 2016) as used by
FlashRAG, Search-R1 and Router-R1: lower-case, strip punctuation, drop a/an/the, collapse spaces.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
_EXACT_ONLY = {"yes", "no", "noanswer"}


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str | None, golden_answers: Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    if prediction is None:
        return 0.0
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golden_answers))


def _f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction), normalize_answer(gold)
    # yes/no/noanswer carry no partial credit: they match exactly or score 0.
    if (p in _EXACT_ONLY or g in _EXACT_ONLY) and p != g:
        return 0.0
    pt, gt = p.split(), g.split()
    common = Counter(pt) & Counter(gt)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pt), same / len(gt)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golden_answers: Iterable[str]) -> float:
    """Token F1, best over the gold answers."""
    if prediction is None:
        return 0.0
    return max((_f1(prediction, g) for g in golden_answers), default=0.0)
