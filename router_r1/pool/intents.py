"""Write-ahead intents: every attempt is on disk before it leaves the pool.

Before an attempt is sent, the pool appends one *intent* line to its writer's journal
(`intent-<writer>-<seq>.jsonl` in the ledger folder): the attempt's idempotency key and number,
the accounts it draws on, the model and its *capped cost* (what the attempt can cost at most:
the sent text's byte bound and `max_tokens`, priced). The attempt waits until its line is
written (`os.write`: the kernel has it, so a killed pool process loses nothing). With
`intent_fsync: true` it waits until the line is fsync'd too (it then survives a power loss): the
intents of one event-loop tick share one append and one fsync (group commit, as a database
commits): the first intent of a tick leads, yields once so that the tick's other intents join,
then writes and fsyncs them all (see `IntentJournal`).

An attempt's *outcome* is the ledger record it ends in: the call's record (kind "call", same
idempotency key: the call ended, every attempt of that key is accounted for) or a billed
attempt's record (kind "attempt", same key and attempt number). An attempt that failed unbilled
(a 500, a timeout) or was abandoned (deadline, caller gone) has no record of its own: the pool
appends a *resolved* line for it to the journal instead (no fsync: losing one only overbills).

Only attempts a provider outside the process may bill get intents (`ModelBackend.billed_remotely`:
the OpenAI-compatible HTTP backend); the simulator, replay and in-process engines do not.

Reconciling (`Ledger.rebuild`, when a pool starts, with `dead_journals`, `read_journal` and
`unresolved` below) bills every intent of a dead writer that has no outcome at its capped cost,
as a ledger record of kind "attempt" with status "outcome_unknown", then deletes that writer's
journal. A crash at any point therefore never
undercounts: an attempt is either not on disk (and was not sent), or has an outcome, or is
billed at the most it can cost.

A live writer holds an flock on each of its journal segments, so a rebuild by another pool on
the same folder never reconciles attempts still in flight. Segments rotate at `segment_bytes`;
an old segment is deleted once every intent in it has an outcome (after an fsync of the
writer's ledger WAL, so the outcomes are as durable as the intents were).
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from router_r1.pool.types import CallStatus

_NAME = re.compile(r"^intent-([0-9a-f]+)-(\d+)\.jsonl$")
# An fsync this fast runs on the event loop (blocking it that long once per tick beats handing off
# to a thread, which must then win the busy loop's GIL twice); a slower disk's on the helper thread.
INLINE_FSYNC_S = 0.5e-3
# The fields of an intent line that become the ledger record of an unresolved attempt.
INTENT_FIELDS = ("run_id", "episode_id", "tenant", "model", "requested_model", "prompt_tokens",
                 "completion_tokens", "price_in", "price_out", "cost_usd")


def journal_path(directory: Path, writer: str, seq: int) -> Path:
    return directory / f"intent-{writer}-{seq:06d}.jsonl"


class IntentJournal:
    """One writer's journal. `intend` (awaited before an attempt leaves) is durable on return;
    `resolve` / `resolve_key` say an attempt has an outcome.

    Group commit: the first intent of a tick becomes the *leader*: it yields once (`sleep(0)`),
    so that every intent queued in this tick joins, appends them all with one `os.write` on the
    event loop (the page cache: a killed process loses nothing from here on), then one
    `fdatasync`: on the loop while the disk's recent fsyncs take under `INLINE_FSYNC_S` (0.5 ms),
    else on a helper thread, so that a slow disk never blocks the loop for long. The others
    yield once too, behind the leader: on a fast disk they find their line durable in the same
    next iteration, so each intent costs one loop iteration and a share of one fsync. Intents
    queued during a threaded fsync go out together as soon as it is done: at most one fsync is
    in flight, and there are never more fsyncs per second than the disk can do.
    (`intent_fsync: false` skips the fsync: intents then survive a killed process, not a power
    loss.) All file work but the fsync runs on the loop, so no descriptor is closed under the
    helper thread: a segment is dropped only while no fsync is in flight."""

    def __init__(self, directory: str | Path, writer: str, *, fsync: bool = True,
                 segment_bytes: int = 4 << 20, before_drop: Callable[[], None] | None = None):
        self.dir, self.writer, self.fsync = Path(directory), writer, fsync
        self.segment_bytes = segment_bytes
        self._before_drop = before_drop  # makes the ledger's outcome records durable
        self._seq = 0
        self._size = 0  # bytes queued for the current segment
        self._fds: dict[int, int] = {}  # open (locked) segments
        self._open: dict[tuple[str, int], int] = {}  # unresolved intent -> its segment
        self._by_key: dict[str, list[int]] = {}  # idempotency key -> its unresolved attempt numbers
        self._unresolved: dict[int, int] = {0: 0}  # per segment
        self._ops: list[Any] = []  # bytes to append, or ("rotate", seq) / ("drop", seq)
        self._queued = 0  # intents queued so far (a counter: intent i is durable once _durable >= i)
        self._durable = 0
        self._failed: list[tuple[int, int, BaseException]] = []  # (first, last, error) of failed commits
        self._leader = False  # an intent is waiting to commit this tick's group
        self._syncing = False  # an fsync is in flight on the helper thread
        self._unsynced: set[int] = set()  # segments written since their last fsync
        self._waiters: list[asyncio.Future] = []  # intents waiting for the commit in flight
        self._flush_scheduled = False
        self._closed = False
        self.commits = 0  # group commits done (for tests and benchmarks)
        self.waits: deque[float] = deque(maxlen=4096)  # seconds the last intents waited to be durable
        self.fsync_s = 0.0  # recent fsync time (moving average): under INLINE_FSYNC_S it runs on the loop
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="intent-fsync") if fsync else None
        self._open_segment(0)

    # -- the event loop's side ---------------------------------------------------------------
    async def intend(self, key: str, attempt: int, fields: dict[str, Any]) -> None:
        """Append this attempt's intent; return once it is on disk (fsync'd)."""
        if self._closed:  # the pool is closing: the attempt is not sent
            raise OSError("intent journal is closed")
        line = json.dumps({"k": key, "n": attempt, **fields}, separators=(",", ":")) + "\n"
        self._queue(line.encode())  # first: it may start a new segment, which this intent is in
        self._open[(key, attempt)] = self._seq
        self._by_key.setdefault(key, []).append(attempt)
        self._unresolved[self._seq] += 1
        self._queued += 1
        mine = self._queued
        t0 = time.perf_counter()
        if not self.fsync and not self._syncing and not self._leader:
            # Written now, not fsync'd: a killed process loses nothing, and no loop iteration
            # is spent waiting for a group (the fsync is what a group shares).
            self._commit_on_loop()
        waited = False
        while self._durable < mine:
            if self._syncing:  # an fsync in flight on the helper thread: the next group forms
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                await fut
                waited = True
                continue
            if self._leader:  # it commits first thing next iteration, before we look again
                await asyncio.sleep(0)
                continue
            if not waited:  # (a group that formed during the last fsync goes at once)
                self._leader = True
                try:
                    await asyncio.sleep(0)  # this tick's other intents join the group
                except BaseException:  # cancelled: another waiter leads instead
                    self._leader = False
                    self._wake()
                    raise
                self._leader = False
            if self._durable < mine and not self._syncing:
                await self._commit_durable()
        self.waits.append(time.perf_counter() - t0)
        for first, last, err in self._failed:
            if first <= mine <= last:
                raise OSError(f"intent journal write failed: {err}")

    def resolve(self, key: str, attempt: int, how: str | None) -> None:
        """An attempt ended. `how` None: its ledger record is written (a billed attempt);
        otherwise it has no record of its own (failed unbilled, abandoned): say so on disk."""
        if self._forget(key, attempt) and how is not None:
            self._queue((json.dumps({"k": key, "n": attempt, "resolved": how}, separators=(",", ":"))
                         + "\n").encode())
            self._kick()

    def resolve_key(self, key: str) -> None:
        """Every open attempt of `key` has an outcome in the ledger (the call's record)."""
        for n in list(self._by_key.get(key, ())):
            self._forget(key, n)

    @property
    def open_intents(self) -> int:
        return len(self._open)

    def _forget(self, key: str, attempt: int) -> bool:
        seq = self._open.pop((key, attempt), None)
        if seq is None:
            return False
        ns = self._by_key.get(key)
        if ns is not None:
            ns.remove(attempt)
            if not ns:
                del self._by_key[key]
        self._unresolved[seq] -= 1
        if self._unresolved[seq] == 0 and seq != self._seq:
            del self._unresolved[seq]
            self._ops.append(("drop", seq))
            self._kick()
        return True

    def _queue(self, data: bytes) -> None:
        if self._size >= self.segment_bytes and not self._closed:
            self._seq += 1
            self._size = 0
            self._unresolved[self._seq] = 0
            self._ops.append(("rotate", self._seq))
            if self._unresolved[self._seq - 1] == 0:
                del self._unresolved[self._seq - 1]
                self._ops.append(("drop", self._seq - 1))
        self._size += len(data)
        self._ops.append(data)

    def _kick(self) -> None:
        """Lines without a waiter (resolved lines, drops) go out at the end of the tick, unsynced."""
        if self._flush_scheduled or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): write now
            if not self._syncing:
                self._write(self._ops)
                self._ops = []
            return
        self._flush_scheduled = True
        loop.call_soon(self._deferred)

    def _deferred(self) -> None:
        self._flush_scheduled = False
        if not self._ops or self._closed or self._leader or self._syncing:
            return  # the next commit writes them
        if self._queued > self._durable:  # intents whose leader was cancelled: commit them properly
            asyncio.ensure_future(self._commit_durable())
        else:
            self._write(self._ops)
            self._ops = []

    def _write(self, ops: list[Any]) -> None:
        try:
            self._run_ops(ops)
        except OSError:  # resolved lines or a drop lost: at worst an attempt billed at its cap
            pass

    def _commit_on_loop(self) -> tuple[int, list[int]]:
        """Write every queued op on the loop, and fsync the written segments there too when the
        disk is fast (none without `fsync`). Returns the last intent covered and the segments
        still to fsync on the helper thread; with none left the commit is finished here."""
        self._syncing = True
        ops, upto = self._ops, self._queued
        self._ops = []
        err: OSError | None = None
        try:
            self._run_ops(ops)
            fds = [self._fds[seq] for seq in sorted(self._unsynced)] if self._executor is not None else []
            self._unsynced.clear()
            if fds and self.fsync_s < INLINE_FSYNC_S:  # a fast disk: on the loop, no thread hand-off
                self._took(_fdatasync_all(fds))
                fds = []
        except OSError as e:  # those intents are not on disk: their attempts are not sent
            err, fds = e, []
        if not fds:
            self._finish(upto, err)
        return upto, fds

    async def _commit_durable(self) -> None:
        """Write every queued op on the loop, then fsync the written segments on the helper
        thread; the intents queued so far are then durable (or failed, and not sent). The fsync
        finishes (and `_finish` runs) even if the leader waiting for it is cancelled."""
        upto, fds = self._commit_on_loop()
        if not fds:
            return
        fut = asyncio.get_running_loop().run_in_executor(self._executor, _fdatasync_all, fds)
        fut.add_done_callback(lambda f: self._finish(
            upto, OSError("fsync cancelled") if f.cancelled() else f.exception(),
            None if f.cancelled() or f.exception() else f.result()))
        await asyncio.shield(fut)

    def _took(self, seconds: float) -> None:
        self.fsync_s += 0.2 * (seconds - self.fsync_s)  # a moving average: recent fsyncs

    def _finish(self, upto: int, err: BaseException | None, took: float | None = None) -> None:
        if took is not None:
            self._took(took)
        self._syncing = False
        self.commits += 1
        if err is not None:
            self._failed = [f for f in self._failed if f[1] > upto - 10_000] + [(self._durable + 1, upto, err)]
        self._durable = max(self._durable, upto)
        self._wake()
        if self._ops and not self._closed:
            self._kick()

    def _wake(self) -> None:
        """Every waiting intent looks again: done, or the next group's leader."""
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def aclose(self) -> None:
        """Write what is queued, then close."""
        while self._leader or self._syncing:
            await asyncio.sleep(0.001)
        self.close()

    def close(self) -> None:
        """Write what is queued; delete the journal if every intent has an outcome, else leave it
        for the next rebuild to bill."""
        if self._closed:
            return
        self._closed = True
        self._write(self._ops)
        self._ops = []
        if self._executor is not None:
            if self._syncing:  # an fsync in flight (a synchronous close from a running loop)
                self._executor.submit(lambda: None).result()
            _fdatasync_all([self._fds[s] for s in self._unsynced if s in self._fds])
            self._executor.shutdown(wait=True)
        self._durable = self._queued
        self._wake()
        drop_all = not self._open
        for seq in sorted(self._fds):
            if drop_all:
                self._drop(seq)
            else:
                os.close(self._fds.pop(seq))

    # -- files -----------------------------------------------------------------------------------
    def _open_segment(self, seq: int) -> None:
        fd = os.open(journal_path(self.dir, self.writer, seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fds[seq] = fd
        if self.fsync:  # the new file's name is durable too, not only what is written into it
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _run_ops(self, ops: list[Any]) -> None:
        """Append, rotate, drop: on the loop, never while an fsync is in flight (but `close`)."""
        buf: list[bytes] = []
        cur = max(self._fds) if self._fds else None
        for op in ops:
            if isinstance(op, bytes):
                buf.append(op)
                continue
            if buf and cur is not None:
                self._append(cur, b"".join(buf))
                buf = []
            what, seq = op
            if what == "rotate":
                self._open_segment(seq)
                cur = seq
            elif what == "drop":
                self._drop(seq)
        if buf and cur is not None:
            self._append(cur, b"".join(buf))

    def _append(self, seq: int, data: bytes) -> None:
        os.write(self._fds[seq], data)
        self._unsynced.add(seq)

    def _drop(self, seq: int) -> None:
        fd = self._fds.pop(seq, None)
        self._unsynced.discard(seq)
        if fd is None:
            return
        if self._before_drop is not None:
            self._before_drop()
        journal_path(self.dir, self.writer, seq).unlink(missing_ok=True)
        os.close(fd)


def _fdatasync_all(fds: list[int]) -> float:
    t = time.perf_counter()
    for fd in fds:
        os.fdatasync(fd)
    return time.perf_counter() - t


# -- after a crash -----------------------------------------------------------------------------
def locked_by_other(path: Path) -> bool:
    """True while a live writer holds the file's lock (a journal or ledger WAL segment), or when
    the file is gone meanwhile (its writer deleted it: nothing to read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True  # gone meanwhile: its writer deleted it, nothing to do
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def dead_journals(directory: Path, own_writer: str) -> dict[str, list[Path]]:
    """Journal segments of writers that are gone (no live lock on any of their segments)."""
    by_writer: dict[str, list[Path]] = {}
    for p in sorted(directory.glob("intent-*.jsonl")):
        m = _NAME.match(p.name)
        if m and m.group(1) != own_writer:
            by_writer.setdefault(m.group(1), []).append(p)
    return {w: ps for w, ps in by_writer.items() if not any(locked_by_other(p) for p in ps)}


def read_journal(paths: list[Path]) -> tuple[dict[tuple[str, int], dict[str, Any]], set[tuple[str, int]]]:
    """(intents by (key, attempt), attempts resolved in the journal itself). Torn lines skipped."""
    intents: dict[tuple[str, int], dict[str, Any]] = {}
    resolved: set[tuple[str, int]] = set()
    for p in paths:
        try:
            text = p.read_text()
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            try:
                d = json.loads(line)
                k = (str(d["k"]), int(d["n"]))
            except (ValueError, KeyError, TypeError):
                continue
            if "resolved" in d:
                resolved.add(k)
            else:
                intents[k] = d
    return intents, resolved


def unresolved(intents: dict[tuple[str, int], dict[str, Any]], resolved: set[tuple[str, int]],
               records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The intents without an outcome: not resolved in the journal, no call record with their key,
    no attempt record with their key and number."""
    keys = {k for k, _ in intents}
    called, attempted = set(), set()
    for r in records:
        k = r.get("idempotency_key")
        if k in keys:
            if r["kind"] == "call":
                called.add(k)
            else:
                attempted.add((k, r["attempts"]))
    return [d for (k, n), d in intents.items()
            if (k, n) not in resolved and k not in called and (k, n) not in attempted]


def outcome_unknown_record(intent: dict[str, Any]) -> dict[str, Any]:
    """The ledger record that bills an attempt whose outcome was lost, at its capped cost."""
    rec = {f: intent[f] for f in INTENT_FIELDS if f in intent}
    return {**rec, "kind": "attempt", "status": CallStatus.OUTCOME_UNKNOWN.value, "attempts": int(intent["n"]),
            "idempotency_key": str(intent["k"]),
            "error": "the pool stopped while this attempt was in flight; billed at its capped cost",
            "anomaly": "outcome unknown: billed at the capped cost"}
