"""The Router-R1 text protocol: tags, parser, format validator, and reply neutralisation.

A trajectory is a sequence of blocks:

    <think>...</think> (<search>Model: query</search> <information>...</information> <think>...</think>)*
    <answer>...</answer>

The router writes think/search/answer; the environment inserts <information> after each search.
Replies from candidate models are untrusted: `neutralize` escapes any protocol tag in them, so a
reply can never close the information block, forge an answer, or start a route.

The validator matches the reference implementation's `format_reward` (ulab-uiuc/Router-R1,
`verl/trainer/main_ppo.py`) rule for rule, each rule named by a `Violation`. The checks where we
were stricter than the reference are `FormatRules` options, all off by default
(docs/training.md, "Format rules").
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from pydantic import BaseModel, ConfigDict

from router_r1.pool.descriptors import PoolSpec

TAGS = ("think", "search", "answer", "information")
_TAG = re.compile(r"<(/?)(think|search|answer|information)>")
# Anything a lenient reader might take for a protocol tag: any case, spaces, attributes.
_TAG_LIKE = re.compile(r"<\s*/?\s*(?:think|search|answer|information)\b[^<>]*>?", re.IGNORECASE)
STOP_STRINGS = ("</search>", "</answer>")


class Violation(str, Enum):
    """Every way a trajectory can break the protocol. Names are stable: metrics use them.

    Reference rules (always on): NO_LEADING_THINK, EMPTY_THINK, UNBALANCED_TAG, NESTED_TAG,
    MULTIPLE_ANSWERS, NO_ANSWER, TEXT_AFTER_ANSWER, MALFORMED_ROUTE, PLACEHOLDER_ROUTE,
    QUERY_REPEATS_MODEL, UNKNOWN_MODEL, ROUTE_INFORMATION_MISMATCH. Ours, opt-in through
    `FormatRules`: ROUTE_WITHOUT_INFORMATION, INFORMATION_WITHOUT_ROUTE,
    NO_THINK_AFTER_INFORMATION, STRAY_TEXT, EMPTY_ANSWER.
    """

    NO_LEADING_THINK = "no_leading_think"  # the text does not start with <think>
    EMPTY_THINK = "empty_think"  # a think block whose content is empty or '...'
    UNBALANCED_TAG = "unbalanced_tag"
    NESTED_TAG = "nested_tag"
    MULTIPLE_ANSWERS = "multiple_answers"
    ROUTE_INFORMATION_MISMATCH = "route_information_mismatch"  # #search blocks != #information
    ROUTE_WITHOUT_INFORMATION = "route_without_information"
    INFORMATION_WITHOUT_ROUTE = "information_without_route"
    NO_THINK_AFTER_INFORMATION = "no_think_after_information"
    UNKNOWN_MODEL = "unknown_model"
    MALFORMED_ROUTE = "malformed_route"  # not exactly one colon, or an empty model or query
    PLACEHOLDER_ROUTE = "placeholder_route"  # the prompt's template text, e.g. 'LLM-Name:Your-Query'
    QUERY_REPEATS_MODEL = "query_repeats_model"  # the query contains the model name written
    EMPTY_ANSWER = "empty_answer"
    TEXT_AFTER_ANSWER = "text_after_answer"
    STRAY_TEXT = "stray_text"
    NO_ANSWER = "no_answer"


class FormatRules(BaseModel):
    """Checks stricter than the reference `format_reward`; each off by default, so the default
    validator (and the -1 format penalty) is the paper's. `reward.format_rules` in a run config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # route_without_information / information_without_route: each <search> directly followed by
    # its <information>, each <information> directly after a <search>. The reference only counts.
    strict_pairing: bool = False
    # no_think_after_information: a <think> after every <information>, before the next route or
    # the answer (what the prompt asks; the reference does not check it).
    think_after_information: bool = False
    # stray_text: no text between blocks (the reference only checks the start and the end).
    no_stray_text: bool = False
    # empty_answer: '<answer></answer>' is a format violation (the reference scores it 0, not -1).
    nonempty_answer: bool = False


