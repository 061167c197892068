"""What a model's description says it is good or bad at, read by rule (no model).

Two readers share one vocabulary of qualifiers: `description_terms` (each word paired with the
qualifier before it: the RLlib router's hashed descriptor features) and `description_strengths`
(qualified phrases, split into items: the LLM router's `by_strength` prompt). Descriptions in the
pool files and the simulator's synthetic ones use these words ("Strong on geography and sports;
weak on people, science and arts.").
"""
from __future__ import annotations

import re

# Words that say how good a model is at what follows them, up to the end of the sentence or the next
# qualifier ("good at code and multiple choice, weaker on hard commonsense"). Lower case.
QUALIFIERS = frozenset({"strong", "stronger", "strongest", "good", "better", "best", "solid", "great",
                        "excellent", "fair", "decent", "reasonable", "fine", "ok", "okay", "average",
                        "weak", "weaker", "weakest", "poor", "bad", "worse"})
NEGATIVE = frozenset({"weak", "weaker", "weakest", "poor", "bad", "worse"})
STOPWORDS = frozenset({"on", "at", "in", "and", "or", "the", "a", "an", "of", "for", "to", "with", "its", "it"})
_SENTENCE = re.compile(r"[.;!?]")
_WORD = re.compile(r"\w+", re.UNICODE)
# longest first, so the alternation is fixed whatever the set's order
_QUALIFIED = re.compile(r"\b(" + "|".join(sorted(QUALIFIERS, key=lambda w: (-len(w), w))) + r")\s+(on|at|in|for|with)\s+",
                        re.IGNORECASE)


def description_terms(text: str) -> list[str]:
    """The description's words, each as `qualifier:word` after a qualifier in the same sentence,
    or the bare word before any ("Strong on geography and sports; weak on arts." -> strong:geography,
    strong:sports, weak:arts). Stopwords dropped."""
    terms = []
    for sentence in _SENTENCE.split(text.lower()):
        qualifier = None
        for w in _WORD.findall(sentence):
            if w in QUALIFIERS:
                qualifier = w
            elif w not in STOPWORDS:
                terms.append(f"{qualifier}:{w}" if qualifier else w)
    return terms


def description_strengths(text: str) -> list[tuple[str, str]]:
    """What a description says a model is good or bad at, as (qualifier with its preposition,
    item), in order: "Strong on geography and sports; weak on people, science and arts." ->
    ("strong on", "geography"), ("strong on", "sports"), ("weak on", "people"), ... A qualified
    list runs to the end of its sentence (`.`, `;`) or the next qualifier; items are split at
    commas and "and"."""
    out: list[tuple[str, str]] = []
    for sentence in _SENTENCE.split(text):
        marks = list(_QUALIFIED.finditer(sentence))
        for i, mk in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(sentence)
            key = f"{mk.group(1).lower()} {mk.group(2).lower()}"
            for item in re.split(r",|\band\b", sentence[mk.end():end]):
                item = re.sub(r"^(on|at|in)\s+", "", item.strip()).strip()
                if item:
                    out.append((key, item))
    return out


def description_positives(text: str) -> list[tuple[str, str]]:
    """`description_strengths` without the weaknesses (weak, poor, ...)."""
    return [(q, item) for q, item in description_strengths(text) if q.split()[0] not in NEGATIVE]
