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

# Real words and real places or elements that these syllables (and the simulator's suffixes
# -land, -ia, -or, -ium) can spell: never produced, so no invented entity is a real one.
REAL_WORDS = frozenset("""
baker basal bonus data demon done donor fatal favor final fire five give given labor later legal
lemon lemur level made mine minor minus modal model moral more motor move mural name nasal natal
never nine none paper pedal petal polar radar rather regal rigor rival rotor rumor rural salon
same side sinus sofa solar some sonar take taken tenor there these those tidal tiger token torus
total tumor tuna tutor valor vigor virus vital zebra time like life line note base bone rose zone
pine kite mole vote tire dune lake make sure tone tune lane lime dome
lima mali nepal paris peru rome togo milan sofia riga baku lagos dakar tunis turin pisa kobe nara
nice kano pune kota sana tula bali goma dili male suva lome bata tema benin gabon timor sudan niger
kazan somalia romania nigeria tunisia liberia siberia bavaria
sodium lithium barium radium thorium thulium kalium
""".split())


class NameMaker:
    """Draws unique capitalised stems from one seeded RNG (so the same seed gives the same names).

    `reserved` words (lower case) are never produced; every produced stem is reserved afterwards.
    """

    def __init__(self, rng: random.Random, reserved: set[str] = frozenset()):
        self.rng = rng
        self.used: set[str] = {w.lower() for w in reserved} | REAL_WORDS

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
