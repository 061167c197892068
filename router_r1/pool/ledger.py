"""The billing ledger: one record per call, plus one per failed attempt a provider billed.

Durability, in two layers:
- every record is appended to a write-ahead log (`wal-<writer>-<seq>.jsonl`, one `os.write` per
  record) before the call returns, so a record the caller saw survives the process being killed;
- every `flush_every` records, and on `flush()`/`close()`, the batch becomes a Parquet part file
  (`part-<writer>-<seq>.parquet`, written under a temp name then renamed, so a crash never leaves a
  half file) and its WAL segment is deleted.

Ahead of both, each attempt's *intent* is fsync'd to the writer's intent journal before the
attempt leaves the pool (`intents.py`: one append per event-loop tick for all its intents).

`Ledger.rebuild(dir)` (after a restart) reads all parts, turns WAL segments of dead writers into
parts, recomputes the totals, and reconciles dead writers' intents: an attempt with an intent but
no outcome is billed at its capped cost (a record of kind "attempt", status "outcome_unknown").
A live writer holds an flock on its WAL and journal, so a rebuild never steals a segment still
being written. Records carry a unique `record_id`; reading de-duplicates on it, which covers a
crash between writing a part and deleting its WAL. Parts are fsync'd before they replace a WAL.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from router_r1.pool import intents as _intents

SCHEMA = pa.schema([
    ("record_id", pa.string()),
    ("time", pa.float64()),  # unix seconds when the call ended
    ("kind", pa.string()),  # "call" | "attempt" (a billed failed attempt, or one whose outcome was lost)
    ("run_id", pa.string()),
    ("episode_id", pa.string()),
    ("tenant", pa.string()),
    ("model", pa.string()),  # the model billed (the fallback, when one answered)
    ("requested_model", pa.string()),  # the name the caller asked for
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("price_in", pa.float64()),  # USD per 1M tokens
    ("price_out", pa.float64()),
    ("cost_usd", pa.float64()),
    ("latency_s", pa.float64()),
    ("status", pa.string()),  # a CallStatus value, or "outcome_unknown" (billed at the capped cost)
    ("attempts", pa.int64()),
    ("cache_hit", pa.bool_()),
    ("error", pa.string()),  # redacted: never any part of a key
    ("idempotency_key", pa.string()),  # sent with every attempt of the call (retries share it)
    ("anomaly", pa.string()),  # e.g. provider usage above what the call allows, and what was billed
    ("end_user", pa.string()),  # the tenant's end user, when the caller named one (Serve: `user`)
])
FIELDS = SCHEMA.names
_FIELD_SET = frozenset(FIELDS)
_DEFAULTS: dict[str, Any] = {"kind": "call", "run_id": "", "episode_id": "", "tenant": "",
                             "model": "", "requested_model": "", "prompt_tokens": 0,
                             "completion_tokens": 0, "price_in": 0.0, "price_out": 0.0,
                             "cost_usd": 0.0, "latency_s": 0.0, "status": "ok", "attempts": 0,
                             "cache_hit": False, "error": None, "idempotency_key": None,
                             "anomaly": None, "end_user": None}
_NAME = re.compile(r"^(part|wal)-([0-9a-f]+)-(\d+)\.(parquet|jsonl)$")
BY = ("model", "tenant", "run_id")


class Totals:
    """Running sums per model / tenant / run: calls, tokens, cost."""

    def __init__(self) -> None:
        self._t: dict[str, dict[str, dict[str, float]]] = {
            by: defaultdict(lambda: {"calls": 0, "attempt_records": 0, "prompt_tokens": 0,
                                     "completion_tokens": 0, "cost_usd": 0.0}) for by in BY}

    def add(self, r: dict[str, Any]) -> None:
        for by in BY:
            t = self._t[by][r[by]]
            t["calls" if r["kind"] == "call" else "attempt_records"] += 1
            t["prompt_tokens"] += r["prompt_tokens"]
            t["completion_tokens"] += r["completion_tokens"]
            t["cost_usd"] += r["cost_usd"]

    def get(self, by: str) -> dict[str, dict[str, float]]:
        if by not in self._t:
            raise ValueError(f"totals by {by!r}: choose one of {BY}")
        return {k: dict(v) for k, v in self._t[by].items()}


def _read_wal(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line from a crash mid-write
            continue
    return out


def read_records(directory: str | Path) -> list[dict[str, Any]]:
    """Every record in a ledger folder (parts and WAL segments), de-duplicated, in time order."""
    d = Path(directory)
    seen: dict[str, dict[str, Any]] = {}
    if not d.is_dir():
        return []
    for p in sorted(d.glob("part-*.parquet")):
        for r in pq.read_table(p, schema=SCHEMA).to_pylist():
            seen[r["record_id"]] = r
    for p in sorted(d.glob("wal-*.jsonl")):
        for r in _read_wal(p):
            seen.setdefault(r["record_id"], r)
    return sorted(seen.values(), key=lambda r: r["time"])


class Ledger:
    def __init__(self, directory: str | Path | None, flush_every: int = 256, *, fsync_intents: bool = True):
        """`directory` None keeps records in memory only (tests, benchmarks of the logic), and
        keeps no intent journal (`journal` is None). `fsync_intents` False: intents are written
        but not fsync'd (they survive the process being killed, not the machine losing power)."""
        self.dir = None if directory is None else Path(directory)
        self.flush_every = max(1, flush_every)
        self.writer = uuid.uuid4().hex[:12]
        self.totals = Totals()
        self.records_written = 0
        self.reconciled: list[dict[str, Any]] = []  # outcome_unknown records made by `rebuild`
        self._count = 0
        self._buffer: list[dict[str, Any]] = []
        self._seq = 0
        self._wal_fd: int | None = None
        self.journal: _intents.IntentJournal | None = None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._open_wal()
            pa.Table.from_pylist([], schema=SCHEMA)  # pyarrow's lazy setup (~0.1 s) now, not mid-run
            self.journal = _intents.IntentJournal(self.dir, self.writer, fsync=fsync_intents,
                                                  before_drop=self.sync)

    @classmethod
    def rebuild(cls, directory: str | Path, flush_every: int = 256, **kw: Any) -> "Ledger":
        """A ledger on an existing folder: dead writers' WALs recovered, totals recomputed, and
        dead writers' intents without an outcome billed at their capped cost (`reconciled`)."""
        led = cls(directory, flush_every, **kw)
        assert led.dir is not None
        for wal in sorted(led.dir.glob("wal-*.jsonl")):
            m = _NAME.match(wal.name)
            if not m or m.group(2) == led.writer or _intents.locked_by_other(wal):
                continue
            part = led.dir / f"part-{m.group(2)}-{m.group(3)}.parquet"
            if not part.exists():
                led._write_part(part, _read_wal(wal))
            wal.unlink()
        journals = _intents.dead_journals(led.dir, led.writer)
        records = read_records(led.dir)
        for r in records:
            led.totals.add(r)
        if journals:
            paths = [p for ps in journals.values() for p in ps]
            pending, resolved = _intents.read_journal(paths)
            for intent in _intents.unresolved(pending, resolved, records):
                led.reconciled.append(led.record(**_intents.outcome_unknown_record(intent)))
            led.sync()  # the bills are durable before the intents that justify them go
            for p in paths:
                p.unlink(missing_ok=True)
        return led

    # -- writing -------------------------------------------------------------------------------
    def _wal_path(self, seq: int) -> Path:
        assert self.dir is not None
        return self.dir / f"wal-{self.writer}-{seq:06d}.jsonl"

    def _open_wal(self) -> None:
        self._wal_fd = os.open(self._wal_path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self._wal_fd, fcntl.LOCK_EX)

    def record(self, **fields: Any) -> dict[str, Any]:
        """Append one record (durable on return when the ledger has a folder). Returns it."""
        if not _FIELD_SET.issuperset(fields):
            raise ValueError(f"unknown ledger fields {sorted(set(fields) - _FIELD_SET)}")
        r = {**_DEFAULTS, **fields}
        if "record_id" not in r:  # unique: a random writer id plus this writer's counter
            self._count += 1
            r["record_id"] = f"{self.writer}-{self._count}"
        r.setdefault("time", time.time())
        if self._wal_fd is not None:
            os.write(self._wal_fd, (json.dumps(r, separators=(",", ":")) + "\n").encode())
        self._buffer.append(r)
        self.totals.add(r)
        if len(self._buffer) >= self.flush_every:
            self.flush()
        return r

    def _write_part(self, path: Path, records: list[dict[str, Any]]) -> None:
        tmp = path.with_name("." + path.name + ".tmp")
        table = pa.table({n: [r.get(n) for r in records] for n in FIELDS}, schema=SCHEMA)
        pq.write_table(table, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before the WAL segment it replaces is deleted
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def sync(self) -> None:
        """fsync the current WAL segment (records are otherwise durable against a killed
        process, not against the machine losing power)."""
        if self._wal_fd is not None:
            os.fsync(self._wal_fd)

    def find_calls(self, call_ids: list[str], since: float) -> dict[str, list[dict[str, Any]]] | None:
        """Records whose idempotency key belongs to one of `call_ids` ("<call_id>.<n>"), from
        parts modified after `since` (unix time; a record is never older than its call) and every
        WAL segment. None without a folder: an in-memory ledger cannot answer for lost calls."""
        if self.dir is None:
            return None
        want = set(call_ids)
        out: dict[str, list[dict[str, Any]]] = {c: [] for c in want}
        cols = ["record_id", "kind", "status", "cost_usd", "idempotency_key", "attempts"]
        seen: set[str] = set()

        def take(r: dict[str, Any]) -> None:
            k = r.get("idempotency_key")
            if k and r["record_id"] not in seen:
                cid = k.rsplit(".", 1)[0]
                if cid in want:
                    seen.add(r["record_id"])
                    out[cid].append({c: r.get(c) for c in cols})

        for p in sorted(self.dir.glob("part-*.parquet")):
            try:
                if p.stat().st_mtime < since:
                    continue
                rows = pq.read_table(p, columns=cols).to_pylist()
            except FileNotFoundError:
                continue
            for r in rows:
                take(r)
        for p in sorted(self.dir.glob("wal-*.jsonl")):
            try:
                rows = _read_wal(p)
            except FileNotFoundError:
                continue
            for r in rows:
                take(r)
        return out

    def flush(self) -> None:
        """Turn the buffered records into one Parquet part and start a new WAL segment."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        self.records_written += len(batch)
        if self.dir is None:
            return
        seq = self._seq
        self._write_part(self.dir / f"part-{self.writer}-{seq:06d}.parquet", batch)
        old_fd = self._wal_fd
        self._seq += 1
        self._open_wal()
        if old_fd is not None:
            os.close(old_fd)
        self._wal_path(seq).unlink(missing_ok=True)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        self.flush()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
            self._wal_path(self._seq).unlink(missing_ok=True)  # empty: everything is in parts
