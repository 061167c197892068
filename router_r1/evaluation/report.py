"""Scoring policy runs, aggregating them per dataset, and the cost-quality Pareto frontier.

Quality is EM and token F1 against gold answers (QA sets; router_r1.env.answer_metrics), or accuracy from
replay labels under the adoption rule (router_r1.worlds.replay.tables.adopted_outcome; docs/evaluation.md).
Ray-free: the pipeline (pipelines/evaluate.py) only adds I/O, the pool and MLflow.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router_r1.env.answer_metrics import exact_match, f1_score
from router_r1.evaluation.baselines import EvalItem, PolicyRun
from router_r1.pool.cost import episode_cost
from router_r1.pool.descriptors import PoolSpec
from router_r1.worlds.replay.tables import replay_outcome


def score_run(item: EvalItem, run: PolicyRun, pool: PoolSpec, table_models: Sequence[str] = ()
              ) -> dict[str, Any]:
    """One per-question result row (the Parquet schema of evaluation results)."""
    ok_calls = [c for c in run.calls if c.ok]
    row: dict[str, Any] = {
        "uid": item.uid, "source": item.source, "question": item.question[:500],
        "answer": None if run.answer is None else run.answer[:1000],
        "format_ok": bool(run.format_ok), "calls": len(run.calls), "failed_calls": len(run.calls) - len(ok_calls),
        "models": [c.model for c in run.calls], "cost_usd": episode_cost(c.cost_usd for c in run.calls),
        "latency_s": run.latency_s,
        # What the called models would take to answer in sequence, from descriptors (replay
        # answers instantly, so this is the latency a live deployment of the policy would see).
        "model_latency_s": sum(pool[c.model].latency_s for c in run.calls if pool.resolve(c.model)),
        "em": None, "f1": None, "accuracy": None, "adopted_model": None,
    }
    if item.sample is not None:
        acc, adopted = replay_outcome(run.answer, run.calls, item.sample, pool, table_models)
        row["accuracy"] = acc if run.format_ok else 0.0
        row["adopted_model"] = adopted
    if item.golden_answers:
        row["em"] = exact_match(run.answer, item.golden_answers) if run.format_ok else 0.0
        row["f1"] = f1_score(run.answer, item.golden_answers) if run.format_ok else 0.0
    return row


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-(dataset, policy) summary of result rows."""
    n = len(rows)
    out: dict[str, Any] = {"n": n}
    for k in ("em", "f1", "accuracy"):
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = _mean(vals)
    out["cost_usd"] = _mean([r["cost_usd"] for r in rows]) or 0.0
    out["total_cost_usd"] = sum(r["cost_usd"] for r in rows)
    out["calls_per_q"] = _mean([r["calls"] for r in rows]) or 0.0
    out["failed_call_rate"] = (sum(r["failed_calls"] for r in rows) / max(1, sum(r["calls"] for r in rows)))
    out["format_ok"] = _mean([float(r["format_ok"]) for r in rows]) or 0.0
    out["latency_s"] = _mean([r["latency_s"] for r in rows]) or 0.0
    out["model_latency_s"] = _mean([r["model_latency_s"] for r in rows]) or 0.0
    # Which models the policy called: each model's share of all its calls, most called first.
    called = Counter(m for r in rows for m in r["models"])
    total = sum(called.values())
    out["call_share"] = {m: c / total for m, c in called.most_common()}
    return out


def quality(summary: dict[str, Any]) -> float:
    """The quality axis: accuracy for replay sets, else EM."""
    q = summary.get("accuracy")
    return q if q is not None else (summary.get("em") or 0.0)


@dataclass(frozen=True)
class Point:
    name: str
    cost: float
    quality: float


UPPER_BOUNDS = ("oracle",)  # uses the labels to choose: a reference, never on the frontier


def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """Deployable points no other dominates (cheaper-or-equal and better-or-equal, one strictly),
    sorted by cost: the cost-quality frontier. The oracle is left out (it reads the labels)."""
    points = [p for p in points if p.name not in UPPER_BOUNDS]
    front = [p for p in points
             if not any((q.cost <= p.cost and q.quality >= p.quality)
                        and (q.cost < p.cost or q.quality > p.quality) for q in points)]
    return sorted(front, key=lambda p: (p.cost, p.quality))


def markdown_table(summaries: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One table per dataset: policy, n, quality metrics, cost, calls, format, latency."""
    out = []
    for dataset, by_policy in summaries.items():
        out.append(f"### {dataset}\n")
        out.append("| policy | n | accuracy | EM | F1 | mean cost (USD) | calls/q | format ok | "
                   "latency (s) | model latency (s) | Pareto |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
        front = {p.name for p in pareto_frontier(
            [Point(k, s["cost_usd"], quality(s)) for k, s in by_policy.items()])}
        for name, s in sorted(by_policy.items(), key=lambda kv: -quality(kv[1])):
            f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
            out.append(f"| {name} | {s['n']} | {f(s['accuracy'])} | {f(s['em'])} | {f(s['f1'])} | "
                       f"{s['cost_usd']:.6f} | {s['calls_per_q']:.2f} | {s['format_ok']:.3f} | "
                       f"{s['latency_s']:.4f} | {s['model_latency_s']:.2f} | "
                       f"{'*' if name in front else ''} |")
        out.append("")
    return "\n".join(out)


def plot_frontier(by_policy: dict[str, dict[str, Any]], path: str, title: str) -> None:
    """Cost (log x) vs quality, one point per policy, the Pareto frontier as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [Point(k, max(s["cost_usd"], 1e-9), quality(s)) for k, s in by_policy.items()]
    front = pareto_frontier(pts)
    fig, ax = plt.subplots(figsize=(11, 7))
    groups: dict[tuple[float, float], list[str]] = {}  # e.g. "cheapest" sits on its single model
    for p in pts:
        groups.setdefault((round(p.cost, 12), round(p.quality, 6)), []).append(p.name)
    import math

    lo, hi = math.log10(min(p.cost for p in pts)), math.log10(max(p.cost for p in pts))
    for (cost, q), names in groups.items():
        learned = any(n.startswith(("rllib", "llm", "prompt")) for n in names)
        ax.scatter(cost, q, s=90 if learned else 30, marker="*" if learned else "o",
                   color="tab:red" if learned else ("tab:green" if "oracle" in names else "tab:blue"),
                   zorder=3)
        label = names[0] if len(names) == 1 else f"{names[0]} (= {', '.join(names[1:3])}" + (
            f" +{len(names) - 3})" if len(names) > 3 else ")")
        right = hi > lo and (math.log10(cost) - lo) / (hi - lo) > 0.8  # label leftwards near the edge
        ax.annotate(label, (cost, q), fontsize=6.5, xytext=(-4 if right else 4, 3), textcoords="offset points",
                    ha="right" if right else "left", annotation_clip=True)
    if front:
        ax.step([p.cost for p in front], [p.quality for p in front], where="post", color="gray",
                linestyle="--", label="Pareto frontier", zorder=2)
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.06)
    ax.set_xlabel("mean cost per question (USD, log scale)")
    ax.set_ylabel("accuracy" if any(s.get("accuracy") is not None for s in by_policy.values()) else "EM")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.08, right=0.97, top=0.93, bottom=0.09)
    fig.savefig(path, dpi=130)
    plt.close(fig)
