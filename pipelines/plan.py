"""`router-r1 plan`: one learner rank's memory under a run config, row by row, and whether it fits.

    router-r1 plan --config configs/cluster_train.yaml [--gpu-mem 80] [--model-config Qwen2.5-3B-Instruct]

Prints the table of `router_r1.infra.memory_plan` (weights, master copy, grads, optimizer,
reference, activations, logits peak, vLLM share) and exits 0 when it fits the GPU; otherwise the
table, then one line on stderr saying what to change, and exit status 1. Bad input: one line, 2.
Needs no GPU, Ray or torch: it reads shapes, not weights.
"""
from __future__ import annotations

import argparse
import sys

from pipelines.cli import add_overrides_argument, error_line, parse_overrides
from router_r1.infra.config import load_config
from router_r1.infra.memory_plan import BUILTIN_SHAPES, advice, format_plan, make_plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-r1 plan", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--gpu-mem", type=float, default=80.0, metavar="GIB",
                   help="memory of one learner GPU in GiB (default 80: A100/H100-80GB)")
    p.add_argument("--rollout-gpu-mem", type=float, metavar="GIB",
                   help="memory of a rollout actor's own GPU in GiB (default: --gpu-mem)")
    p.add_argument("--model-config", metavar="JSON_OR_NAME",
                   help="the policy's config.json, or a built-in shape: " + ", ".join(BUILTIN_SHAPES)
                        + " (default: policy.checkpoint's config.json, else the shape its folder is named after)")
    p.add_argument("--prompt-tokens", type=int, help="prompt length in tokens (default: estimated from the pool)")
    p.add_argument("--headroom", type=float, default=0.05,
                   help="share of the GPU kept for the allocator's fragmentation (default 0.05)")
    add_overrides_argument(p, "learner.micro_batch_size=2")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
        plan = make_plan(cfg, args.gpu_mem, args.model_config, args.prompt_tokens, args.headroom,
                         args.rollout_gpu_mem)
    except (ValueError, FileNotFoundError) as e:
        print(f"router-r1 plan: {error_line(e)}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    refusal = advice(plan)
    if refusal:
        print(f"router-r1 plan: {args.config}: {refusal}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
