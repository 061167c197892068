"""Write-ahead intents and what a crash leaves behind (issue 24), without Ray: every attempt is on
disk before it is sent, a tick's intents share one fsync, a restarted pool bills every attempt
whose outcome was lost at its capped cost (once), and tells lost calls that were never sent."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fake_openai_server import fake_openai, fake_openai_session  # noqa: F401  (fixtures)
from pool_doubles import ScriptedBackend, make_pool

from router_r1.pool import intents
from router_r1.pool.backends.base import IDEMPOTENCY_KEY, BackendError
from router_r1.pool.core import PoolCore
from router_r1.pool.cost import call_cost, max_prompt_tokens
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.ledger import Ledger, read_records
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.types import CallStatus

ROOT = Path(__file__).resolve().parents[1]


def run(coro):
    return asyncio.run(coro)


def make_core(backend, tmp_path, pool=None, **runtime):
    rt = PoolRuntimeConfig(ledger_dir=str(tmp_path), cache=False, **runtime)
    return PoolCore(pool or make_pool(), rt, "run-i", {"simulated": backend})


def journal_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(directory.glob("intent-*.jsonl"))
            for line in p.read_text().splitlines() if line.strip()]


class JournalCheckingBackend(ScriptedBackend):
    """Notes, as each attempt is sent, whether its intent is already in a journal file on disk."""

    billed_remotely = True  # as a provider behind HTTP: the pool writes intents ahead for it

    def __init__(self, directory: Path, scripts=None):
        super().__init__(scripts)
        self.directory, self.on_disk = directory, []

    async def complete(self, model, messages, params):
        key = IDEMPOTENCY_KEY.get()
        self.on_disk.append(any(d["k"] == key and "resolved" not in d for d in journal_lines(self.directory)))
        return await super().complete(model, messages, params)


@pytest.mark.parametrize("disk", ["fast", "slow"])  # fsync on the loop, or on the helper thread
def test_every_attempt_is_on_disk_before_it_is_sent_and_a_tick_shares_one_fsync(tmp_path, monkeypatch, disk):
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(intents.os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    be = JournalCheckingBackend(tmp_path, {"C": [BackendError(CallStatus.HTTP_ERROR, "503", retryable=True)]})
    core = make_core(be, tmp_path, make_pool(max_concurrency=128), intent_fsync=True)
    if disk == "slow":
        core.journal.fsync_s = 1.0

    async def main():
        rs = await asyncio.gather(*(core.call("B", f"q{i}") for i in range(64)), core.call("C", "q"))
        await core.close()
        return rs

    rs = run(main())
    assert all(r.ok for r in rs) and rs[-1].attempts == 2
    assert len(be.on_disk) == 66 and all(be.on_disk)
    assert len(syncs) == 2  # 65 intents of one tick: one append, one fsync; then the retry's
    assert not list(tmp_path.glob("intent-*"))  # every intent has an outcome: the journal is gone
    keys = {r.meta["idempotency_key"] for r in rs}
    assert len(keys) == 65 and all(k.endswith(".0") for k in keys)


def test_in_process_backends_write_no_intents(tmp_path):
    """Nothing outside the process bills the simulator, replay or a local engine: no intents."""
    be = ScriptedBackend()
    core = make_core(be, tmp_path)
    run(core.call("B", "q"))
    assert journal_lines(tmp_path) == [] and core.journal.commits == 0
    run(core.close())


def test_journal_segments_rotate_and_go_once_resolved(tmp_path):
    led = Ledger(tmp_path)
    led.journal.segment_bytes = 600  # a few intents per segment

    async def main():
        for i in range(20):
            await led.journal.intend(f"k{i}.0", 1, {"model": "m", "cost_usd": 0.1})
            if i < 19:
                led.journal.resolve(f"k{i}.0", 1, "http_error")
        await asyncio.sleep(0.05)
        segs = sorted(tmp_path.glob("intent-*.jsonl"))
        return segs

    segs = run(main())
    assert len(segs) <= 2  # resolved segments are deleted; the open intent's one is kept
    pending, resolved = intents.read_journal(segs)
    assert ("k19.0", 1) in pending and ("k19.0", 1) not in resolved
    led.close()  # an intent still open: its segment stays for the next rebuild to bill
    again = Ledger.rebuild(tmp_path)
    assert [r["idempotency_key"] for r in again.reconciled] == ["k19.0"]
    assert again.reconciled[0]["status"] == "outcome_unknown" and again.reconciled[0]["cost_usd"] == 0.1
    assert not list(tmp_path.glob("intent-*")) or all(p.name.startswith(f"intent-{again.writer}")
                                                      for p in tmp_path.glob("intent-*"))
    again.close()
    assert Ledger.rebuild(tmp_path).reconciled == []  # billed once, never again


def test_a_live_writers_journal_is_never_reconciled(tmp_path):
    led = Ledger(tmp_path)

    async def main():
        await led.journal.intend("live.0", 1, {"model": "m", "cost_usd": 0.1})

    run(main())
    other = Ledger.rebuild(tmp_path)  # a second pool on the same folder, the first still alive
    assert other.reconciled == [] and list(tmp_path.glob(f"intent-{led.writer}-*"))
    other.close()
    led.close()


def test_reconcile_interrupted_after_billing_does_not_bill_twice(tmp_path):
    led = Ledger(tmp_path)

    async def main():
        await led.journal.intend("x.0", 1, {"model": "m", "cost_usd": 0.25})

    run(main())
    for fd in led.journal._fds.values():  # the process "dies": its locks go away
        os.close(fd)
    saved = {p: p.read_bytes() for p in tmp_path.glob("intent-*.jsonl")}
    first = Ledger.rebuild(tmp_path)
    assert len(first.reconciled) == 1
    for p, data in saved.items():  # as if the crash came before the journal was deleted
        p.write_bytes(data)
    first.close()
    second = Ledger.rebuild(tmp_path)
    assert second.reconciled == []
    assert second.totals.get("model")["m"]["cost_usd"] == pytest.approx(0.25)
    second.close()


def test_a_call_reported_not_sent_is_never_sent_later(tmp_path):
    be = ScriptedBackend()
    core = make_core(be, tmp_path)
    cid = "lost-" + uuid.uuid4().hex[:8]
    assert core.settle_lost([cid], time.time()) == {cid: {"status": "not_sent"}}
    r = run(core.call("B", "q", None, {"call_id": cid}))
    assert r.status is CallStatus.NOT_SENT and not be.log and r.cost_usd == 0
    sent = run(core.call("B", "q", None, {"call_id": "sent-0001"}))
    out = core.settle_lost(["sent-0001"], time.time() - 5)
    assert out["sent-0001"]["status"] == "sent" and out["sent-0001"]["cost_usd"] == pytest.approx(sent.cost_usd)
    run(core.close())


def test_sigkill_mid_burst_loses_no_billed_call(tmp_path, fake_openai):
    """A pool process killed mid-burst: every call the server answered is billed after the
    restart, every call never sent is reported not_sent (and none of those reached the server),
    and a second restart bills nothing twice."""
    fake_openai.set("K", "ok", delay_s=0.3)
    ledger = tmp_path / "ledger"
    tag = uuid.uuid4().hex[:8]
    n = 300
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "pool_crash_child.py"), str(ledger),
                             fake_openai.url, str(n), "64", "32", tag], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while fake_openai.count("K") < 40:
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read()[-2000:] if proc.poll() else ""
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    time.sleep(0.6)  # the server finishes what it received (what a provider would bill)
    answered = {e["idempotency_key"] for e in fake_openai.answered(200)}
    reached = {e["idempotency_key"].rsplit(".", 1)[0] for e in fake_openai.log}
    assert len(answered) >= 40

    pool = PoolSpec.model_validate({"models": [
        {"name": "K", "price": 1.0, "backend": {"kind": "openai", "base_url": fake_openai.url, "max_tokens": 16},
         "limits": {"max_concurrency": 32, "timeout_s": 30, "max_attempts": 1}}]})
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=str(ledger), cache=False), "crash")
    recs = read_records(ledger)
    billed = {r["idempotency_key"] for r in recs if r["cost_usd"] > 0}
    assert answered - billed == set()  # 0 missing: every answered call is billed
    unknown = [r for r in recs if r["status"] == "outcome_unknown"]
    assert unknown and len(unknown) == len(core.ledger.reconciled)
    cap = call_cost(pool["K"], max_prompt_tokens([{"role": "user", "content": "question 100"}]), 16)
    assert all(r["cost_usd"] == pytest.approx(cap, rel=0.05) for r in unknown)
    assert core.totals("run_id")["crash"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in recs))

    ids = [f"c{i:05d}-{tag}" for i in range(n)]
    out = core.settle_lost(ids, t0)
    not_sent = {c for c, a in out.items() if a["status"] == "not_sent"}
    assert not_sent and not (not_sent & reached)  # not_sent is true: safe to retry
    never = set(ids) - reached
    gray = never - not_sent  # intent on disk, killed before the request left
    print(f"\nanswered {len(answered)}, billed {len(billed)}, outcome_unknown {len(unknown)}, "
          f"not_sent {len(not_sent)}, never reached the server {len(never)}, of which intent-only {len(gray)}")
    assert len(gray) <= 32  # at most the attempts of one tick, all billed at their capped cost
    assert all(f"{c}.0" in billed for c in gray)
    run(core.close())
    again = PoolCore(pool, PoolRuntimeConfig(ledger_dir=str(ledger), cache=False), "crash")
    assert again.ledger.reconciled == []
    assert again.totals("run_id") == core.totals("run_id")
    run(again.close())


def test_without_fsync_an_intent_is_written_at_once(tmp_path, monkeypatch):
    """intent_fsync: false (the default): each intent is on disk (the page cache: a killed process loses
    nothing) before its attempt leaves, without waiting for a group or an fsync."""
    monkeypatch.setattr(intents.os, "fdatasync", lambda fd: pytest.fail("fsync with intent_fsync off"))
    be = JournalCheckingBackend(tmp_path)
    core = make_core(be, tmp_path)

    async def main():
        rs = await asyncio.gather(*(core.call("B", f"q{i}") for i in range(10)))
        waits = list(core.journal.waits)
        await core.close()
        return rs, waits

    rs, waits = run(main())
    assert all(r.ok for r in rs) and len(be.on_disk) == 10 and all(be.on_disk)
    assert max(waits) < 0.05
