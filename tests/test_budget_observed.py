"""Budget reservations expect a model's observed completion lengths, not the backend's max_tokens
(issue 28 D), and a cap is still overrun by at most one call's capped cost."""
from __future__ import annotations

import asyncio
import random

from pool_doubles import ScriptedBackend
from router_r1.pool.backends.base import BackendReply
from router_r1.pool.core import PoolCore
from router_r1.pool.cost import call_cost
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.stats import MIN_COMPLETIONS, ModelStats
from router_r1.pool.types import CallResult, CallStatus

# A model that answers in ~14 tokens but whose backend allows 256: a real call costs ~1.4e-6 USD,
# a reservation for 256 completion tokens ~2.6e-5.
POOL = PoolSpec.model_validate({"models": [
    {"name": "Short", "price_in": 0.05, "price_out": 0.10, "backend": {"kind": "simulated", "max_tokens": 256}}]})


class Lengths(ScriptedBackend):
    """Answers with completion lengths drawn by `draw` (never more than the call's max_tokens)."""

    def __init__(self, draw):
        super().__init__()
        self.draw = draw

    async def complete(self, model, messages, params):
        await asyncio.sleep(0.001)
        return BackendReply(text="x", prompt_tokens=12, completion_tokens=min(params["max_tokens"], self.draw()))


def core(backend, **runtime):
    return PoolCore(POOL, PoolRuntimeConfig(ledger_dir=None, cache=False, **runtime), "serve", {"simulated": backend})


def test_expected_completion_is_the_observed_quantile_capped_by_max_tokens():
    st = ModelStats()
    assert st.expected_completion_tokens(256) == 256  # nothing seen: the worst case
    for n in range(1, MIN_COMPLETIONS + 1):
        st.add(CallResult("M", "x", completion_tokens=10 * n, attempts=1))
    assert st.expected_completion_tokens(256) == 10 * MIN_COMPLETIONS  # the 0.9 quantile of 10..80
    assert st.expected_completion_tokens(30) == 30
    st.add(CallResult("M", "x", completion_tokens=999, cache_hit=True))  # cache hits, fallbacks and
    st.add(CallResult("M", "x", completion_tokens=999, served_by="B", attempts=1))  # retries say
    st.add(CallResult("M", "x", completion_tokens=999, attempts=3))  # nothing of this model's length
    st.add(CallResult.failure("M", CallStatus.TIMEOUT, "slow"))
    assert max(st.completions) == 10 * MIN_COMPLETIONS


def test_a_tenant_spends_up_to_its_cap_when_answers_are_short():
    """The issue's figures: cap 5e-5 USD, real calls ~1.4e-6; a reservation for the backend's 256
    completion tokens refused the tenant at about half its cap."""
    cap = 5e-5
    c = core(Lengths(lambda: 14), tenant_budgets_usd={"t": cap})

    async def main():
        for _ in range(MIN_COMPLETIONS):  # another tenant's calls teach the pool this model's lengths
            await c.call("Short", "a short question?", None, {"tenant": "warm"})
        out = []
        for _ in range(200):
            r = await c.call("Short", "a short question?", None, {"tenant": "t"})
            out.append(r)
            if not r.ok:
                break
        return out

    rs = asyncio.run(main())
    spent = sum(r.cost_usd for r in rs)
    one = max(r.cost_usd for r in rs)
    assert rs[-1].status is CallStatus.BUDGET_EXCEEDED
    assert one <= 2e-6 and spent > cap - 2 * one, (spent, one)  # was refused at ~2.4e-5
    assert spent <= cap + 1e-12


def test_the_cap_holds_under_concurrency_with_long_outliers():
    """Mostly short answers, a few at max_tokens: the expected length is small, yet 200 concurrent
    calls overrun the cap by at most one call's capped cost (its max_tokens)."""
    rng = random.Random(0)
    cap = 2e-4
    c = core(Lengths(lambda: 256 if rng.random() < 0.08 else rng.randint(5, 20)), run_budget_usd=cap)

    async def main():
        for _ in range(MIN_COMPLETIONS):
            await c.call("Short", "warm up?", None, {"run_id": "warm"})
        return await asyncio.gather(*(c.call("Short", f"question {i}?") for i in range(200)))

    rs = asyncio.run(main())
    spent = sum(r.cost_usd for r in rs)
    capped = call_cost(POOL["Short"], 12 + 64, 256)  # a generous bound on one call's capped cost
    assert any(r.status is CallStatus.BUDGET_EXCEEDED for r in rs)
    assert spent <= cap + capped, (spent, cap)
    assert spent > cap * 0.5  # and the tenant is not refused far below its cap
