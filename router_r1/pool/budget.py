"""Spend caps per run and per tenant (USD), safe under concurrency.

Before a call is sent its cost is *reserved* on every account it draws on; the real cost is
*charged* when known and the rest of the reservation released. Two amounts are held per call:
the *estimate* (what the call will likely cost: its prompt estimate, and the completion length
its model has been answering with, `ModelStats.expected_completion_tokens`; `max_tokens` until
enough answers were seen) and the *worst case* (its capped cost: the pool never bills more prompt
tokens than the sent text's bytes allow, nor more completion tokens than the call's `max_tokens`).
A call is admitted when

- its worst case fits beside every other call's worst case (spent + worst cases <= cap), or
- it is the only call in flight on its accounts and its estimate fits (spent + estimate <= cap).

So a cap is overrun by at most one call's capped cost, and only by the last call sent alone,
while far from the cap calls run concurrently as before. A call that would fit once in-flight
calls settle waits for them instead of being refused; one that cannot fit even then (spent +
estimate > cap) is refused at once.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

EPS = 1e-12  # float slack in cap comparisons, far below a cent


@dataclass
class Account:
    cap: float
    spent: float = 0.0
    reserved: float = 0.0  # estimates of the calls in flight, less what they already charged
    reserved_worst: float = 0.0  # their worst cases, likewise
    inflight: int = 0


class Reservation:
    """A call's hold on its accounts. `charge` bills, `release` returns what is left."""

    def __init__(self, budget: "Budget", accounts: list[Account], amount: float, worst: float):
        self._budget, self._accounts, self.held, self.held_worst = budget, accounts, amount, worst
        self.charged = 0.0
        self._open = True
        for a in accounts:
            a.reserved += amount
            a.reserved_worst += worst
            a.inflight += 1

    def charge(self, cost: float) -> None:
        take, take_worst = min(self.held, cost), min(self.held_worst, cost)
        for a in self._accounts:
            a.spent += cost
            a.reserved -= take
            a.reserved_worst -= take_worst
        self.held -= take
        self.held_worst -= take_worst
        self.charged += cost
        self._budget._changed()

    def release(self) -> None:
        if not self._open:
            return
        self._open = False
        for a in self._accounts:
            a.reserved -= self.held
            a.reserved_worst -= self.held_worst
            a.inflight -= 1
        self.held = self.held_worst = 0.0
        self._budget._changed()

class Budget:
    def __init__(self, run_cap: float | None = None, tenant_caps: dict[str, float] | None = None,
                 spent_by_run: dict[str, float] | None = None,
                 spent_by_tenant: dict[str, float] | None = None):
        """`spent_by_*`: what the ledger says was already billed (after a restart)."""
        self.run_cap, self.tenant_caps = run_cap, dict(tenant_caps or {})
        self._spent_run, self._spent_tenant = dict(spent_by_run or {}), dict(spent_by_tenant or {})
        self._runs: dict[str, Account] = {}
        self._tenants: dict[str, Account] = {}
        self._event = asyncio.Event()
        self._waiting = 0

    def _accounts(self, run_id: str, tenant: str) -> list[Account]:
        out = []
        if self.run_cap is not None:
            if run_id not in self._runs:
                self._runs[run_id] = Account(self.run_cap, self._spent_run.get(run_id, 0.0))
            out.append(self._runs[run_id])
        if tenant in self.tenant_caps:
            if tenant not in self._tenants:
                self._tenants[tenant] = Account(self.tenant_caps[tenant], self._spent_tenant.get(tenant, 0.0))
            out.append(self._tenants[tenant])
        return out

    def _changed(self) -> None:
        if self._waiting:  # wake waiters; nobody waiting (the common case) costs nothing
            self._event.set()
            self._event = asyncio.Event()

    async def reserve(self, estimate: float, run_id: str, tenant: str,
                      worst: float | None = None) -> Reservation | None:
        """Hold a call's `estimate` and `worst` case (USD; default: the estimate) on its
        accounts, waiting while calls in flight may make room; None when a cap cannot take it."""
        worst = estimate if worst is None else max(worst, estimate)
        accounts = self._accounts(run_id, tenant)
        while True:
            if all(a.spent + a.reserved_worst + worst <= a.cap + EPS for a in accounts) or (
                    all(a.inflight == 0 and a.spent + estimate <= a.cap + EPS for a in accounts)):
                return Reservation(self, accounts, estimate, worst)
            if any(a.spent + estimate > a.cap + EPS for a in accounts):
                return None  # would not fit even if every call in flight cost nothing
            self._waiting += 1  # some call is in flight: wait for it to settle
            try:
                await self._event.wait()
            finally:
                self._waiting -= 1

    def remaining(self, run_id: str, tenant: str) -> float | None:
        accounts = self._accounts(run_id, tenant)
        return min((a.cap - a.spent for a in accounts), default=None)
