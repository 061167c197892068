"""Invented, pronounceable names for the simulator's entities.

Every name is built from consonant-vowel syllables, so no entity (and no fact about it) exists in
the real world: a router trained on the simulator cannot lean on pre-trained knowledge, and the
candidate models' knowledge is exactly what the simulator says it is. Names avoid every word the
simulator's own templates use, so a query parser never mistakes a name for a keyword.
"""
from __future__ import annotations

import random

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
          "br", "dr", "kr", "tr", "st", "th")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "", "n", "r", "l", "s", "k")


class NameMaker:
    """Draws unique capitalised stems from one seeded RNG (so the same seed gives the same names).

    `reserved` words (lower case) are never produced; every produced stem is reserved afterwards.
    """

    def __init__(self, rng: random.Random, reserved: set[str] = frozenset()):
        self.rng = rng
        self.used: set[str] = {w.lower() for w in reserved}

    def syllable(self, coda: bool = True) -> str:
        return (self.rng.choice(ONSETS) + self.rng.choice(VOWELS)
                + (self.rng.choice(CODAS) if coda else ""))

    def stem(self, suffix: str = "", syllables: int = 2) -> str:
        """A new word like 'Vorlan' or, with a suffix, 'Tekium'. Unique across this maker."""
        for _ in range(10_000):
            parts = [self.syllable(coda=False) for _ in range(syllables - 1)] + [self.syllable()]
            base = "".join(parts)
            if suffix and base[-1] in VOWELS and suffix[0] in VOWELS:
                base = base[:-1]  # 'Tiku' + 'ia' -> 'Tikia', not 'Tikuia'
            word = (base + suffix).capitalize()
            if len(word) >= 4 and word.lower() not in self.used:
                self.used.add(word.lower())
                return word
        raise RuntimeError("name space exhausted; lower the number of entities")
