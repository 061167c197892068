"""Token in, token out: what every generation engine returns (`Generation`) and how a turn is cut.

RL is only on-policy when the learner scores exactly the tokens the sampler drew, under the
distribution it drew them from. So every engine (transformers in `router_r1.engines.hf`, vLLM in
`router_r1.engines.vllm`, an OpenAI-compatible endpoint in `router_r1.engines.endpoint`) takes
prompts as token ids and returns, per prompt, a `Generation`: the sampled ids, the sampler's
log-prob of each, the decoded text, and why it stopped. Nobody encodes policy text again; the
episode machine (`router_r1.env.episode`) appends the ids to the context as they are.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from router_r1.env.protocol import STOP_STRINGS

EOS = "eos"  # Generation.stop when the engine sampled an end-of-sequence token


class TurnFailed(Exception):
    """One turn, and only it, could not be generated (`cause`: a poisoned context): its
    request's problem, not the engine's. Raised by the engines that batch turns continuously
    (router_r1.engines.continuous, router_r1.engines.vllm_async); serving answers it with a 400."""

    def __init__(self, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass
class Generation:
    """One generated turn. `ids` are exactly the sampled tokens, ending with the token that
    completed the first stop string (or an EOS token); `logprobs[i]` is the sampler's log-prob of
    `ids[i]` (empty when the engine cannot report them, e.g. a text-only endpoint). `text` is the
    decoded ids (special tokens skipped). `stop`: the stop string that ended the turn, EOS, or
    None when the token budget ran out."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    stop: str | None = None

    @classmethod
    def from_text(cls, text: str, stops: Sequence[str] = STOP_STRINGS) -> Generation:
        """A text-only generation (no ids): cut after its first stop string."""
        s = first_stop(text, stops)
        if s is None:
            return cls(text=text)
        return cls(text=text[: text.find(s) + len(s)], stop=s)


def eos_ids(tokenizer, model_config=None) -> set[int]:
    """End-of-sequence ids: the tokenizer's, plus the model config's (Qwen2.5 instruct ends turns
    with <|im_end|> and may also emit <|endoftext|>). Never the generation_config's sampling."""
    eos = getattr(tokenizer, "eos_token_id", None)
    out = {eos} if eos is not None else set()
    cfg_eos = getattr(model_config, "eos_token_id", None) if model_config is not None else None
    out |= set(cfg_eos) if isinstance(cfg_eos, (list, tuple)) else ({cfg_eos} if cfg_eos is not None else set())
    return out


def stop_tail(stops: Sequence[str]) -> int:
    """How many last tokens can hold a stop string (a token is at least one byte), plus one: the
    ids an engine decodes after each sampled token to see whether the turn ended."""
    return max((len(s.encode()) for s in stops), default=0) + 1


def first_stop(text: str, stops: Sequence[str]) -> str | None:
    """The stop string that occurs first in `text` (None: none does)."""
    found = [(text.find(s), s) for s in stops if s in text]
    return min(found)[1] if found else None


def cut_generation(gen: Generation, tokenizer, stops: Sequence[str] = STOP_STRINGS,
                   eos: Iterable[int] = ()) -> Generation:
    """`gen` ending at its first stop: ids up to and including the token that completes the first
    stop string or the first EOS id, with their log-probs. Tokens after it were sampled but do not
    condition anything kept, so dropping them leaves the kept ones exactly as sampled. The stop
    token is found by bisection over decoded prefixes (a prefix's text only grows)."""
    ids, eos = gen.ids, set(eos)
    end, stop = len(ids), None
    for i, t in enumerate(ids):
        if t in eos:
            end, stop = i + 1, EOS
            break

    def stop_within(k: int) -> str | None:
        return first_stop(tokenizer.decode(ids[:k], skip_special_tokens=False), stops)

    if stops and stop_within(end) is not None:
        lo, hi = 1, end  # smallest k whose prefix holds a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            if stop_within(mid) is not None:
                hi = mid
            else:
                lo = mid + 1
        end, stop = lo, stop_within(lo)
    if end == len(ids) and stop == gen.stop and gen.text:
        return gen
    kept = ids[:end]
    return Generation(kept, gen.logprobs[:end], tokenizer.decode(kept, skip_special_tokens=True), stop)
