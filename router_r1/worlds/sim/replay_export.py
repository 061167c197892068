"""The simulator's one-call outcomes as a replay table, so replay-only routers (the RLlib router)
train and play on the same simulated questions as the LLM router.

One row per (question, model): the model's simulated reply to the whole question, whether the
answer it states is the gold one (EM), and what the call costs as the `simulated` backend bills it.
The replay world then answers every call from these rows (`router_r1.worlds.replay`). A two-hop
question can only be asked whole here: replay has no sub-questions, so this is the simulator
restricted to one call per model and question. `eval_name` is the domain of the question's fact
(`knowledge.call_domain`), so results can be broken down per domain.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from router_r1.env.answer_metrics import exact_match
from router_r1.pool.descriptors import Backend, PoolSpec
from router_r1.worlds.sim.knowledge import SimQuestion, call_domain
from router_r1.worlds.sim.models import Simulation


def one_call_rows(sim: Simulation, questions: Sequence[SimQuestion]) -> list[dict]:
    """Rows of the long replay schema (router_r1.worlds.replay.tables.LONG_SCHEMA)."""
    rows = []
    for q in questions:
        domain = call_domain(sim.world, q.text)
        for m in sim.names:
            c = sim.call(m, q.text)
            stated = c.reply.stated
            rows.append({"sample_id": q.id, "eval_name": domain, "prompt": q.text, "model": m,
                         "response": c.reply.text,
                         "correct": exact_match(stated.name, q.golden_answers) if stated else 0.0,
                         "cost": c.cost_usd})
    return rows


def write_table(rows: list[dict], path: str | Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from router_r1.worlds.replay.tables import LONG_SCHEMA

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=LONG_SCHEMA), path)
    return path


def replay_pool(pool: PoolSpec, sources: Sequence[str | Path]) -> PoolSpec:
    """The same descriptors (names, prices, descriptions, seen_in_training) served by the replay
    backend from `sources`."""
    models = [m.model_copy(update={"backend": Backend(kind="replay")}) for m in pool.models]
    return pool.model_copy(update={"models": models, "backends": {"replay": {"sources": [str(s) for s in sources]}},
                                   "name": f"{pool.name}_replay"})
