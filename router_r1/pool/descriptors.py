"""The candidate pool: one YAML file describes every model the router may call.

A descriptor is all the router ever learns about a model (name, price, latency, size, a short
description with example performance), which is what lets a trained router be handed models it
never saw in training. The same file tells the ModelPool how to reach each model (`backend`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router_r1.util.redact import mask

BackendKind = Literal["openai", "vllm", "transformers", "replay", "simulated", "world"]
# Every descriptor model: unknown fields, inf/NaN numbers refused; a refused value is never echoed
# in the error (a key pasted into the wrong field must not reach the terminal or a log).
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # api_key_env: a conventional variable name
# Credentials that also pass as variable names: cloud access key ids (AKIA..., 20 characters) and
# any word of 16+ letters and digits mixing both (variable names are words joined by '_').
_KEY_LIKE = re.compile(r"(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{12,}")
_KEY_WORD = re.compile(r"(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{16,}")


def looks_like_key(value: str) -> bool:
    """True when a value meant as a variable name reads like a key (never print it then)."""
    return bool(_KEY_LIKE.fullmatch(value) or any(_KEY_WORD.fullmatch(w) for w in value.split("_")))


def env_label(name: str | None) -> str:
    """How a variable name is printed: as is, or masked when it reads like a key."""
    return "None" if name is None else (mask(name) if looks_like_key(name) else name)
URL_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


class Limits(BaseModel):
    """Per-model traffic limits enforced by the ModelPool. Out-of-range values are refused at
    load: a zero rate would otherwise fail every call at call time."""

    model_config = _STRICT

    requests_per_minute: float | None = Field(default=None, gt=0)  # token bucket; None = unlimited
    tokens_per_minute: float | None = Field(default=None, gt=0)  # bucket on prompt+completion tokens
    # Bucket capacities (largest burst). None: one second's worth of the rate, at least 1.
    burst_requests: float | None = Field(default=None, gt=0)
    burst_tokens: float | None = Field(default=None, gt=0)
    max_concurrency: int = Field(default=16, ge=1)  # calls in flight to this model at once
    timeout_s: float = Field(default=60.0, gt=0)  # per attempt
    max_attempts: int = Field(default=4, ge=1)  # first try + retries
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=20.0, ge=0)
    circuit_failures: int = Field(default=5, ge=1)  # consecutive failures that open the breaker
    circuit_cooldown_s: float = Field(default=30.0, ge=0)


class Backend(BaseModel):
    """How the ModelPool reaches one model. Fields not used by a kind are ignored by it."""

    model_config = _STRICT

    kind: BackendKind = "openai"
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_model: str | None = None  # id sent to the API / vLLM; defaults to the display name
    api_key_env: str | None = None  # name of the env var holding the key (never the key itself)
    checkpoint: str | None = None  # transformers / vllm: local checkpoint directory
    replay_source: str | None = None  # replay: table name or file the answers come from
    replay_column: str | None = None  # replay, world: the model's id in the recorded answers
    max_tokens: int = Field(default=256, ge=1)  # completion cap per call
    system_prompt: str | None = None  # prepended when the call is a bare query
    options: dict[str, Any] = Field(default_factory=dict)  # backend-specific extras

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        # The commonest slip is pasting the key itself here; say so without printing it.
        if v is not None and not ENV_NAME.fullmatch(v):
            raise ValueError(f"api_key_env must be the NAME of an environment variable (A-Z, 0-9, _), "
                             f"e.g. ROUTER_R1_API_KEY, not the key; got {mask(v)}")
        if v is not None and looks_like_key(v):  # e.g. AKIAIOSFODNN7EXAMPLE passes as a name
            raise ValueError(f"api_key_env must be the NAME of an environment variable, e.g. "
                             f"ROUTER_R1_API_KEY; got {mask(v)}, which looks like a key itself")
        return v

    @model_validator(mode="after")
    def _url_vars_set(self) -> "Backend":
        # `${VAR}` without a default and VAR unset would send every call to a broken URL.
        if self.kind == "openai" and self.base_url:
            unset = [m.group(1) for m in URL_VAR.finditer(self.base_url)
                     if m.group(2) is None and not os.environ.get(m.group(1))]
            if unset:
                raise ValueError(f"base_url uses ${{{unset[0]}}}, which is not set in the environment "
                                 f"(set it, or give a default: ${{{unset[0]}:-http://...}})")
        return self

    def key_missing(self) -> bool:
        """True when the model needs an API key from a variable that is unset or empty."""
        return bool(self.kind == "openai" and self.api_key_env and not os.environ.get(self.api_key_env))


class ModelDescriptor(BaseModel):
    """One candidate model. Prices are USD per 1M tokens."""

    model_config = _STRICT

    name: str = Field(min_length=1, pattern=r"\S")  # what the router writes in <search>Name: ...</search>
    aliases: list[str] = Field(default_factory=list)
    price_in: float = Field(ge=0)  # USD per 1M prompt tokens
    price_out: float = Field(ge=0)  # USD per 1M completion tokens
    latency_s: float = Field(default=1.0, ge=0)  # typical seconds per call
    params_b: float | None = Field(default=None, ge=0)  # parameter count, billions
    description: str = ""
    seen_in_training: bool = True
    backend: Backend = Field(default_factory=Backend)
    limits: Limits = Field(default_factory=Limits)
    fallback: str | None = None  # name of a model to try when this one finally fails

    @model_validator(mode="before")
    @classmethod
    def _single_price(cls, data: Any) -> Any:
        # Many providers quote one price; `price` fills both sides.
        if isinstance(data, dict) and "price" in data:
            data = dict(data)
            p = data.pop("price")
            data.setdefault("price_in", p)
            data.setdefault("price_out", p)
        return data

    def keys(self) -> list[str]:
        return [_norm(self.name), *(_norm(a) for a in self.aliases)]


def _norm(name: str) -> str:
    return name.strip().casefold()


class PoolSpec(BaseModel):
    """The whole candidate pool, loaded from one descriptor file."""

    model_config = _STRICT

    name: str = "pool"
    models: list[ModelDescriptor] = Field(min_length=1)
    # Options shared by every model of one backend kind, e.g. the simulated world's seed or the
    # replay tables' location: {"simulated": {"seed": 0}, "replay": {"source": "..."}}.
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source_dir: str | None = None  # folder of the descriptor file; relative paths resolve here

    @model_validator(mode="after")
    def _unique_names(self) -> "PoolSpec":
        seen: dict[str, str] = {}
        for i, m in enumerate(self.models):
            for k in dict.fromkeys(m.keys()):  # a model may repeat its own name as an alias
                if k in seen:
                    other = seen[k]
                    raise ValueError(f"name or alias {k!r} used by both {other!r} and {m.name!r}"
                                     if other != m.name else f"model {m.name!r} is listed twice")
                seen[k] = m.name
        for m in self.models:
            if m.fallback is not None and self.resolve(m.fallback) is None:
                raise ValueError(f"model {m.name!r}: fallback {m.fallback!r} is not in the pool")
        return self

    def resolve(self, name: str) -> ModelDescriptor | None:
        """Exact match on display name or alias, case-insensitive after trimming. Nothing fuzzier."""
        key = _norm(name)
        for m in self.models:
            if key in m.keys():
                return m
        return None

    def __getitem__(self, name: str) -> ModelDescriptor:
        m = self.resolve(name)
        if m is None:
            raise KeyError(f"model {name!r} is not in pool {self.name!r} ({', '.join(self.names)})")
        return m

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def subset(self, names: list[str]) -> "PoolSpec":
        """The pool restricted to `names` (display names or aliases), in pool order."""
        keep = {self[n].name for n in names}
        return self.model_copy(update={"models": [m for m in self.models if m.name in keep]})

    def seen(self) -> "PoolSpec":
        """The training view: only the models marked as seen in training. Training shows and calls
        nothing else (prompt, warm-start traces, routes); evaluation and serving use the whole pool."""
        models = [m for m in self.models if m.seen_in_training]
        if not models:
            raise ValueError(f"pool {self.name!r}: no model is seen_in_training; training needs at least one")
        return self.model_copy(update={"models": models})

    def kinds(self) -> set[str]:
        return {m.backend.kind for m in self.models}

    def resolve_path(self, p: str) -> str:
        """A path from the descriptor file, made absolute against that file's folder."""
        q = Path(p).expanduser()
        return str(q if q.is_absolute() or self.source_dir is None else Path(self.source_dir) / q)


