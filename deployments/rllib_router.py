"""Ray Serve app for the RLlib router: a second route policy beside the LLM router.

    serve run deployments.rllib_router:build_app router=outputs/rllib_router pool=configs/pool_routerbench.yaml

    POST /v1/route             {"question": ...} or {"messages": [...]}  -> {"model": ..., "decision_us": ...}
    POST /v1/chat/completions  OpenAI chat request -> the chosen model's reply, called through the pool
    GET  /healthz

The app is its own deployment (name "RLlibRouter", route prefix /rllib by default), so it composes
with the LLM router's app (deployments.router) in one Serve instance; both call models through the
same named ModelPool actor, so budgets and the ledger are shared. The logic is Ray-free
(router_r1.rl_router.service).
"""
# No `from __future__ import annotations`: FastAPI must see real classes in route signatures.
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.rl_router.service import RequestError

api = FastAPI(title="Router-R1 RLlib router", docs_url=None, redoc_url=None)


@serve.deployment(name="RLlibRouter")
@serve.ingress(api)
class RLlibRouterDeployment:
    def __init__(self, router_dir: str, pool_path: str | None, runtime: dict[str, Any]):
        from actors.model_pool import PoolClient, get_or_create_pool
        from router_r1.pool.descriptors import load_pool
        from router_r1.rl_router.router import RLlibRouter
        from router_r1.rl_router.service import RLlibRouteService

        pool = load_pool(pool_path) if pool_path else None
        router = RLlibRouter.load(router_dir, pool)
        rt = PoolRuntimeConfig.model_validate(runtime)
        handle = get_or_create_pool(pool_path or self._write_pool(router), rt, run_id="serve:rllib", detached=True)
        self.service = RLlibRouteService(router, PoolClient(handle).call)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "candidates": self.service.router.pool.names}

    @api.post("/v1/route")
    async def route(self, request: Request):
        try:
            return self.service.route(await self._json(request))
        except RequestError as e:
            return self._error(e)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        try:
            return await self.service.chat(await self._json(request))
        except RequestError as e:
            return self._error(e)

    @staticmethod
    def _write_pool(router) -> str:
        """The router's training pool as a descriptor file, for a pool actor built without one."""
        import tempfile

        import yaml

        f = Path(tempfile.mkdtemp(prefix="rllib_pool_")) / "pool.yaml"
        f.write_text(yaml.safe_dump(router.pool.model_dump(mode="json", exclude_none=True)))
        return str(f)

    # Helpers are methods: Serve ships this class to replicas by value.
    @staticmethod
    async def _json(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise RequestError("the request body is not valid JSON") from None

    @staticmethod
    def _error(e: RequestError) -> JSONResponse:
        return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error"}},
                            status_code=e.status)


def build_app(args: dict[str, Any]) -> Application:
    """`router` (required): the trained router folder; `pool`: a descriptor YAML (default: the
    router's training pool; another file offers unseen models); `num_cpus` per replica;
    `pool_runtime.*` overrides."""
    args = dict(args)
    router_dir = args.pop("router", None)
    if not router_dir or not (Path(router_dir) / "rllib_router.json").exists():
        raise ValueError(f"build_app needs router=DIR holding rllib_router.json, got {router_dir!r}")
    pool = args.pop("pool", None)
    num_cpus = float(args.pop("num_cpus", 0.25))
    runtime = {k.split(".", 1)[1]: v for k, v in args.items() if k.startswith("pool_runtime.")}
    runtime.setdefault("actor_name", "model_pool")
    return RLlibRouterDeployment.options(ray_actor_options={"num_cpus": num_cpus}).bind(str(Path(router_dir).resolve()),
                                      str(Path(pool).resolve()) if pool else None, runtime)