# Template text a route must not copy: the reference prompt's 'LLM-Name:Your-Query' (checked as
# substrings by its format_reward) and ours, router_r1.env.prompt ('Model-Name: your sub-question').
ROUTE_PLACEHOLDERS = ("llm-name", "your-query", "model-name", "your sub-question")


@dataclass(frozen=True)
class Block:
    tag: str  # one of TAGS
    content: str
    start: int  # offset of the opening tag in the text
    end: int  # offset just past the closing tag


@dataclass(frozen=True)
class Route:
    """A parsed <search>Model: query</search>. `model`/`query` are stripped; None if malformed."""

    model: str | None
    query: str | None
    raw: str

    @property
    def ok(self) -> bool:
        return bool(self.model) and bool(self.query)


@dataclass
class Parsed:
    blocks: list[Block] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def format_ok(self) -> bool:
        return not self.violations

    @property
    def answer(self) -> str | None:
        """The last answer block's content, stripped; None if there is none."""
        for b in reversed(self.blocks):
            if b.tag == "answer":
                return b.content.strip()
        return None

    @property
    def routes(self) -> list[Route]:
        return [parse_route(b.content) for b in self.blocks if b.tag == "search"]


def parse_route(content: str) -> Route:
    """'Model-Name: sub-query' -> Route. The first colon separates model from query."""
    if ":" not in content:
        return Route(None, None, content)
    model, query = content.split(":", 1)
    return Route(model.strip() or None, query.strip() or None, content)


def route_violations(content: str, pool: PoolSpec | None = None) -> list[Violation]:
    """What is wrong with one <search> block's content, after the reference's query checks:
    exactly one colon with a model before it and a query after it (`malformed_route`), no template
    placeholder anywhere in it (`placeholder_route`), a query that does not contain the model name
    as written, case-insensitively (`query_repeats_model`), and, given a pool, a model it knows
    (`unknown_model`: display name or alias; the reference matches its fixed pool by substrings)."""
    out: list[Violation] = []
    r = parse_route(content)
    if content.count(":") != 1 or not r.ok:
        out.append(Violation.MALFORMED_ROUTE)
    low = content.lower()
    if any(p in low for p in ROUTE_PLACEHOLDERS):
        out.append(Violation.PLACEHOLDER_ROUTE)
    if r.ok and r.model.lower() in r.query.lower():  # type: ignore[union-attr]
        out.append(Violation.QUERY_REPEATS_MODEL)
    if r.model and pool is not None and pool.resolve(r.model) is None:
        out.append(Violation.UNKNOWN_MODEL)
    return out


_REFERENCE_RULES = FormatRules()


def _add(violations: list[Violation], v: Violation) -> None:
    if v not in violations:
        violations.append(v)


