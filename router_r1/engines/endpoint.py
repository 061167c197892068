"""A router behind an OpenAI-compatible *completions* endpoint (vLLM, NIM, ...).

The episode machine continues one raw context (prompt + everything so far), which is what the
completions API does (chat APIs cannot continue a partial assistant turn).

Token mode (the prompts are token ids, and the router's tokenizer is at hand): the prompt goes out
as a list of ids and the server is asked for the sampled tokens' ids and log-probs (vLLM:
`logprobs` with `return_tokens_as_token_ids`, and `include_stop_str_in_output`; start it with
`--logprobs-mode processed_logprobs` so they are the tempered distribution's). Each turn then comes
back as a `Generation` of ids, as the local engines return it, and no text is encoded again. A
server that returns no ids fails the turn loudly: token mode cannot guess them.

Text mode (a prompt-only router whose tokenizer is not local): OpenAI-style servers drop the
matched stop string from the text; vLLM reports it as `stop_reason`, and otherwise the open tag
tells which one it was, so it is put back for the episode machine. For evaluation only.

Base URL and key come from the environment (ROUTER_R1_BASE_URL, ROUTER_R1_API_KEY), as in
configs/pool_router_r1.yaml.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp

from router_r1.env.episode import EpisodeConfig
from router_r1.env.generation import Generation, cut_generation, eos_ids
from router_r1.env.protocol import STOP_STRINGS

TOKEN_ID_PREFIX = "token_id:"  # vLLM's `return_tokens_as_token_ids` spelling of a sampled token


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


def token_ids_of(choice: dict[str, Any]) -> tuple[list[int], list[float]] | None:
    """(ids, log-probs) of a completions choice whose logprobs name tokens as 'token_id:N'; None
    when the server gave no ids."""
    lp = choice.get("logprobs") or {}
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        return None
    try:
        ids = [int(t[len(TOKEN_ID_PREFIX):]) if isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) else int(t)
               for t in tokens]
        return ids, [float(v) for v in values]
    except (TypeError, ValueError):
        return None


class EndpointError(RuntimeError):
    """The endpoint cannot serve token mode (no token ids in its answer)."""


class CompletionsGenerator:
    def __init__(self, base_url: str | None, model: str, cfg: EpisodeConfig, api_key_env: str = "ROUTER_R1_API_KEY",
                 timeout_s: float = 120.0, concurrency: int = 16, tokenizer=None):
        """`tokenizer`: the served router's tokenizer, for token mode (decoding the ids it returns)."""
        self.base_url = (base_url or os.environ.get("ROUTER_R1_BASE_URL") or "").rstrip("/")
        if not self.base_url:
            raise ValueError("openai router: give a base URL (openai:MODEL@URL) or set ROUTER_R1_BASE_URL")
        self.model, self.cfg, self.api_key_env, self.tokenizer = model, cfg, api_key_env, tokenizer
        self.timeout, self.concurrency = aiohttp.ClientTimeout(total=timeout_s), concurrency
        self.eos = eos_ids(tokenizer) if tokenizer is not None else set()

    async def generate(self, prompts: list) -> list[Generation]:
        """One turn per prompt: text prompts -> text Generations; id prompts (token mode) ->
        Generations of the sampled ids and log-probs."""
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        sem = asyncio.Semaphore(self.concurrency)
        async with aiohttp.ClientSession(timeout=self.timeout, headers=headers) as session:
            async def one(prompt) -> Generation:
                token_mode = not isinstance(prompt, str)
                if token_mode and self.tokenizer is None:
                    raise ValueError("token-mode prompts need the router's tokenizer (tokenizer=...)")
                body = {"model": self.model, "prompt": list(prompt) if token_mode else prompt,
                        "max_tokens": self.cfg.max_new_tokens, "temperature": self.cfg.temperature,
                        "top_p": self.cfg.top_p, "stop": list(STOP_STRINGS)}
                if token_mode:
                    body |= {"logprobs": 1, "return_tokens_as_token_ids": True,
                             "include_stop_str_in_output": True}
                async with sem:
                    try:
                        async with session.post(f"{self.base_url}/completions", json=body) as r:
                            data = await r.json(content_type=None)
                            if r.status != 200:
                                return Generation()  # no stop: the episode ends without an answer
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                        return Generation()
                try:
                    choice = data["choices"][0]
                    text = choice["text"]
                except (KeyError, IndexError, TypeError):
                    return Generation()
                if not token_mode:
                    return Generation.from_text(restore_stop(text, choice))
                got = token_ids_of(choice)
                if got is None:
                    raise EndpointError(f"{self.base_url} returned no token ids: token mode needs a server that "
                                        f"returns them (vLLM: logprobs with return_tokens_as_token_ids)")
                ids, logprobs = got
                g = Generation(ids, logprobs, self.tokenizer.decode(ids, skip_special_tokens=True))
                return cut_generation(g, self.tokenizer, STOP_STRINGS, self.eos)

            return list(await asyncio.gather(*(one(p) for p in prompts)))
