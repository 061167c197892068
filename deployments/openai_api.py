"""The OpenAI chat-completions wire format, as the router app speaks it. Ray-free.

Request parsing is strict where a wrong value would change what is billed or routed (types,
ranges, unknown router controls: numbers must be JSON numbers, not numeric strings; `n` must be
1) and lenient where OpenAI clients send fields a router has no use for (`user`, `stop`, ... are
accepted and ignored). A body nested deeper than `MAX_DEPTH` or holding text that is not valid
Unicode (a lone surrogate such as "\ud800") is refused here, per request, before it can reach a
tokenizer shared by a batch. Every refusal is an `APIError`, rendered as OpenAI's error body
`{"error": {"message", "type", "param", "code"}}` with its HTTP status.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, field_validator


class APIError(Exception):
    """A request the app refuses, with the status and OpenAI error fields to send back."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def _json_int(v: Any) -> Any:
    """A JSON integer: `2` or `2.0` (JSON Schema counts both as integers), never "2" or true."""
    if isinstance(v, (str, bool)):
        raise ValueError("must be a JSON integer, not a string or boolean")
    return int(v) if isinstance(v, float) and v.is_integer() else v


JsonInt = Annotated[int, BeforeValidator(_json_int)]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: accepted, unused

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's body plus the router's own controls (sent by clients as `extra_body`).
    Numbers are strict: `"temperature": "0.5"` and `"max_tokens": "16"` are refused (`16.0` is
    an integer in JSON Schema, so it is taken)."""

    model_config = ConfigDict(extra="allow", strict=False)

    model: str = Field(examples=["router-r1"])
    messages: list[ChatMessage] = Field(min_length=1, examples=[[{"role": "user", "content": "Who discovered Orvium?"}]])
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, strict=True)
    max_tokens: JsonInt | None = Field(default=None, ge=1)  # per router turn
    max_completion_tokens: JsonInt | None = Field(default=None, ge=1)
    seed: JsonInt | None = None
    n: JsonInt | None = Field(default=None, json_schema_extra={"minimum": 1, "maximum": 1})  # one answer
    # Router controls.
    max_turns: JsonInt | None = Field(default=None, ge=0)  # routed calls before the final turn
    models: list[str] | None = Field(default=None, min_length=1)  # allowed candidate subset (names or aliases)
    # Cost cap for this request: finite (Python's JSON reader takes `Infinity`, which is no cap).
    max_cost_usd: float | None = Field(default=None, ge=0.0, strict=True, allow_inf_nan=False)
    return_trace: StrictBool = True

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported: the router gives one answer per request")
        return v

    def question(self) -> str:
        """The last user message: what the router answers (earlier turns are not routed)."""
        for m in reversed(self.messages):
            if m.role == "user":
                q = m.text()
                if q.strip():
                    return q
                break
        raise APIError(400, "the last user message is empty or missing; nothing to answer",
                       param="messages", code="invalid_value")


MAX_DEPTH = 32  # a chat request is a few levels deep; anything deeper is refused, not recursed


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """Bytes of a POST body -> a validated request, or an `APIError` (400) naming the field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, f"request body is nested deeper than {MAX_DEPTH} levels",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    _check_tree(data)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        why = err["msg"].removeprefix("Value error, ")
        msg = f"invalid value for '{param}': {why}" if param else why
        if len(e.errors()) > 1:
            msg += f" (and {len(e.errors()) - 1} more problem(s))"
        raise APIError(400, msg, param=param, code="invalid_value") from None


def _check_tree(data: Any) -> None:
    """Depth and Unicode of a parsed body, walked without recursion: every string (keys too)
    must encode as UTF-8, so no tokenizer, log line or JSON reply fails on it later."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, f"request body is nested deeper than {MAX_DEPTH} levels",
                           param=path or None, code="invalid_json")
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            where = f"{path}.{k}" if path else str(k)
            for s in (k, v):
                if isinstance(s, str):
                    try:
                        s.encode("utf-8")
                    except UnicodeEncodeError:
                        raise APIError(400, f"invalid value for '{where.encode('utf-8', 'replace').decode()}': "
                                       "text is not valid Unicode (a lone surrogate such as \\ud800)",
                                       param=where.encode("utf-8", "replace").decode(),
                                       code="invalid_value") from None
            if isinstance(v, (dict, list)):
                stack.append((v, where, depth + 1))


def request_schema(limits: Any = None) -> dict[str, Any]:
    """The JSON schema of a chat request, self-contained (no $refs), for the OpenAPI document:
    the route reads its body raw (to answer malformed JSON in OpenAI's error shape), so FastAPI
    cannot infer it. `limits` (a ServeConfig) adds one server's own bounds: its model name,
    max_turns and max_tokens limits."""
    schema = ChatCompletionRequest.model_json_schema()
    if limits is not None:
        props = schema["properties"]
        props["model"]["examples"] = [limits.model_name]
        for field, top in (("max_turns", limits.max_turns_limit), ("max_tokens", limits.max_new_tokens_limit),
                           ("max_completion_tokens", limits.max_new_tokens_limit)):
            for alt in props[field].get("anyOf", [props[field]]):
                if alt.get("type") == "integer":
                    alt["maximum"] = top
    defs = schema.pop("$defs", {})

    def inline(x: Any) -> Any:
        if isinstance(x, dict):
            if set(x) == {"$ref"}:
                return inline(defs[x["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in x.items()}
        if isinstance(x, list):
            return [inline(v) for v in x]
        return x

    return inline(schema)


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
ERROR_STATUSES = {400: "malformed or invalid request", 401: "missing or unknown API key",
                  402: "the tenant's budget is spent", 404: "unknown model or candidate model",
                  413: "prompt longer than the router's limits", 500: "internal error",
                  503: "no candidate model could answer", 504: "the router did not finish in time"}


def error_responses(statuses: dict[int, str] = ERROR_STATUSES) -> dict[int, dict[str, Any]]:
    """OpenAPI `responses` for the errors a route can answer, all in OpenAI's error shape."""
    return {code: {"description": why, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for code, why in statuses.items()}


# A chat completion is JSON, or server-sent events when the request has `stream: true`.
COMPLETION_RESPONSE = {200: {"description": "a chat.completion, or chat.completion.chunk events (stream)",
                             "content": {"application/json": {}, "text/event-stream": {}}}}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(cid: str, model: str, answer: str, finish_reason: str,
                    usage: dict[str, int], extra: dict[str, Any] | None) -> dict[str, Any]:
    body = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage}
    if extra is not None:
        body["router_r1"] = extra
    return body


def chunk_body(cid: str, model: str, created: int, delta: dict[str, Any] | None,
               finish_reason: str | None = None, extra: dict[str, Any] | None = None,
               usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk`. `delta=None` makes the usage-only chunk (empty choices)."""
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": []}
    if delta is not None:
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                            "logprobs": None}]
    if usage is not None:
        body["usage"] = usage
    if extra is not None:
        body["router_r1"] = extra
    return body


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event line pair."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
