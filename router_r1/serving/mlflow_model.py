"""The trained router as an MLflow pyfunc model: questions in, full routed episodes out.

`mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"question": [...]}))` plays each question
with the logged policy through `router_r1.serving.Router` (the request logic of the Serve app,
Ray-free: the same prompt rendering, episode, forced answer and fallback rules), calling candidate
models through an in-process pool core built from the logged descriptor file (the whole pool,
unseen models included), and returns one row per question: the answer, whether the router's
text followed the protocol, the models called, the cost and the router's own text. Greedy
unless the logged settings say otherwise. With the simulated pool this runs fully offline;
real backends need their API keys in the environment named by the descriptors.

The model carries its code (`code_paths`: the `router_r1` package) and pins its requirements
to the versions it was logged with, so `pip install -r requirements.txt` in a fresh virtualenv
is enough to load and use it (tests/test_mlflow_model.py does exactly that).
"""
from __future__ import annotations

import json
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the router_r1 package, logged with the model as its code
# What the router's code imports at run time (the pool core writes Parquet, the wire types are
# the openai SDK's); mlflow adds itself.
REQUIREMENTS = ("torch", "transformers", "tokenizers", "pydantic", "pyyaml", "numpy", "pandas", "pyarrow",
                "openai")
OUTPUT_COLUMNS = ("question", "answer", "finish_reason", "format_ok", "forced_answer", "fallback", "models",
                  "cost_usd", "turns", "total_tokens", "response")


class RouterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from router_r1.serving.router import Router

        a = context.artifacts
        settings = json.loads(Path(a["router"]).read_text())
        config = {"episode": {**settings.get("episode", {})}, "serve": {"temperature": 0.0,
                                                                        **settings.get("serve", {})}}
        self.router = Router.load(a["policy"], pool=a["pool"], config=config)

    def prompt_ids(self, question: str) -> tuple[str, list[int]]:
        return self.router.prompt_ids(question)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        rows = self.router.route_many(_questions(model_input), **(params or {}))
        return pd.DataFrame([{k: r[k] for k in OUTPUT_COLUMNS} for r in rows], columns=list(OUTPUT_COLUMNS))


def _questions(model_input: Any) -> list[str]:
    if hasattr(model_input, "columns"):
        if "question" not in model_input.columns:
            raise ValueError("router input needs a 'question' column")
        return [str(q) for q in model_input["question"]]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        q = model_input.get("question")
        return [q] if isinstance(q, str) else [str(x) for x in q]
    return [str(q) for q in model_input]


def requirements() -> list[str]:
    """Each run-time dependency pinned to the version installed here (a local build tag such as
    `+cpu` dropped: the same release installs from the package index)."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def signature():
    """Questions in; one row per question out (mlflow.models.infer_signature on an example)."""
    import pandas as pd
    from mlflow.models import infer_signature

    example_out = pd.DataFrame([{"question": "Who discovered Orvium?", "answer": "Kestrel", "finish_reason": "stop",
                                 "format_ok": True, "forced_answer": False, "fallback": False,
                                 "models": ["Sim-Bio-Small"], "cost_usd": 1.2e-5, "turns": 2,
                                 "total_tokens": 412, "response": "<think> ... </think>"}])
    return infer_signature(pd.DataFrame({"question": ["Who discovered Orvium?"]}), example_out)


def log_router(tracker: Any, policy_dir: str | Path, pool_file: str | Path, router_cfg: dict[str, Any],
               name: str = "router") -> None:
    """Log the trained router as a pyfunc model in the tracker's run (router_r1.infra.tracking):
    the policy folder, the descriptor file and `router_cfg` (its `episode` and `serve` settings)
    as artifacts, the `router_r1` package as code, pinned requirements (given, not inferred:
    inference would import and probe the environment) and the signature."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "router.json"
        cfg_file.write_text(json.dumps(router_cfg, indent=2))
        tracker.log_pyfunc(
            name, RouterModel(),
            artifacts={"policy": str(policy_dir), "pool": str(pool_file), "router": str(cfg_file)},
            code_paths=[str(PACKAGE_DIR)], pip_requirements=requirements(),
            signature=signature())
