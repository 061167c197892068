"""The OpenAI chat-completions wire format, as the router app speaks it. Ray-free.

Every field of OpenAI's request (the list is read from the installed `openai` SDK's own request
params, `openai.types.chat.completion_create_params`, so it follows the SDK) is either honoured
with its OpenAI meaning or refused: a refused field that asks for something (`logprobs: true`,
`tools: [...]`, a `response_format` other than text, `n` above 1, ...) is a 400 with code
`unsupported_parameter` naming it, while its do-nothing value (`logprobs: false`, `null`) is
accepted. A field the SDK does not know, outside the router's own controls, is refused likewise
(`unknown_parameter`). With the operator option `serve.drop_params` (LiteLLM's convention) such
fields are dropped instead, and the response says which (header `x-router-r1-dropped-params`).
`FIELDS` is the table, docs/serving.md its rendering.

Parsing is strict where a wrong value would change what is billed or routed (types, ranges:
numbers must be JSON numbers, not numeric strings). A body nested deeper than `MAX_DEPTH` or
holding text that is not valid Unicode (a lone surrogate such as "\\ud800") is refused here, per
request, before it can reach a tokenizer shared by a batch. Every refusal is an `APIError`,
rendered as OpenAI's error body `{"error": {"message", "type", "param", "code"}}`.

Responses and stream chunks are built as the SDK's own types (`openai.types.chat.ChatCompletion`,
`ChatCompletionChunk`), so the wire format is the SDK's.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat import completion_create_params as _sdk_params
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.completion_usage import CompletionUsage
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictBool, StrictStr,
                      ValidationError)


class APIError(Exception):
    """A request the app refuses, with the status and OpenAI error fields to send back."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# -- which fields are honoured, which refused ------------------------------------------------------
def sdk_request_fields() -> frozenset[str]:
    """The request fields of the installed `openai` SDK's chat.completions.create."""
    names: set[str] = set()
    for cls in (_sdk_params.CompletionCreateParamsBase, _sdk_params.CompletionCreateParamsStreaming,
                _sdk_params.CompletionCreateParamsNonStreaming):
        names |= set(getattr(cls, "__annotations__", {}))
    return frozenset(names)


SDK_FIELDS = sdk_request_fields()


@dataclass(frozen=True)
class FieldRule:
    """What the app does with one request field. `honoured`: its OpenAI meaning (or, for the
    router's own controls, the meaning in `doc`). Otherwise the field is refused unless its value
    is one of `neutral` (the values that ask for nothing), or dropped under `serve.drop_params`."""

    honoured: bool
    doc: str
    neutral: tuple[Any, ...] = (None,)


