"""Scoring of finished completions (what `router-r1 score` does), line by line.

Input lines: {"completion": str, "golden_answers": [str],
              "calls": [{"model": str, "prompt_tokens": int, "completion_tokens": int}]}
A bad line yields an error record naming its line number and field; the others are still scored.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from router_r1.env.answer_metrics import exact_match, f1_score
from router_r1.env.protocol import parse
from router_r1.env.reward import RewardConfig, compute_reward, make_normalizer
from router_r1.pool.cost import call_cost
from router_r1.pool.descriptors import PoolSpec


class LineError(ValueError):
    def __init__(self, line_no: int, field: str, message: str):
        super().__init__(f"line {line_no}: field {field!r}: {message}")
        self.line_no, self.field = line_no, field


def _check_line(line_no: int, rec: Any, pool: PoolSpec) -> tuple[str, list[str], float]:
    if not isinstance(rec, dict):
        raise LineError(line_no, "<line>", "expected a JSON object")
    completion = rec.get("completion")
    if not isinstance(completion, str):
        raise LineError(line_no, "completion", "missing or not a string")
    golds = rec.get("golden_answers")
    if not isinstance(golds, list) or not golds or not all(isinstance(g, str) for g in golds):
        raise LineError(line_no, "golden_answers", "must be a non-empty list of strings")
    calls = rec.get("calls", [])
    if not isinstance(calls, list):
        raise LineError(line_no, "calls", "must be a list")
    cost = 0.0
    for i, c in enumerate(calls):
        where = f"calls[{i}]"
        if not isinstance(c, dict):
            raise LineError(line_no, where, "must be an object")
        m = pool.resolve(str(c.get("model", "")))
        if m is None:
            raise LineError(line_no, f"{where}.model", f"{c.get('model')!r} is not in the pool")
        for k in ("prompt_tokens", "completion_tokens"):
            v = c.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise LineError(line_no, f"{where}.{k}", "must be a non-negative integer")
        cost += call_cost(m, c["prompt_tokens"], c["completion_tokens"])
    return completion, golds, cost


def score_lines(lines: Iterable[str], pool: PoolSpec, cfg: RewardConfig) -> Iterator[dict[str, Any]]:
    """One output record per non-blank input line, in input order; errors come as
    {"line", "error", "field"}.

    A line's score never depends on the other lines' order: with the window normaliser the whole
    file is one batch (every valid line's cost enters the window before any line is scored, as
    `reward.score_batch` scores a training batch), so shuffling the file shuffles the output and
    changes no score. The reference normaliser is stateless.
    """
    checked: list[tuple[int, Any]] = []  # (line number, (completion, golds, cost) or LineError)
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                raise LineError(line_no, "<line>", f"not valid JSON: {e.msg}") from None
            checked.append((line_no, _check_line(line_no, rec, pool)))
        except LineError as e:
            checked.append((line_no, e))
    costs = [c[2] for _, c in checked if not isinstance(c, LineError)]
    norm = make_normalizer(cfg.model_copy(update={"window": max(len(costs), 1)}))
    norm.update(costs)
    for line_no, c in checked:
        if isinstance(c, LineError):
            yield {"line": line_no, "error": str(c), "field": c.field}
            continue
        completion, golds, cost = c
        p = parse(completion, pool, cfg.format_rules)
        em, f1 = exact_match(p.answer, golds), f1_score(p.answer, golds)
        r = compute_reward(p.format_ok, em if cfg.metric == "em" else f1, cost, norm.score(cost), cfg)
        yield {"line": line_no, "answer": p.answer, "format_ok": p.format_ok,
               "format_errors": [v.value for v in p.violations], "em": em, "f1": f1,
               "cost_usd": cost, "reward": r.reward}
