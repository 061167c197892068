"""ReplayBackend: real models' recorded answers, looked up by question (no network, no GPU).

The key is the question: the last user message, whitespace-collapsed, must be a prompt of one of
the replay tables (RouterBench or RouteLLM, see router_r1.worlds.replay.tables). The reply is that model's
recorded response, and the cost billed is the recorded one (`BackendReply.cost_usd`); a source
without costs (RouteLLM GSM8K) leaves it to the pool to price from the descriptor and token
estimates. A question or a model the tables do not have is a non-retryable INVALID_REQUEST: a
lookup miss says nothing about the model's health, so it must not trip the circuit breaker.

Options (pool YAML `backends: {replay: {...}}` or per call of `make_backend`):
    sources: [paths]   tables to load; relative paths resolve against the YAML's folder, then
                       against the shared data folder (ROUTER_R1_DATA_DIR or <repo>/../shared/data)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router_r1.pool.backends.base import BackendError, BackendReply, Message, ModelBackend
from router_r1.pool.cost import estimate_prompt_tokens, estimate_tokens
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.pool.types import CallStatus
from router_r1.worlds.replay.tables import ReplayTable, model_ids, resolve_data_path


class ReplayBackend(ModelBackend):
    recorded_usage = True  # recorded answers and costs: replayed as they were, never capped
    kind, source = "replay", "the replay tables"  # what its errors name (world: router_r1.worlds.backend)

    def __init__(self, pool: PoolSpec, *, sources: Sequence[str] | str = (),
                 table: ReplayTable | None = None):
        """`table`: an already loaded table (evaluation shares one); else `sources` are loaded,
        together with each descriptor's own `backend.replay_source`."""
        if isinstance(sources, str):
            sources = [sources]
        paths = [resolve_data_path(p, pool) for p in sources]
        paths += [resolve_data_path(m.backend.replay_source, pool) for m in pool.models
                  if m.backend.kind == "replay" and m.backend.replay_source]
        paths = list(dict.fromkeys(str(p) for p in paths))
        if table is None and not paths:
            raise ValueError("replay backend: no tables; set backends.replay.sources in the pool file")
        self.table = table if table is not None else ReplayTable.from_files(paths)
        self.columns = model_ids(pool, self.table.models)

    async def complete(self, model: ModelDescriptor, messages: list[Message],
                       params: dict[str, Any]) -> BackendReply:
        column = self.columns.get(model.name)
        if column is None:
            raise BackendError(CallStatus.INVALID_REQUEST,
                               f"{self.kind}: model {model.name!r} has no column in {self.source} "
                               f"(known: {', '.join(self.table.models)})", retryable=False)
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
        sample = None if question is None else self.table.lookup(question)
        if sample is None:
            head = (question or "")[:80].replace("\n", " ")
            raise BackendError(CallStatus.INVALID_REQUEST,
                               f"{self.kind}: question not in {self.source}: {head!r}", retryable=False)
        ans = sample.answers.get(column)
        if ans is None or ans.response is None:
            raise BackendError(CallStatus.INVALID_REQUEST,
                               f"{self.kind}: {column!r} has no recorded answer to sample "
                               f"{sample.sample_id!r}", retryable=False)
        text = ans.response
        # Token counts are the recorded ones, else estimates; the recorded reply is never cut.
        return BackendReply(text=text,
                            prompt_tokens=(ans.prompt_tokens if ans.prompt_tokens is not None
                                           else estimate_prompt_tokens(messages)),
                            completion_tokens=(ans.completion_tokens if ans.completion_tokens is not None
                                               else estimate_tokens(text)),
                            cost_usd=ans.cost,
                            meta={"sample_id": sample.sample_id, "correct": ans.correct,
                                  "replay_model": column})

