"""Spend caps per run and per tenant (USD), safe under concurrency.

Before a call is sent its estimated cost is *reserved* on every account it draws on; the real
cost is *charged* when known and the rest of the reservation released. A call is admitted only if
spent + reserved + estimate fits under every cap, so concurrent calls cannot overrun a cap as long
as a call never costs more than its estimate (the estimate uses the completion cap, max_tokens).

A call that would fit once in-flight reservations settle (they usually cost less than estimated)
waits for them instead of being refused; one that cannot fit even then is refused at once.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

EPS = 1e-12  # float slack in cap comparisons, far below a cent


@dataclass
class Account:
    cap: float
    spent: float = 0.0
    reserved: float = 0.0


class Reservation:
    """A call's hold on its accounts. `charge` bills, `release` returns what is left."""

    def __init__(self, budget: "Budget", accounts: list[Account], amount: float):
        self._budget, self._accounts, self.held = budget, accounts, amount
        self.charged = 0.0

    def charge(self, cost: float) -> None:
        take = min(self.held, cost)
        for a in self._accounts:
            a.spent += cost
            a.reserved -= take
        self.held -= take
        self.charged += cost
        self._budget._changed()

    def release(self) -> None:
        for a in self._accounts:
            a.reserved -= self.held
        self.held = 0.0
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

    async def reserve(self, estimate: float, run_id: str, tenant: str) -> Reservation | None:
        """Hold `estimate` USD on the call's accounts, or None when a cap cannot take it."""
        accounts = self._accounts(run_id, tenant)
        while True:
            if all(a.spent + a.reserved + estimate <= a.cap + EPS for a in accounts):
                for a in accounts:
                    a.reserved += estimate
                return Reservation(self, accounts, estimate)
            blocked = [a for a in accounts if a.spent + a.reserved + estimate > a.cap + EPS]
            if any(a.spent + estimate > a.cap + EPS or a.reserved <= EPS for a in blocked):
                return None  # would not fit even if every call in flight cost nothing
            self._waiting += 1
            try:
                await self._event.wait()
            finally:
                self._waiting -= 1

    def remaining(self, run_id: str, tenant: str) -> float | None:
        accounts = self._accounts(run_id, tenant)
        return min((a.cap - a.spent for a in accounts), default=None)
