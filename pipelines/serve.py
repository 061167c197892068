"""`router-r1 serve`: start Ray and Serve, deploy the router app, print its URL, wait for Ctrl-C.

    router-r1 serve --checkpoint outputs/demo/policy --config configs/demo.yaml

Equivalent to `serve run deployments.router:build_app checkpoint=... config=...`, plus the Ray
address, host and port taken from the config (`ray.*`, `serve.host`, `serve.port`).
"""
from __future__ import annotations

import argparse
import sys
import time

from pipelines.cli import add_overrides_argument


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-r1 serve", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    p.add_argument("--config", help="run config YAML (pool, pool_runtime, episode, serve, ray)")
    p.add_argument("--host", help="HTTP host (default: serve.host)")
    p.add_argument("--port", type=int, help="HTTP port (default: serve.port)")
    add_overrides_argument(p, "serve.max_batch_size=1")
    p.add_argument("--blocking", action=argparse.BooleanOptionalAction, default=True,
                   help="wait for Ctrl-C, then shut Serve down (default); --no-blocking returns "
                        "after deploying, leaving the app running on the cluster")
    p.add_argument("--name", default="router_r1", help="Serve application name")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray
    from ray import serve

    from deployments.router import build_app
    from pipelines.cli import error_line, parse_overrides
    from router_r1.engines.model import CheckpointError
    from router_r1.infra.config import load_config

    try:
        overrides = parse_overrides(args.set)
        cfg = load_config(args.config, overrides=overrides or None)
        app_args = {"checkpoint": args.checkpoint, **overrides}
        if args.config:
            app_args["config"] = args.config
        app = build_app(app_args)  # every check that can fail before a replica starts
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"router-r1 serve: {error_line(e)}", file=sys.stderr)
        return 2
    host, port = args.host or cfg.serve.host, args.port if args.port is not None else cfg.serve.port
    if not ray.is_initialized():
        ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus, namespace=cfg.ray.namespace,
                 object_store_memory=cfg.ray.object_store_memory, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=args.name, route_prefix="/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"Router-R1 '{cfg.serve.model_name}' is serving at http://{shown}:{port}/v1 "
          f"(POST /v1/chat/completions, GET /v1/models, GET /healthz)", flush=True)
    if not args.blocking:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", file=sys.stderr)
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
