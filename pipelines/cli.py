"""`router-r1` console script: one entry point, one subcommand per job.

Subcommands import their pipeline lazily, so `router-r1 score` never pays for Ray or torch.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Found from any working directory: the repository's configs/ (the package is installed editable).
DEFAULT_POOL = str(ROOT / "configs" / "pool_router_r1.yaml")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def add_overrides_argument(p: argparse.ArgumentParser, example: str = "learner.lr=1e-4") -> None:
    """The `--set KEY=VALUE` option of every subcommand that loads a run config (parsed by
    `parse_overrides`)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example} (repeatable)")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set a.b=value` pairs, for every subcommand; values are parsed as YAML (numbers,
    booleans, lists, null), so `--set serve.max_batch_size=1` is the int 1 everywhere."""
    import yaml

    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {p!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"--set {key.strip()}: the value is not valid YAML") from None
    return out


def error_line(e: BaseException) -> str:
    """An error as one line for the terminal: a Ray task error is unwrapped to its cause (its
    text is a remote traceback in ANSI colours), colours are stripped, lines joined."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and cause is not e:
        e = cause
    text = _ANSI.sub("", str(e)).strip() or type(e).__name__
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def _cmd_score(args: argparse.Namespace) -> int:
    from router_r1.env.reward import RewardConfig
    from router_r1.evaluation.completions import score_lines
    from router_r1.pool.descriptors import load_pool

    pool = load_pool(args.pool)
    cfg = RewardConfig(alpha=args.alpha, metric=args.metric, normalizer=args.normalizer,
                       reference_cost_usd=args.reference_cost_usd)
    failed = 0
    src = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    with src:
        for rec in score_lines(src, pool, cfg):
            if "error" in rec:
                failed += 1
                print(f"router-r1 score: {args.input}: {rec['error']}", file=sys.stderr)
            print(json.dumps(rec, ensure_ascii=False), flush=True)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-r1", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score finished router completions (JSONL in, JSONL out)")
    s.add_argument("--input", required=True, help="JSONL file, or - for stdin")
    s.add_argument("--pool", default=DEFAULT_POOL, help="model-descriptor YAML (prices)")
    s.add_argument("--alpha", type=float, default=0.0, help="cost coefficient in [0, 1]")
    s.add_argument("--metric", choices=["em", "f1"], default="em")
    s.add_argument("--normalizer", choices=["window", "reference"], default="window",
                   help="cost reward: 'window' scales each cost between the 5th and 95th percentile of "
                        "the file's costs (sqrt; the paper's normaliser with the whole file as one batch, "
                        "so line order never matters); 'reference': 1 - min(1, cost / --reference-cost-usd)")
    s.add_argument("--reference-cost-usd", type=float, default=1e-4,
                   help="the reference normaliser's scale (USD per episode)")
    s.set_defaults(func=_cmd_score)

    for name, module, help_ in (
        ("train", "pipelines.train", "train a router with RL on Ray"),
        ("evaluate", "pipelines.evaluate", "evaluate a router or baseline through the ModelPool"),
        ("train-rllib", "pipelines.train_rllib", "train the feature-based RLlib router on replay data"),
        ("sweep-alpha", "pipelines.sweep_alpha", "train one router per cost coefficient alpha: table and frontier"),
        ("unseen", "experiments.unseen", "train without a held-out model, then play the router with and without it"),
        ("serve", "pipelines.serve", "serve a trained router with Ray Serve (OpenAI API)"),
        ("plan", "pipelines.plan", "a learner rank's memory under a run config, and whether it fits the GPU"),
    ):
        sp = sub.add_parser(name, help=help_, add_help=False)
        sp.set_defaults(func=None, module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.func is not None:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            return args.func(args)
        except (FileNotFoundError, ValueError) as e:
            print(f"router-r1 {args.command}: {error_line(e)}", file=sys.stderr)
            return 2
    # Pipelines own their arguments: `router-r1 train --help` is pipelines.train's help.
    import importlib

    try:
        mod = importlib.import_module(args.module)
    except ModuleNotFoundError as e:
        if e.name == args.module:
            print(f"router-r1 {args.command}: not available in this build", file=sys.stderr)
            return 2
        raise
    return int(mod.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