def load_pool(path: str | Path) -> PoolSpec:
    """Load and validate a descriptor file; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"model descriptor file not found: {path}") from None
    except yaml.YAMLError as e:  # where and what, not the offending line (it may hold a secret)
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or type(e).__name__}") from None
    if not isinstance(raw, dict) or "models" not in raw:
        raise ValueError(f"{path}: expected a mapping with a 'models' list")
    raw.setdefault("name", path.stem)
    raw.setdefault("source_dir", str(path.resolve().parent))
    try:
        return PoolSpec.model_validate(raw)
    except ValidationError as e:  # one line naming the file and each bad field
        raise ValueError(f"{path}: invalid model descriptors: {one_line(e, raw)}") from None


def one_line(e: ValidationError, raw: Any = None) -> str:
    """A pydantic error as one line: `models[2] 'Name'.limits.timeout_s: must be > 0; ...`.
    Inputs are never echoed (the models hide them), so a misplaced key cannot leak here."""
    parts = []
    for err in e.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int) and isinstance(raw, dict):
            models = raw.get("models")
            m = models[loc[1]] if isinstance(models, list) and loc[1] < len(models) else None
            name = m.get("name") if isinstance(m, dict) else None
            head = f"models[{loc[1]}]" + (f" {name!r}" if isinstance(name, str) else "")
            where = ".".join([head, *(str(p) for p in loc[2:])])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
