"""The simulator's language: relations, their question / phrase / statement templates, the
two-hop chains, and the tokenising used to understand free-form queries.

Templates are few and regular on purpose: the demo router is a tiny model with a small
vocabulary, and every confident statement ends with its answer ("... is Kestrel."), so copying
the answer out of a reply is learnable. Keywords are what a simulated model listens for in a
free-form sub-question the router writes; they cover the words of every template here plus
common variants.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    name: str
    domain: str  # what a simulated model's per-domain skill refers to
    subject: str  # entity kind of the subject
    object: str  # entity kind of the answer
    question: str  # "{s}" is the subject text (a name, or a phrase in a two-hop question)
    phrase: str  # the answer as a noun phrase, e.g. "the capital of {s}"
    statement: str  # a full answer sentence; "{s}" subject text, "{y}" answer
    keywords: frozenset[str]

    def ask(self, s: str) -> str:
        return _capitalise(self.question.format(s=s))

    def noun_phrase(self, s: str) -> str:
        return self.phrase.format(s=s)

    def state(self, s: str, y: str) -> str:
        return _capitalise(self.statement.format(s=s, y=y))


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _kw(*words: str) -> frozenset[str]:
    return frozenset(words)


RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation("capital_of", "geography", "country", "city", "What is the capital of {s}?",
             "the capital of {s}", "The capital of {s} is {y}.", _kw("capital")),
    Relation("country_of", "geography", "city", "country", "In which country is {s}?",
             "the country of {s}", "{s} is in {y}.", _kw("country", "nation")),
    Relation("born_in", "people", "person", "city", "Where was {s} born?",
             "the birthplace of {s}", "{s} was born in {y}.",
             _kw("born", "birthplace", "birth", "hometown")),
    Relation("founder_of", "people", "company", "person", "Who founded {s}?",
             "the founder of {s}", "{s} was founded by {y}.",
             _kw("founded", "founder", "founders", "found", "founding", "started")),
    Relation("discovered_by", "science", "element", "person", "Who discovered {s}?",
             "the discoverer of {s}", "{s} was discovered by {y}.",
             _kw("discovered", "discoverer", "discover", "discovery", "found")),
    Relation("author_of", "arts", "book", "person", "Who wrote {s}?",
             "the author of {s}", "{s} was written by {y}.",
             _kw("wrote", "author", "written", "writer", "write")),
    Relation("coach_of", "sports", "team", "person", "Who coaches {s}?",
             "the coach of {s}", "{s} is coached by {y}.",
             _kw("coach", "coaches", "coached", "coaching", "trains", "manager")),
    Relation("home_city", "sports", "team", "city", "What is the home city of {s}?",
             "the home city of {s}", "The home city of {s} is {y}.",
             _kw("home", "plays", "play", "stadium")),
)}

DOMAINS: tuple[str, ...] = ("geography", "people", "science", "arts", "sports")

# Two-hop chains (first relation, second relation): the second applies to the first's answer.
CHAINS: tuple[tuple[str, str], ...] = (
    ("country_of", "capital_of"),
    ("born_in", "country_of"),
    ("founder_of", "born_in"),
    ("discovered_by", "born_in"),
    ("author_of", "born_in"),
    ("coach_of", "born_in"),
    ("home_city", "country_of"),
)

IDK = "I don't know."
HEDGE = "I am not sure."
FILLERS = ("I hope this helps.", "Let me know if you need anything else.",
           "This is what I remember.")

_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"the", "a", "an"}


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, possessives or articles: what the parser matches."""
    text = text.lower().replace("'s ", " ").replace("\u2019s ", " ")
    return [w for w in _WORD.findall(text) if w not in _STOP]


def template_words() -> set[str]:
    """Every word the templates and keywords use; invented names must avoid all of them."""
    out: set[str] = set()
    for r in RELATIONS.values():
        out |= set(words(r.question + " " + r.phrase + " " + r.statement)) | set(r.keywords)
    for t in (IDK, HEDGE, *FILLERS):
        out |= set(words(t))
    return out | {"which", "what", "who", "where", "s", "y"}


_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """The simulator's token count: words and punctuation marks. Deterministic and cheap; the
    backend bills with it and the oracle prices paths with it, so the two always agree."""
    return len(_TOKEN.findall(text))
