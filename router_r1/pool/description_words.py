"""What a model's description says it is good or bad at, read by rule (no model).

`description_terms` pairs each word with the qualifier before it: the RLlib router's hashed
descriptor features. Descriptions in the pool files and the simulator's synthetic ones use these
words ("Strong on geography and sports; weak on people, science and arts."). (A second reader,
qualified phrases split into items for the LLM router's `by_strength` prompt, was removed with
that prompt layout; it is at commit bd566f4.)
"""
from __future__ import annotations

import re

# Words that say how good a model is at what follows them, up to the end of the sentence or the next
# qualifier ("good at code and multiple choice, weaker on hard commonsense"). Lower case.
QUALIFIERS = frozenset({"strong", "stronger", "strongest", "good", "better", "best", "solid", "great",
                        "excellent", "fair", "decent", "reasonable", "fine", "ok", "okay", "average",
                        "weak", "weaker", "weakest", "poor", "bad", "worse"})
STOPWORDS = frozenset({"on", "at", "in", "and", "or", "the", "a", "an", "of", "for", "to", "with", "its", "it"})
_SENTENCE = re.compile(r"[.;!?]")
_WORD = re.compile(r"\w+", re.UNICODE)


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
