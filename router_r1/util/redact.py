"""Keeping secrets out of text that leaves the process: errors, ledger records, logs, MLflow.

`redact` removes every run of 6 or more characters that also occurs in a secret, so a provider
that echoes part of a key (`sk-PROBE-S…`, `sk-abc****wxyz`) leaks nothing either; `mask` is how a
secret is *named* in an error: its first 3 characters and its length, never more.
"""
from __future__ import annotations

from collections.abc import Iterable

MIN_PART = 6  # any shared run this long counts as a leak
REDACTED = "***"


def mask(secret: str) -> str:
    """'sk-…(40 chars)': enough to recognise which value was meant, too little to use."""
    return f"{secret[:3]!r}…({len(secret)} chars)" if len(secret) >= MIN_PART else "'***'"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every run of >= 6 characters shared with a secret replaced by '***'.
    Secrets shorter than 6 characters are replaced where they occur whole."""
    grams: set[str] = set()
    for s in secrets:
        if not s:
            continue
        if len(s) < MIN_PART:
            text = text.replace(s, REDACTED)
        else:
            grams.update(s[i:i + MIN_PART] for i in range(len(s) - MIN_PART + 1))
    if not grams or len(text) < MIN_PART:
        return text
    hit = [False] * len(text)
    for i in range(len(text) - MIN_PART + 1):
        if text[i:i + MIN_PART] in grams:
            for j in range(i, i + MIN_PART):
                hit[j] = True
    if not any(hit):
        return text
    out, i = [], 0
    while i < len(text):
        if hit[i]:
            while i < len(text) and hit[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def leaks(text: str, secret: str) -> list[str]:
    """The runs of >= 6 characters of `secret` found in `text` (tests grep artifacts with this)."""
    return sorted({secret[i:i + MIN_PART] for i in range(len(secret) - MIN_PART + 1)
                   if secret[i:i + MIN_PART] in text})