def parse(text: str, pool: PoolSpec | None = None, rules: FormatRules | None = None) -> Parsed:
    """Split `text` into blocks and list every protocol violation (each named once).

    With a pool, routes to models not in it are `unknown_model`. `rules` turns on the checks
    stricter than the reference (default: none).
    """
    rules = rules or _REFERENCE_RULES
    out = Parsed()
    v = out.violations
    open_tag: str | None = None
    open_at = content_at = 0
    pos = 0  # end of the last top-level element; text between elements is stray
    stray: list[tuple[int, str]] = []  # (offset, text) outside every block
    for m in _TAG.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2)
        if open_tag is None:
            stray.append((pos, text[pos:m.start()]))
            pos = m.end()
            if closing:
                _add(v, Violation.UNBALANCED_TAG)
            else:
                open_tag, open_at, content_at = tag, m.start(), m.end()
        elif closing and tag == open_tag:
            out.blocks.append(Block(tag, text[content_at:m.start()], open_at, m.end()))
            open_tag, pos = None, m.end()
        elif closing:
            _add(v, Violation.UNBALANCED_TAG)
        else:
            _add(v, Violation.NESTED_TAG)
    if open_tag is not None:
        _add(v, Violation.UNBALANCED_TAG)
    else:
        stray.append((pos, text[pos:]))

    answers = [i for i, b in enumerate(out.blocks) if b.tag == "answer"]
    answer_at = out.blocks[answers[0]].start if answers else len(text) + 1
    if rules.no_stray_text and any(t.strip() for at, t in stray if at < answer_at):
        _add(v, Violation.STRAY_TEXT)
    # The reference: text.strip() starts with '<think>'.
    if not out.blocks or out.blocks[0].tag != "think" or text[:out.blocks[0].start].strip():
        _add(v, Violation.NO_LEADING_THINK)
    for i, b in enumerate(out.blocks):
        prev = out.blocks[i - 1] if i > 0 else None
        nxt = out.blocks[i + 1] if i + 1 < len(out.blocks) else None
        if b.tag == "think" and b.content.strip() in ("", "..."):
            _add(v, Violation.EMPTY_THINK)
        elif b.tag == "search":
            for x in route_violations(b.content, pool):
                _add(v, x)
            if rules.strict_pairing and (nxt is None or nxt.tag != "information"):
                _add(v, Violation.ROUTE_WITHOUT_INFORMATION)
        elif b.tag == "information":
            if rules.strict_pairing and (prev is None or prev.tag != "search"):
                _add(v, Violation.INFORMATION_WITHOUT_ROUTE)
            if rules.think_after_information and nxt is not None and nxt.tag != "think":
                _add(v, Violation.NO_THINK_AFTER_INFORMATION)
        elif b.tag == "answer" and rules.nonempty_answer and not b.content.strip():
            _add(v, Violation.EMPTY_ANSWER)
    if sum(b.tag == "search" for b in out.blocks) != sum(b.tag == "information" for b in out.blocks):
        _add(v, Violation.ROUTE_INFORMATION_MISMATCH)
    if not answers:
        _add(v, Violation.NO_ANSWER)
    else:
        if len(answers) > 1:
            _add(v, Violation.MULTIPLE_ANSWERS)
        answer_end = out.blocks[answers[0]].end
        if len(out.blocks) > answers[0] + 1 or open_tag is not None or any(
                t.strip() for at, t in stray if at >= answer_end):
            _add(v, Violation.TEXT_AFTER_ANSWER)
    return out


def validate(text: str, pool: PoolSpec | None = None, rules: FormatRules | None = None
             ) -> list[Violation]:
    """Every format violation in a full trajectory, by name. Empty list = well formed."""
    return parse(text, pool, rules).violations


def extract_answer(text: str) -> str | None:
    """The last <answer> block's content, stripped, or None."""
    return parse(text).answer


def neutralize(reply: str) -> str:
    """Make untrusted text (a candidate model's reply) unable to forge protocol tags.

    Every tag-like sequence (any case, spacing or attributes) has its angle brackets replaced by
    HTML entities, e.g. '</information>' -> '&lt;/information&gt;'. The parser matches only
    literal tags, so nothing inside an information block can close it or start another block.
    """
    return _TAG_LIKE.sub(lambda m: m.group(0).replace("<", "&lt;").replace(">", "&gt;"), reply)


def first_tag(text: str) -> int:
    """Where the first protocol tag (or anything a lenient reader might take for one) starts in
    `text`, or -1."""
    m = _TAG_LIKE.search(text)
    return m.start() if m else -1


def information_block(reply: str) -> str:
    """The text inserted after a route: the neutralised reply inside information tags."""
    return f"\n\n<information>{neutralize(reply).strip()}</information>\n\n"


def cut_at_stop(text: str) -> tuple[str, str | None]:
    """Cut generated text just after the first stop string; return (text, stop or None)."""
    best: tuple[int, str] | None = None
    for s in STOP_STRINGS:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    if best is None:
        return text, None
    i, s = best
    return text[: i + len(s)], s
