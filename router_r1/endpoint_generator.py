"""A prompt-only router behind an OpenAI-compatible *completions* endpoint (vLLM, NIM, ...).

The episode machine continues one raw text (prompt + everything so far), which is what the
text-completions API does (chat APIs cannot continue a partial assistant turn). OpenAI-style
servers drop the matched stop string from the text; vLLM reports it as `stop_reason`, and
otherwise the open tag tells which one it was, so it is put back for the episode machine.
Base URL and key come from the environment (ROUTER_R1_BASE_URL, ROUTER_R1_API_KEY), as in
configs/pool_router_r1.yaml.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp

from router_r1.episode import EpisodeConfig
from router_r1.protocol import STOP_STRINGS


def restore_stop(text: str, choice: dict[str, Any]) -> str:
    """The text with its stop string put back when the server stopped on one."""
    if choice.get("finish_reason") != "stop" or text.endswith(STOP_STRINGS):
        return text
    reason = choice.get("stop_reason")
    if reason in STOP_STRINGS:
        return text + reason
    last_search, last_answer = text.rfind("<search>"), text.rfind("<answer>")
    if max(last_search, last_answer) < 0:
        return text  # stopped at the end of text (EOS): no stop string to restore
    return text + ("</answer>" if last_answer > last_search else "</search>")


class CompletionsGenerator:
    def __init__(self, base_url: str | None, model: str, cfg: EpisodeConfig, api_key_env: str = "ROUTER_R1_API_KEY",
                 timeout_s: float = 120.0, concurrency: int = 16):
        self.base_url = (base_url or os.environ.get("ROUTER_R1_BASE_URL") or "").rstrip("/")
        if not self.base_url:
            raise ValueError("openai router: give a base URL (openai:MODEL@URL) or set ROUTER_R1_BASE_URL")
        self.model, self.cfg, self.api_key_env = model, cfg, api_key_env
        self.timeout, self.concurrency = aiohttp.ClientTimeout(total=timeout_s), concurrency

    async def generate(self, prompts: list[str]) -> list[str]:
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        sem = asyncio.Semaphore(self.concurrency)
        async with aiohttp.ClientSession(timeout=self.timeout, headers=headers) as session:
            async def one(prompt: str) -> str:
                body = {"model": self.model, "prompt": prompt, "max_tokens": self.cfg.max_new_tokens,
                        "temperature": self.cfg.temperature, "top_p": self.cfg.top_p,
                        "stop": list(STOP_STRINGS)}
                async with sem:
                    try:
                        async with session.post(f"{self.base_url}/completions", json=body) as r:
                            data = await r.json(content_type=None)
                            if r.status != 200:
                                return ""  # no stop: the episode ends without an answer (scored as such)
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                        return ""
                try:
                    choice = data["choices"][0]
                    return restore_stop(choice["text"], choice)
                except (KeyError, IndexError, TypeError):
                    return ""

            return list(await asyncio.gather(*(one(p) for p in prompts)))
