"""Check a `make demo` run's report.json against the demo's goals (issue #26).

The goals say RL, not the warm start, does the work, without losing what the warm start gave:
- greedy validation reward at the end of RL >= 0.05 above its value at the start of RL, or the
  cost per episode at most half of it at an EM no more than 0.02 lower;
- held-out entities (names no training question asks about) no more than 0.02 lower at the end;
- the end above the best single model and random routing, and >= 0.75 of the oracle;
- the whole run within 10 minutes (judge this one on an idle machine: the report has no load).

    python -m benchmarks.check_demo outputs/demo/report.json [more reports...]

Prints one line per goal and exits 1 if any report misses one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REWARD_GAIN = 0.05
COST_RATIO = 0.5
EM_SLACK = 0.02
HELD_OUT_SLACK = 0.02
ORACLE_FRACTION = 0.75
WALL_S = 600.0
EPS = 1e-9  # 0.70 - 0.65 is 0.0499999... in floating point: a goal met on paper is met


def _at_least(x: float, floor: float) -> bool:
    return x >= floor - EPS


def demo_goals(report: dict) -> list[tuple[str, bool, str]]:
    """(goal, met, the figures behind it) for one report (router_r1.train's report.json)."""
    start, end = report["eval"]["start"], report["eval"]["end"]
    ref = report["reference"]
    r0, r1 = start["reward/mean"], end["reward/mean"]
    c0, c1 = start["cost/mean_usd"], end["cost/mean_usd"]
    e0, e1 = start["outcome/em"], end["outcome/em"]
    gain = _at_least(r1 - r0, REWARD_GAIN)
    cheaper = c1 <= COST_RATIO * c0 * (1 + EPS) and _at_least(e1, e0 - EM_SLACK)  # costs ~1e-5: relative
    held = report["extra"]["held_out_entities"]["reward"]
    best_name, best = ref["best_single"]
    return [
        ("RL does the work", gain or cheaper,
         (f"val reward {r0:.3f} -> {r1:.3f} ({r1 - r0:+.3f}); cost {c0:.3g} -> {c1:.3g} "
         f"({c1 / c0 if c0 else float('inf'):.2f}x) at EM {e0:.3f} -> {e1:.3f}")),
        ("held-out entities kept", _at_least(held[1], held[0] - HELD_OUT_SLACK),
         f"reward {held[0]:.3f} -> {held[1]:.3f}"),
        ("above the best single model", r1 > best, f"{r1:.3f} vs {best_name} {best:.3f}"),
        ("above random routing", r1 > ref["random"], f"{r1:.3f} vs {ref['random']:.3f}"),
        ("of the oracle", _at_least(ref["fraction_of_oracle"], ORACLE_FRACTION),
         f"{ref['fraction_of_oracle']:.4f} (oracle {ref['oracle']:.3f}; goal {ORACLE_FRACTION})"),
        ("within 10 minutes", report["wall_s"] <= WALL_S, f"{report['wall_s']:.0f} s"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report.json of a demo run")
    args = parser.parse_args(argv)
    missed = 0
    for path in args.reports:
        try:
            report = json.loads(path.read_text())
            goals = demo_goals(report)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"check_demo: {path}: not a demo report ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
        print(path)
        for name, met, figures in goals:
            print(f"  {'ok  ' if met else 'MISS'} {name}: {figures}")
            missed += not met
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