_N = FieldRule
FIELDS: dict[str, FieldRule] = {
    # Honoured, with OpenAI's meaning.
    "model": _N(True, "must be the served name (`serve.model_name`); 404 `model_not_found` otherwise"),
    "messages": _N(True, "the conversation; the router answers the last user message (text parts "
                         "only: image, audio and file parts are refused)"),
    "stream": _N(True, "server-sent `chat.completion.chunk` events: route events as they happen, "
                       "the answer's tokens as the router writes them"),
    "stream_options": _N(True, "`include_usage` honoured (a last chunk with usage); "
                               "`include_obfuscation` accepted, no obfuscation field is sent"),
    "temperature": _N(True, "the router's sampling temperature (default `serve.temperature`, greedy)"),
    "top_p": _N(True, "the router's nucleus sampling"),
    "max_completion_tokens": _N(True, "bounds the answer's tokens (the router's tokenizer), not "
                                      "each router turn; cut answers end with finish_reason `length`"),
    "max_tokens": _N(True, "as `max_completion_tokens` (the smaller wins when both are given)"),
    "stop": _N(True, "up to 4 strings; the answer ends before the first one found, "
                     "finish_reason `stop`"),
    "seed": _N(True, "seeds the router's sampling: the same seed and request give the same "
                     "routes and answer (a seeded sampled request is generated alone, not batched)"),
    "n": _N(True, "1 only (the router gives one answer); n > 1 is refused", neutral=(None, 1)),
    "user": _N(True, "the end user: recorded with every routed call in the ledger (`end_user`) "
                     "and returned in `router_r1.end_user`"),
    "safety_identifier": _N(True, "as `user` (used when `user` is absent)"),
    "prompt_cache_key": _N(True, "accepted; a caching hint with no effect on the answer"),
    "prompt_cache_retention": _N(True, "accepted; a caching hint with no effect on the answer"),
    "prompt_cache_options": _N(True, "accepted; a caching hint with no effect on the answer"),
    # Refused unless neutral.
    "logprobs": _N(False, "token log-probabilities are not returned", (None, False)),
    "top_logprobs": _N(False, "token log-probabilities are not returned", (None, 0)),
    "frequency_penalty": _N(False, "the router samples without penalties", (None, 0)),
    "presence_penalty": _N(False, "the router samples without penalties", (None, 0)),
    "logit_bias": _N(False, "the router samples without logit biases", (None, {})),
    "response_format": _N(False, "only `{\"type\": \"text\"}`: the answer is free text", (None, {"type": "text"})),
    "tools": _N(False, "the router calls its candidate models, not client tools", (None,)),
    "tool_choice": _N(False, "no client tools", (None, "none")),
    "parallel_tool_calls": _N(False, "no client tools", (None,)),
    "functions": _N(False, "no client functions (deprecated by OpenAI)", (None,)),
    "function_call": _N(False, "no client functions (deprecated by OpenAI)", (None, "none")),
    "audio": _N(False, "text only", (None,)),
    "modalities": _N(False, "text only", (None, ["text"])),
    "prediction": _N(False, "no predicted outputs", (None,)),
    "store": _N(False, "completions are not stored for later retrieval", (None, False)),
    "metadata": _N(False, "only with `store`, which is refused", (None, {})),
    "service_tier": _N(False, "one tier", (None, "auto", "default")),
    "reasoning_effort": _N(False, "the router's deliberation is not tunable", (None,)),
    "verbosity": _N(False, "not tunable", (None,)),
    "web_search_options": _N(False, "no web search", (None,)),
    "moderation": _N(False, "no moderation", (None,)),
}
# The router's own controls (clients send them as `extra_body`).
ROUTER_FIELDS: dict[str, str] = {
    "max_turns": "routed calls before the forced final turn (<= `serve.max_turns_limit`)",
    "models": "allowed candidate subset (names or aliases)",
    "max_cost_usd": "cost cap for this request",
    "return_trace": "include `trace` and `router_text` in `router_r1` (default true)",
    "max_turn_tokens": "tokens per router turn (<= `serve.max_new_tokens_limit`)",
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality (so `0` is not `false`)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def field_verdict(name: str, value: Any) -> tuple[str, str] | None:
    """None when the app takes `name: value`; else (code, message) of the refusal."""
    if name in ROUTER_FIELDS:
        return None
    rule = FIELDS.get(name)
    if rule is None:
        if name in SDK_FIELDS:  # a field of a newer SDK than this table: refused unless null
            rule = FieldRule(False, "not supported by this server")
        else:
            return ("unknown_parameter", f"Unrecognized request argument supplied: {name}")
    if any(_same(value, v) for v in rule.neutral):
        return None
    if rule.honoured:
        if name != "n":
            return None
        return ("unsupported_parameter", f"Unsupported value for 'n': {value!r}; {rule.doc}")
    return ("unsupported_parameter", f"Unsupported parameter: '{name}' ({rule.doc}). Accepted value(s): "
            + ", ".join(json.dumps(v) for v in rule.neutral))


def _json_int(v: Any) -> Any:
    """A JSON integer: `2` or `2.0` (JSON Schema counts both as integers), never "2" or true."""
    if isinstance(v, (str, bool)):
        raise ValueError("must be a JSON integer, not a string or boolean")
    return int(v) if isinstance(v, float) and v.is_integer() else v


def json_int(ge: int | None = None, le: int | None = None) -> Any:
    """A JSON integer with bounds, published as JSON Schema's `minimum`/`maximum`. The bounds go
    on `int` before the validator: given after it (or to the field) they leak into the schema as
    pydantic's own `ge`/`le`, which no JSON Schema tool reads."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_json_int)]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: StrictStr


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: accepted as history

    def text(self) -> str:
        content = getattr(self, "content", None)
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(p.text for p in content)


Content = Union[StrictStr, Annotated[list[ContentPart], Field(min_length=1)]]
NonEmptyContent = Union[Annotated[StrictStr, Field(min_length=1)], Annotated[list[ContentPart], Field(min_length=1)]]


class SystemMessage(_Message):
    role: Literal["system"]
    content: Content


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: Content


class UserMessage(_Message):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: Content | None = None


class ToolMessage(_Message):
    """A tool's reply in the history: OpenAI requires its content and the call it answers."""

    role: Literal["tool"]
    content: NonEmptyContent
    tool_call_id: StrictStr


ChatMessage = Annotated[Union[SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage],
                        Field(discriminator="role")]
ROLES = ("system", "developer", "user", "assistant", "tool")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False
    include_obfuscation: StrictBool = True  # accepted; no obfuscation field is sent


class ChatCompletionRequest(BaseModel):
    """The fields the app honours, plus the router's own controls. Numbers are strict:
    `"temperature": "0.5"` and `"max_tokens": "16"` are refused (`16.0` is an integer in JSON
    Schema, so it is taken). Refused and unknown fields never get here (`parse_request`)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    model: StrictStr = Field(examples=["router-r1"])
    messages: list[ChatMessage] = Field(min_length=1, examples=[[{"role": "user", "content": "Who discovered Orvium?"}]])
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, strict=True)
    max_tokens: json_int(ge=1) | None = None  # bounds the answer
    max_completion_tokens: json_int(ge=1) | None = None
    stop: Annotated[StrictStr, Field(min_length=1)] | Annotated[
        list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=4)] | None = None
    seed: json_int() | None = None
    n: json_int(ge=1, le=1) | None = None  # one answer
    user: StrictStr | None = Field(default=None, max_length=256)
    safety_identifier: StrictStr | None = Field(default=None, max_length=256)
    prompt_cache_key: StrictStr | None = None
    prompt_cache_retention: StrictStr | None = None
    prompt_cache_options: dict[str, Any] | None = None
    # Router controls.
    max_turns: json_int(ge=0) | None = None  # routed calls before the final turn
    models: list[StrictStr] | None = Field(default=None, min_length=1)  # allowed candidate subset (names or aliases)
    # Cost cap for this request: finite (Python's JSON reader takes `Infinity`, which is no cap).
    max_cost_usd: float | None = Field(default=None, ge=0.0, strict=True, allow_inf_nan=False)
    return_trace: StrictBool = True
    max_turn_tokens: json_int(ge=1) | None = None  # tokens per router turn

    _dropped: list[str] = PrivateAttr(default_factory=list)

    @property
    def dropped(self) -> list[str]:
        """Fields left out under `serve.drop_params` (for the response header)."""
        return self._dropped

    @property
    def answer_max_tokens(self) -> int | None:
        given = [x for x in (self.max_tokens, self.max_completion_tokens) if x is not None]
        return min(given) if given else None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def end_user(self) -> str | None:
        return self.user or self.safety_identifier or None

    def question(self) -> str:
        """The last user message: what the router answers."""
        for m in reversed(self.messages):
            if m.role == "user":
                q = m.text()
                if q.strip():
                    return q
                break
        raise APIError(400, "the last user message is empty or missing; nothing to answer",
                       param="messages", code="invalid_value")


MAX_DEPTH = 32  # a chat request is a few levels deep; anything deeper is refused, not recursed


def parse_request(raw: bytes, drop_params: bool = False) -> ChatCompletionRequest:
    """Bytes of a POST body -> a validated request, or an `APIError` (400) naming the field.
    Refused fields (`FIELDS`) are a 400, or with `drop_params` left out and listed in
    `request.dropped`."""
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
    dropped: list[str] = []
    for name in list(data):
        verdict = field_verdict(name, data[name])
        if verdict is not None:
            if not drop_params:
                raise APIError(400, verdict[1], param=name, code=verdict[0])
            dropped.append(name)
            del data[name]
        elif name not in ChatCompletionRequest.model_fields:
            del data[name]  # a refused field at its do-nothing value
    dropped += _check_content_parts(data.get("messages"), drop_params)
    try:
        req = ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = list(err["loc"])
        if len(loc) > 2 and loc[0] == "messages" and loc[2] in ROLES:
            del loc[2]  # the union's tag: the client's path is messages.<i>.<field>
        param = ".".join(str(p) for p in loc) or None
        why = err["msg"].removeprefix("Value error, ")
        msg = f"invalid value for '{param}': {why}" if param else why
        if len(e.errors()) > 1:
            msg += f" (and {len(e.errors()) - 1} more problem(s))"
        raise APIError(400, msg, param=param, code="invalid_value") from None
    req._dropped = dropped
    return req


def _check_content_parts(messages: Any, drop_params: bool) -> list[str]:
    """Image, audio and file parts are refused (the router reads text), or dropped."""
    dropped: list[str] = []
    if not isinstance(messages, list):
        return dropped
    for i, m in enumerate(messages):
        parts = m.get("content") if isinstance(m, dict) else None
        if not isinstance(parts, list):
            continue
        keep = []
        for j, p in enumerate(parts):
            kind = p.get("type") if isinstance(p, dict) else None
            if isinstance(kind, str) and kind != "text":
                if not drop_params:
                    raise APIError(400, f"Unsupported content part type {kind!r} in messages[{i}]: the "
                                   "router reads text only", param=f"messages.{i}.content.{j}.type",
                                   code="unsupported_parameter")
                dropped.append(f"messages.{i}.content.{j}")
                continue
            keep.append(p)
        if len(keep) != len(parts):
            m["content"] = keep or ""
    return dropped


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


# -- the published schema ------------------------------------------------------------------------
def request_schema(limits: Any = None) -> dict[str, Any]:
    """The JSON schema of a chat request, self-contained (no $refs), for the OpenAPI document:
    the route reads its body raw (to answer malformed JSON in OpenAI's error shape), so FastAPI
    cannot infer it. Refused fields are listed with only their do-nothing values, unknown fields
    are not allowed (both open up under `drop_params`). `limits` (a ServeConfig) adds one server's
    own bounds: its model name, max_turns and max_turn_tokens limits."""
    schema = ChatCompletionRequest.model_json_schema()
    props = schema["properties"]
    drop = bool(getattr(limits, "drop_params", False))
    for name, rule in FIELDS.items():
        if name not in props:
            props[name] = {"description": f"refused unless neutral: {rule.doc}"}
            if not drop:
                props[name]["enum"] = list(rule.neutral)
    if not drop:
        schema["additionalProperties"] = False
    else:
        schema.pop("additionalProperties", None)
    if limits is not None:
        props["model"]["examples"] = [limits.model_name]
        for field, top in (("max_turns", limits.max_turns_limit), ("max_turn_tokens", limits.max_new_tokens_limit)):
            for alt in props[field].get("anyOf", [props[field]]):
                if alt.get("type") == "integer":
                    alt["maximum"] = top
    defs = schema.pop("$defs", {})

    def inline(x: Any) -> Any:
        if isinstance(x, dict):
            if set(x) == {"$ref"}:
                return inline(defs[x["$ref"].rsplit("/", 1)[-1]])
            out = {k: inline(v) for k, v in x.items()}
            if "discriminator" in out and isinstance(out["discriminator"].get("mapping"), dict):
                out.pop("discriminator")  # its mapping points into $defs, which are inlined
            return out
        if isinstance(x, list):
            return [inline(v) for v in x]
        return x

    return inline(schema)


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
ERROR_STATUSES = {400: "malformed or invalid request, an unsupported parameter (unsupported_parameter), or a "
                       "prompt longer than the router's limits (context_length_exceeded)",
                  401: "missing or unknown API key", 404: "unknown model or candidate model",
                  413: "request body larger than serve.max_body_bytes",
                  429: "the tenant's budget is spent (insufficient_quota)",
                  500: "internal error",
                  502: "the router gave no valid answer and no fallback model is configured (or it failed)",
                  503: "no candidate model could answer",
                  504: "the router did not finish in time"}


def error_responses(statuses: dict[int, str] = ERROR_STATUSES) -> dict[int, dict[str, Any]]:
    """OpenAPI `responses` for the errors a route can answer, all in OpenAI's error shape."""
    return {code: {"description": why, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for code, why in statuses.items()}


# A chat completion is JSON, or server-sent events when the request has `stream: true`.
COMPLETION_RESPONSE = {200: {"description": "a chat.completion, or chat.completion.chunk events (stream)",
                             "content": {"application/json": {}, "text/event-stream": {}}}}


# -- responses, as the SDK's types ----------------------------------------------------------------
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


def completion_body(cid: str, model: str, answer: str, finish_reason: str,
                    usage: dict[str, int], extra: dict[str, Any] | None) -> dict[str, Any]:
    """A `chat.completion` (openai.types.chat.ChatCompletion); `extra` is the `router_r1` field."""
    kw = {"router_r1": extra} if extra is not None else {}
    return _dump(ChatCompletion(
        id=cid, object="chat.completion", created=int(time.time()), model=model,
        choices=[Choice(index=0, message=ChatCompletionMessage(role="assistant", content=answer, refusal=None),
                        finish_reason=finish_reason, logprobs=None)],
        usage=CompletionUsage(**usage), **kw))


def chunk_body(cid: str, model: str, created: int, delta: dict[str, Any] | None,
               finish_reason: str | None = None, extra: dict[str, Any] | None = None,
               usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk` (openai.types.chat.ChatCompletionChunk). `delta=None` makes the
    usage-only chunk (empty choices)."""
    kw: dict[str, Any] = {}
    if usage is not None:
        kw["usage"] = CompletionUsage(**usage)
    if extra is not None:
        kw["router_r1"] = extra
    choices = [] if delta is None else [ChunkChoice(index=0, delta=ChoiceDelta(**delta),
                                                    finish_reason=finish_reason, logprobs=None)]
    return _dump(ChatCompletionChunk(id=cid, object="chat.completion.chunk", created=created, model=model,
                                     choices=choices, **kw))


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event line pair."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
