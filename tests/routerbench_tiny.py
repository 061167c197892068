"""A hand-made replay world in RouterBench's wide-CSV format, with numbers checked by hand.

Three models (Big: $10/$30 per 1M, 70B; Mid: $1, 13B; Small: $0.2, 7B) on four questions:

    question  Big (label, cost)   Mid              Small             oracle
    q1        1, 0.01             1, 0.001         0, 0.0001         Mid
    q2        1, 0.02             0, 0.002         1, 0.0002         Small
    q3        0, 0.03             0, 0.003         0, 0.0003         Small (none correct: cheapest)
    q4        1, 0.04             0, 0.004         -, no answer      Big

Accuracy / mean cost: Big .75 / .025, Mid .25 / .0025, Small .25 / .00015 (its q4 call fails),
oracle .75 / .010375.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

MODELS = {"m-big": "Big", "m-mid": "Mid", "m-small": "Small"}
ROWS = [  # (sample_id, question, {model: (label, cost)})
    ("t.1", "Which planet is known as the red planet?\nA) Mars\nB) Venus",
     {"m-big": (1, 0.01), "m-mid": (1, 0.001), "m-small": (0, 0.0001)}),
    ("t.2", "What is 2 + 2?\nA) 3\nB) 4", {"m-big": (1, 0.02), "m-mid": (0, 0.002), "m-small": (1, 0.0002)}),
    ("t.3", "Write a function that returns the nth prime.",
     {"m-big": (0, 0.03), "m-mid": (0, 0.003), "m-small": (0, 0.0003)}),
    ("t.4", "The trophy does not fit in the suitcase because the _ is too big.\nA) trophy\nB) suitcase",
     {"m-big": (1, 0.04), "m-mid": (0, 0.004), "m-small": (None, None)}),
]


def response(model: str, sample_id: str) -> str:
    return f"{model} says answer {sample_id}"


def write_routerbench(path: Path, rows=ROWS) -> Path:
    models = list(MODELS)
    header = (["", "sample_id", "prompt", "eval_name"] + models + [f"{m}|model_response" for m in models]
              + [f"{m}|total_cost" for m in models] + ["oracle_model_to_route_to"])
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, (sid, q, per) in enumerate(rows):
            labels = ["" if per[m][0] is None else float(per[m][0]) for m in models]
            resp = ["" if per[m][0] is None else repr([response(m, sid)]) for m in models]
            cost = ["" if per[m][1] is None else per[m][1] for m in models]
            w.writerow([i, sid, repr([q]), "tiny"] + labels + resp + cost + ["m-big"])
    return path


def write_pool(path: Path, tables: list[Path], extra_models: str = "") -> Path:
    srcs = ", ".join(str(t) for t in tables)
    path.write_text(f"""name: tiny
backends:
  replay:
    sources: [{srcs}]
models:
  - name: Big
    aliases: [m-big]
    price_in: 10.0
    price_out: 30.0
    params_b: 70
    backend: {{kind: replay}}
  - name: Mid
    aliases: [m-mid]
    price: 1.0
    params_b: 13
    backend: {{kind: replay}}
  - name: Small
    aliases: [m-small]
    price: 0.2
    params_b: 7
    backend: {{kind: replay}}
{extra_models}""")
    return path


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data folder (router_r1.worlds.replay.tables.shared_data_dir: $ROUTER_R1_DATA_DIR or
    <repo>/../shared/data); tests that need it skip when it is absent."""
    from router_r1.worlds.replay.tables import shared_data_dir as find

    d = find()
    if not (d / "routerbench").is_dir():
        pytest.skip(f"real data folder {d} is absent (set ROUTER_R1_DATA_DIR)")
    return d
