"""What the RLlib router's HTTP app does, without Ray or HTTP: route a question, or route it and
call the chosen model through the pool, answering in the OpenAI chat-completion shape."""
from __future__ import annotations

import time
import uuid
from typing import Any

from router_r1.pool.types import CallFn
from router_r1.rl_router.router import RLlibRouter


class RequestError(ValueError):
    """A request the service cannot serve; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def question_of(body: Any) -> str:
    """The question: `question`, or the last user message of OpenAI-style `messages`."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    q = body.get("question")
    if q is None and isinstance(body.get("messages"), list):
        users = [m.get("content") for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        q = users[-1] if users else None
    if not isinstance(q, str) or not q.strip():
        raise RequestError("send a non-empty 'question' or OpenAI-style 'messages' with a user turn")
    if len(q) > 32_000:
        raise RequestError("the question is longer than 32,000 characters", 413)
    return q


class RLlibRouteService:
    def __init__(self, router: RLlibRouter, call: CallFn, model_name: str = "router-r1-rllib"):
        self.router, self.call, self.model_name = router, call, model_name

    def route(self, body: Any) -> dict[str, Any]:
        q = question_of(body)
        t0 = time.perf_counter()
        model = self.router.route(q)
        return {"model": model, "decision_us": round((time.perf_counter() - t0) * 1e6, 1),
                "candidates": self.router.pool.names}

    async def chat(self, body: Any) -> dict[str, Any]:
        """Route, call the chosen model once through the pool, answer with its reply."""
        routed = self.route(body)
        res = await self.call(routed["model"], question_of(body))
        if not res.ok:
            raise RequestError(f"call to {res.model} failed: {res.status.value}: {res.error}", 502)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                      "total_tokens": res.prompt_tokens + res.completion_tokens},
            "router_r1": {"routed_to": res.model, "cost_usd": res.cost_usd,
                          "decision_us": routed["decision_us"]},
        }
