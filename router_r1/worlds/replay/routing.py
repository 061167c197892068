"""Per-task routing in the replay world, from the labels of a training split only. Ray-free.

A router that cannot tell which questions a cheap model gets wrong can still tell the *task*
(RouterBench: ARC, MBPP, Winogrande) and send each task to one model. `task_stats` measures
every pool model per task on training questions (mean label, mean cost), `per_task_routes`
picks per task the cheapest model whose accuracy is within `margin` of the task's best. Both the
LLM router's warm-start traces (`router_r1.worlds.replay.world.make_traces`, trace policy
`per_task`) and the `per-task` baseline of `router-r1 evaluate` use them; neither ever reads a
label of the questions it is compared on.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from router_r1.pool.cost import call_cost, estimate_tokens
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.worlds.replay.tables import ReplaySample, model_ids


def sample_cost(pool: PoolSpec, model: ModelDescriptor, sample: ReplaySample, column: str) -> float:
    """What calling `model` on `sample` costs: the recorded cost, else priced from the descriptor
    with the recorded token counts, else with token estimates."""
    a = sample.answers.get(column)
    if a is not None and a.cost is not None:
        return a.cost
    prompt = a.prompt_tokens if a is not None and a.prompt_tokens is not None else estimate_tokens(sample.prompt) + 6
    completion = (a.completion_tokens if a is not None and a.completion_tokens is not None
                  else estimate_tokens(a.response) if a is not None and a.response else 0)
    return call_cost(model, prompt, completion)


TaskTable = dict[str, dict[str, float]]  # eval_name -> pool model (display name) -> value


def task_stats(samples: Sequence[ReplaySample], pool: PoolSpec, table_models: Sequence[str],
               key: Callable[[ReplaySample], str] = lambda s: s.eval_name) -> tuple[TaskTable, TaskTable]:
    """(accuracy, mean cost) per task (`key`: by default the sample's `eval_name`) and pool model
    over `samples`, counting only questions the model has a recorded reply to (a missing reply is
    no evidence either way). Accuracy is the mean graded score."""
    columns = model_ids(pool, table_models)
    hits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    costs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        for name, col in columns.items():
            a = s.answers.get(col)
            if a is not None and a.response is not None:
                hits[key(s)][name].append(s.label(col))
                costs[key(s)][name].append(sample_cost(pool, pool[name], s, col))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return ({t: {m: mean(v) for m, v in per.items()} for t, per in hits.items()},
            {t: {m: mean(v) for m, v in per.items()} for t, per in costs.items()})


def per_task_routes(accuracy: TaskTable, cost: TaskTable, margin: float) -> dict[str, str]:
    """Per task, the cheapest model whose accuracy is at least the task's best minus `margin`
    (ties: the more accurate, then the name). `margin` 0 gives the most accurate model per task."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    routes = {}
    for task, acc in accuracy.items():
        best = max(acc.values())
        good = [m for m, a in acc.items() if a >= best - margin - 1e-12]
        routes[task] = min(good, key=lambda m: (cost[task][m], -acc[m], m))
    return routes
