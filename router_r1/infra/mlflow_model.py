"""The trained router as an MLflow pyfunc model: questions in, full routed episodes out.

`mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"question": [...]}))` plays each question
to the end with the logged policy (greedy), calling candidate models through an in-process
ModelPool core built from the logged descriptor file (the whole pool, unseen models included),
and returns the answer, the trajectory, the models called and the cost. The prompt is rendered
with the options saved in the policy folder (router_r1.env.prompt.render_prompt_ids), as in training.
With the simulated pool this runs fully offline; with real backends their API keys must be in the
environment named by the descriptors.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import mlflow.pyfunc


class RouterModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from router_r1.engines.hf import HFGenerator
        from router_r1.engines.model import load_policy
        from router_r1.env.episode import EpisodeConfig
        from router_r1.env.prompt import load_prompt_options
        from router_r1.pool.descriptors import load_pool

        a = context.artifacts
        self.settings = json.loads(open(a["router"]).read())
        self.pool = load_pool(a["pool"])
        self.prompt_options = load_prompt_options(a["policy"])
        model, self.tokenizer = load_policy(a["policy"])
        self.generator = HFGenerator(model, self.tokenizer)
        self.episode_cfg = EpisodeConfig.model_validate({**self.settings.get("episode", {}),
                                                         "temperature": 0.0})

    def prompt_ids(self, question: str) -> tuple[str, list[int]]:
        from router_r1.env.prompt import render_prompt_ids

        return render_prompt_ids(self.tokenizer, self.pool, question, self.prompt_options)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        from router_r1.env.episode import Episode, run_episodes
        from router_r1.pool.core import PoolCore
        from router_r1.pool.runtime import PoolRuntimeConfig

        questions = _questions(model_input)
        prompts = [self.prompt_ids(q) for q in questions]
        episodes = [Episode(uid=str(i), question=q, golden_answers=[], prompt=text, prompt_ids=ids)
                    for i, (q, (text, ids)) in enumerate(zip(questions, prompts))]
        core = PoolCore(self.pool, PoolRuntimeConfig(ledger_dir=None), "mlflow-router")

        async def call(model, query, **context):
            return await core.call(model, query, None, context or None)
        cfg = self.episode_cfg

        def generate(contexts):
            return self.generator.generate(contexts, max_new_tokens=cfg.max_new_tokens, temperature=0.0)

        asyncio.run(run_episodes(episodes, generate, call, cfg, self.pool, self.tokenizer,
                                 max_context=self.generator.max_context))
        rows = []
        for e in episodes:
            parsed = e.parsed(self.pool)
            rows.append({"question": e.question, "answer": parsed.answer, "format_ok": parsed.format_ok,
                         "response": e.response, "models": [c.model for c in e.calls], "cost_usd": e.cost_usd})
        return pd.DataFrame(rows)


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
