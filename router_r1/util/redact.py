"""Keeping secrets out of text that leaves the process: errors, ledger records, logs, MLflow.

`redact` removes every run of 6 or more characters that also occurs in a secret, so a provider
that echoes part of a key (`sk-PROBE-S…`, `sk-abc****wxyz`) leaks nothing either; `mask` is how a
secret is *named* in an error: its first 3 characters and its length, never more.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable

MIN_PART = 6  # any shared run this long counts as a leak
REDACTED = "***"


def mask(secret: str) -> str:
    """'sk-…(40 chars)': enough to recognise which value was meant, too little to use."""
    return f"{secret[:3]!r}…({len(secret)} chars)" if len(secret) >= MIN_PART else "'***'"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every run of >= 6 characters shared with a secret replaced by '***'.
    Secrets shorter than 6 characters are replaced where they occur whole. Linear in `text`
    (one regex scan for the secrets' 6-character pieces), so whole replies can go through it."""
    longs = []
    for s in secrets:
        if not s:
            continue
        if len(s) < MIN_PART:
            text = text.replace(s, REDACTED)
        else:
            longs.append(s)
    if not longs or len(text) < MIN_PART:
        return text
    grams, pattern = _pieces(tuple(sorted(set(longs))))
    spans: list[list[int]] = []  # [start, end) of the runs to hide, merged when they touch
    pos, n = 0, len(text)
    while (m := pattern.search(text, pos)) is not None:
        i = j = m.start()
        while j + 1 <= n - MIN_PART and text[j + 1:j + 1 + MIN_PART] in grams:
            j += 1  # every piece starting inside the run extends it
        if spans and i <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], j + MIN_PART)
        else:
            spans.append([i, j + MIN_PART])
        pos = j + 1
    if not spans:
        return text
    out, end = [], 0
    for a, b in spans:
        out += [text[end:a], REDACTED]
        end = b
    out.append(text[end:])
    return "".join(out)


@functools.lru_cache(maxsize=32)
def _pieces(secrets: tuple[str, ...]) -> tuple[frozenset[str], re.Pattern[str]]:
    grams = frozenset(s[i:i + MIN_PART] for s in secrets for i in range(len(s) - MIN_PART + 1))
    return grams, re.compile("|".join(map(re.escape, sorted(grams))))


def leaks(text: str, secret: str) -> list[str]:
    """The runs of >= 6 characters of `secret` found in `text` (tests grep artifacts with this)."""
    return sorted({secret[i:i + MIN_PART] for i in range(len(secret) - MIN_PART + 1)
                   if secret[i:i + MIN_PART] in text})
