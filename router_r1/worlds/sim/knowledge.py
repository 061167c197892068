"""The simulated world: a procedurally generated knowledge base of invented entities, and the
single-hop and two-hop questions asked about it.

Everything is a pure function of `SimConfig` (above all its seed): the same config gives the
same entities, facts, questions and splits in every process, which is what lets the trainer,
the ModelPool's `simulated` backend and the tests each build their own copy and still agree.
How questions are held out is `SimConfig.split`:

* "entity" (the default): splits are drawn per subject entity, so a validation or test question
  never asks about an entity that a training question is about. A router must then write names
  it never wrote in training: for a tiny router built from scratch that measures name copying
  more than routing.
* "question": test is still drawn per subject entity (the harder, held-out-entity test), while
  validation holds out single questions over the other subjects: a validation question is never
  a training question, but every subject it names is named (asked about, or the answer) in some
  training question. This measures routing on unseen questions whose words the router knows.

Follow-ups (`follow_up`, `follow_ups`): a two-hop chain split over a conversation. The first hop is
an earlier turn (the user's sub-question and the assistant's answer, "Who founded Zelix Corp?" /
"Tomas Velik"), and the question refers back to it ("Where was that person born?"): the entity it
is about is named only in the history, so it can only be answered by reading the conversation.
A follow-up is held out with its chain question (same subject, same split) and is made on demand,
never stored, so the knowledge base and its fingerprint do not change.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from router_r1.worlds.base import QAExample
from router_r1.worlds.sim.language import CHAINS, DOMAINS, RELATIONS, template_words, words
from router_r1.worlds.sim.names import NameMaker

Split = Literal["train", "val", "test"]
SplitRule = Literal["entity", "question"]

BOOK_ADJECTIVES = ("Silent", "Hidden", "Golden", "Broken", "Distant", "Quiet", "Burning", "Frozen",
                   "Secret", "Lost", "Crimson", "Hollow", "Wandering", "Bright", "Endless", "Northern")
BOOK_NOUNS = ("Harbor", "Garden", "River", "Tower", "Mirror", "Forest", "Lantern", "Bridge",
              "Voyage", "Orchard", "Island", "Winter", "Shadow", "Crown", "Meadow", "Letter")
COMPANY_SUFFIXES = ("Corp", "Labs", "Works", "Group")
TEAM_SUFFIXES = ("Hawks", "Wolves", "Bears", "Foxes", "Eagles", "Lions", "Sharks", "Owls")
COUNTRY_SUFFIXES = ("land", "ia", "or")
# How a follow-up names the entity of the earlier turn, by its kind (only chain middles occur).
REFERENTS = {"person": "that person", "city": "that city", "country": "that country"}
FOLLOW_UP_PREFIX = "sim-followup-"


class SimConfig(BaseModel):
    """The world's shape. Only `seed` and the sizes change the knowledge base; `domains` and
    `two_hop_fraction` only choose which questions are asked."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    entities_per_domain: int = Field(default=100, ge=4, le=250)  # companies, books, teams, ...
    cities_per_country: int = Field(default=4, ge=2)
    domains: list[str] = Field(default_factory=lambda: list(DOMAINS))
    two_hop_fraction: float = Field(default=0.4, ge=0.0, le=1.0)  # default mix in questions()
    val_fraction: float = Field(default=0.15, ge=0.0, lt=0.5)
    test_fraction: float = Field(default=0.15, ge=0.0, lt=0.5)
    # How val is held out (module docstring): "entity" (val and test by subject entity) or
    # "question" (test by subject entity; val by question, over subjects training names).
    split: SplitRule = "entity"

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, v: list[str]) -> list[str]:
        bad = sorted(set(v) - set(DOMAINS))
        if bad or not v:
            raise ValueError(f"unknown domains {bad}; choose from {list(DOMAINS)}")
        return v


@dataclass(frozen=True)
class Entity:
    id: str  # e.g. "city:17"
    name: str
    kind: str  # country, city, person, company, element, book, team


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str  # entity id
    object: str  # entity id

    @property
    def key(self) -> str:
        return f"{self.relation}({self.subject})"

    @property
    def domain(self) -> str:
        return RELATIONS[self.relation].domain


@dataclass(frozen=True)
class SimQuestion:
    """One question with its gold answer and the chain of facts (and sub-questions) solving it."""

    id: str
    text: str
    answer: str
    subject: str  # entity id the question is about
    relations: tuple[str, ...]  # one relation, or (first hop, second hop)
    facts: tuple[Fact, ...]
    subquestions: tuple[str, ...]  # the canonical single-hop question for each fact
    split: str
    # A follow-up's earlier turns ({"role", "content"}), the only place its subject is named; () otherwise.
    history: tuple[Mapping[str, str], ...] = field(default=(), compare=False, hash=False)

    @property
    def golden_answers(self) -> list[str]:
        return [self.answer]

    @property
    def two_hop(self) -> bool:
        return len(self.relations) == 2

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(RELATIONS[r].domain for r in self.relations)

    @property
    def follow_up(self) -> bool:
        return bool(self.history)

    @property
    def standalone(self) -> str:
        """The question as a model is asked it on its own: its text, or for a follow-up the
        question with the referent resolved out of the history ("Where was Tomas Velik born?"),
        which is what a router that read the conversation writes. Candidates see no history."""
        return self.subquestions[0] if self.history else self.text

    def to_qa(self) -> QAExample:
        """As the core's dataset row, so the simulator feeds the same data path as real QA sets."""
        return QAExample(self.id, self.text, [self.answer], source="sim",
                         meta={"relations": list(self.relations), "split": self.split},
                         history=[dict(t) for t in self.history])


@dataclass(frozen=True)
class Interpretation:
    """What a free-form query asks: a subject entity and one or two relations applied to it."""

    subject: Entity
    relations: tuple[str, ...]


def unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a stable hash of `parts` (Python's hash() is salted per
    process). Fixed properties of the world, e.g. 'model m knows fact f', are drawn with it."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


@dataclass
class KnowledgeBase:
    """Entities, facts and questions of one seeded world. Build with `KnowledgeBase.build(cfg)`."""

    config: SimConfig
    entities: dict[str, Entity] = field(default_factory=dict)
    facts: dict[tuple[str, str], str] = field(default_factory=dict)  # (relation, subj) -> obj
    _index: dict[tuple[str, ...], str] = field(default_factory=dict)  # name words -> entity id
    _max_name_words: int = 1
    _questions: dict[str, list[SimQuestion]] = field(default_factory=dict)
    _kinds: dict[str, list[Entity]] = field(default_factory=dict)
    _by_id: dict[str, SimQuestion] = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: SimConfig | None = None, **overrides) -> "KnowledgeBase":
        cfg = SimConfig.model_validate({**(cfg or SimConfig()).model_dump(), **overrides})
        w = cls(cfg)
        w._generate(random.Random(cfg.seed))
        w._build_index()
        w._build_questions()
        return w

    def _add(self, kind: str, name: str) -> Entity:
        e = Entity(f"{kind}:{len(self._kinds.setdefault(kind, []))}", name, kind)
        self.entities[e.id] = e
        self._kinds[kind].append(e)
        return e

    def _generate(self, rng: random.Random) -> None:
        n, cpc = self.config.entities_per_domain, self.config.cities_per_country
        names = NameMaker(rng, template_words() | {w.lower() for w in
                          BOOK_ADJECTIVES + BOOK_NOUNS + COMPANY_SUFFIXES + TEAM_SUFFIXES})
        countries = [self._add("country", names.stem(rng.choice(COUNTRY_SUFFIXES)))
                     for _ in range(max(2, n // cpc))]
        cities = []
        for c in countries:
            here = [self._add("city", names.stem()) for _ in range(cpc)]
            self.facts[("capital_of", c.id)] = here[0].id
            for city in here:
                self.facts[("country_of", city.id)] = c.id
            cities += here
        firsts = [names.stem() for _ in range(max(8, int((4 * n) ** 0.5) + 4))]
        lasts = [names.stem() for _ in range(max(8, int((4 * n) ** 0.5) + 8))]
        pairs = rng.sample([(f, l) for f in firsts for l in lasts], 4 * n)
        people = [self._add("person", f"{f} {l}") for f, l in pairs]
        for p in people:
            self.facts[("born_in", p.id)] = rng.choice(cities).id
        titles = rng.sample([f"The {a} {b}" for a in BOOK_ADJECTIVES for b in BOOK_NOUNS], n)
        subjects = {
            "founder_of": [self._add("company", names.stem() + " " + rng.choice(COMPANY_SUFFIXES))
                           for _ in range(n)],
            "discovered_by": [self._add("element", names.stem("ium")) for _ in range(n)],
            "author_of": [self._add("book", t) for t in titles],
            "coach_of": [self._add("team", names.stem() + " " + rng.choice(TEAM_SUFFIXES))
                         for _ in range(n)],
        }
        # Each person has at most one role (founder, discoverer, author or coach).
        for k, (rel, subs) in enumerate(subjects.items()):
            for s, p in zip(subs, people[k * n:(k + 1) * n]):
                self.facts[(rel, s.id)] = p.id
        for team in subjects["coach_of"]:
            self.facts[("home_city", team.id)] = rng.choice(cities).id

    def _build_index(self) -> None:
        for e in self.entities.values():
            keys = [tuple(words(e.name))]
            if e.kind in ("company", "team"):  # "Zelix" alone names "Zelix Corp"
                keys.append(tuple(words(e.name.split()[0])))
            for k in keys:
                self._index.setdefault(k, e.id)
                self._max_name_words = max(self._max_name_words, len(k))

    def trained_subject(self, entity_id: str) -> bool:
        """Whether training questions may ask about this entity: not a held-out (test) subject
        and, under the entity rule, not a validation one either. With `warmstart.swap_names:
        training` renamed warm-start traces take only such names (`traces.swap_subject`)."""
        return self._split_of(entity_id) == "train"

    def _split_of(self, subject: str) -> str:
        """The split of a question about `subject` under the entity rule; under the question
        rule, "test" or "train" (val is then chosen per question in `_hold_out_questions`)."""
        u = unit(self.config.seed, "split", subject)
        if self.config.split == "question":
            return "test" if u < self.config.test_fraction else "train"
        if u < self.config.val_fraction:
            return "val"
        if u < self.config.val_fraction + self.config.test_fraction:
            return "test"
        return "train"

    def _build_questions(self) -> None:
        self._questions = {"train": [], "val": [], "test": []}
        active = {r for r, rel in RELATIONS.items() if rel.domain in self.config.domains}
        shapes = [(r,) for r in RELATIONS if r in active]
        shapes += [c for c in CHAINS if set(c) <= active]
        keys = sorted(self.facts, key=lambda k: (k[0], _num(k[1])))
        for shape in shapes:
            for (rel, subj) in keys:
                if rel == shape[0]:
                    q = self.make_question(shape, self.entities[subj])
                    self._questions[q.split].append(q)
        if self.config.split == "question":
            self._hold_out_questions()

    def _hold_out_questions(self) -> None:
        """The question rule's val: each non-test question is a candidate with probability
        val_fraction (a hash of its id); a candidate whose subject no remaining training question
        names (as its subject or its answer) goes back to training, so every val subject is a
        name the router has read and written in training."""
        train, held = [], []
        for q in self._questions["train"]:
            u = unit(self.config.seed, "split-question", q.id)
            (held if u < self.config.val_fraction else train).append(q)
        named = {q.subject for q in train} | {self._answer_id(q) for q in train}
        val = [replace(q, split="val") for q in held if q.subject in named]
        train += [q for q in held if q.subject not in named]
        order = {q.id: i for i, q in enumerate(self._questions["train"])}
        self._questions["train"] = sorted(train, key=lambda q: order[q.id])
        self._questions["val"] = val

    def _answer_id(self, q: SimQuestion) -> str:
        return q.facts[-1].object

    # ---- facts and questions ------------------------------------------------------------
    def lookup(self, relation: str, subject: Entity) -> Entity | None:
        oid = self.facts.get((relation, subject.id))
        return self.entities[oid] if oid is not None else None

    def resolve(self, subject: Entity, relations: Iterable[str]) -> Entity | None:
        """Follow relations from `subject`; None when a relation does not apply."""
        e: Entity | None = subject
        for r in relations:
            if e is None:
                return None
            e = self.lookup(r, e)
        return e

    def fact(self, relation: str, subject: Entity) -> Fact:
        return Fact(relation, subject.id, self.facts[(relation, subject.id)])

    def ask(self, relations: tuple[str, ...], subject: Entity) -> str:
        """The canonical question text: 'Where was the founder of Zelix Corp born?'."""
        if len(relations) == 1:
            return RELATIONS[relations[0]].ask(subject.name)
        first, second = relations
        return RELATIONS[second].ask(RELATIONS[first].noun_phrase(subject.name))

    def make_question(self, relations: tuple[str, ...], subject: Entity) -> SimQuestion:
        facts, subqs, e = [], [], subject
        for r in relations:
            facts.append(self.fact(r, e))
            subqs.append(RELATIONS[r].ask(e.name))
            e = self.lookup(r, e)
        return SimQuestion(id=f"sim-{'+'.join(relations)}-{subject.id}",
                           text=self.ask(relations, subject), answer=e.name, subject=subject.id,
                           relations=tuple(relations), facts=tuple(facts),
                           subquestions=tuple(subqs), split=self._split_of(subject.id))

    def follow_up(self, q: SimQuestion) -> SimQuestion:
        """Two-hop question `q` as a follow-up (module docstring): the history is its first hop
        asked and answered ("Who founded Zelix Corp?" / "Tomas Velik"), the question its second
        hop about "that person" (`REFERENTS`); one fact, the same gold answer and split."""
        if not q.two_hop or q.history:
            raise ValueError(f"{q.id}: a follow-up is made from a two-hop question")
        first, second = q.relations
        referent = self.entities[q.facts[0].object]
        history = ({"role": "user", "content": q.subquestions[0]},
                   {"role": "assistant", "content": referent.name})
        return SimQuestion(id=f"{FOLLOW_UP_PREFIX}{first}+{second}-{q.subject}",
                           text=RELATIONS[second].ask(REFERENTS[referent.kind]), answer=q.answer,
                           subject=referent.id, relations=(second,), facts=(q.facts[1],),
                           subquestions=(q.subquestions[1],), split=q.split, history=history)

    def follow_ups(self, split: Split, n: int | None = None, seed: int = 0) -> list[SimQuestion]:
        """`n` follow-ups of one split (one per two-hop question, chains taking turns as in
        `questions`, repeating past the end), in a seeded order; `n=None`: all of them."""
        chains = [q for q in self._questions[split] if q.two_hop]
        rng = random.Random(f"{self.config.seed}-{split}-followups-{seed}-{n}")
        if n is None:
            picked = list(chains)
            rng.shuffle(picked)
        else:
            picked = _take_by_shape(chains, n, rng)
        return [self.follow_up(q) for q in picked]

    def question(self, qid: str) -> SimQuestion:
        """A question by id (e.g. from a QAExample made with `to_qa`), to score it with the oracle;
        a follow-up's id names the two-hop question it is made from."""
        if qid.startswith(FOLLOW_UP_PREFIX):
            return self.follow_up(self.question("sim-" + qid[len(FOLLOW_UP_PREFIX):]))
        if not self._by_id:
            self._by_id = {q.id: q for qs in self._questions.values() for q in qs}
        return self._by_id[qid]

    def fingerprint(self) -> str:
        """A short digest of every entity, fact and question: two processes (a trainer and the
        pool's backend) agree on the world exactly when their fingerprints match."""
        h = hashlib.blake2b(digest_size=8)
        for e in self.entities.values():
            h.update(f"{e.id}={e.name};".encode())
        for (r, s), o in sorted(self.facts.items()):
            h.update(f"{r}({s})={o};".encode())
        for split, qs in sorted(self._questions.items()):
            h.update(f"{split}:{','.join(q.id for q in qs)};".encode())
        return h.hexdigest()

    def all_questions(self, split: Split) -> list[SimQuestion]:
        return list(self._questions[split])

    def questions(self, split: Split, n: int | None = None,
                  two_hop_fraction: float | None = None, seed: int = 0) -> list[SimQuestion]:
        """`n` questions of one split, about `two_hop_fraction` of them two-hop, in a seeded order.

        Splits are disjoint. Within each kind (single-hop, two-hop) the question shapes (e.g.
        `capital_of`, `founder_of+born_in`) take turns, so people-heavy shapes (there are four
        people per company) do not crowd out the rest; a shape that runs out leaves its turns
        to the others. `n=None` gives the whole split. Past the end of a kind, it repeats in a
        new order, so long training runs never run dry.
        """
        pool = self._questions[split]
        rng = random.Random(f"{self.config.seed}-{split}-{seed}-{n}-{two_hop_fraction}")
        if n is None:
            out = list(pool)
            rng.shuffle(out)
            return out
        frac = self.config.two_hop_fraction if two_hop_fraction is None else two_hop_fraction
        singles = [q for q in pool if not q.two_hop]
        doubles = [q for q in pool if q.two_hop]
        n_two = n if not singles else 0 if not doubles else round(n * frac)
        out = _take_by_shape(doubles, n_two, rng) + _take_by_shape(singles, n - n_two, rng)
        rng.shuffle(out)
        return out

    # ---- understanding free-form queries --------------------------------------------------
    def mentions(self, query: str) -> list[Entity]:
        """Entities named in `query`, left to right, longest name first (robust to case,
        punctuation, articles and possessives)."""
        ws, found, i = words(query), [], 0
        while i < len(ws):
            for L in range(min(self._max_name_words, len(ws) - i), 0, -1):
                eid = self._index.get(tuple(ws[i:i + L]))
                if eid is not None:
                    found.append(self.entities[eid])
                    i += L
                    break
            else:
                i += 1
        return found

    def interpret(self, query: str) -> Interpretation | None:
        """What `query` asks, or None if it names no known entity or no relation that applies.

        A two-hop reading (both relations' keywords present, chained through the subject's kind)
        wins over a single-hop one; the first mentioned entity that fits anything is the subject.
        """
        ws = set(words(query))
        active = {r for r, rel in RELATIONS.items() if rel.domain in self.config.domains}
        for e in self.mentions(query):
            rest = ws - set(words(e.name))
            hits = [r for r in RELATIONS if r in active and RELATIONS[r].keywords & rest]
            for first, second in CHAINS:
                if first in hits and second in hits and RELATIONS[first].subject == e.kind:
                    return Interpretation(e, (first, second))
            for r in hits:
                if RELATIONS[r].subject == e.kind:
                    return Interpretation(e, (r,))
        return None

    def by_kind(self, kind: str) -> list[Entity]:
        return list(self._kinds.get(kind, []))


WHOLE_TWO_HOP = "two-hop, asked whole"
NOT_UNDERSTOOD = "not understood"


def call_domain(world: KnowledgeBase, query: str) -> str:
    """The domain of the fact a query asks (`KnowledgeBase.interpret`); `WHOLE_TWO_HOP` for a two-hop
    question asked whole, `NOT_UNDERSTOOD` for a query the simulator does not understand."""
    it = world.interpret(query)
    if it is None:
        return NOT_UNDERSTOOD
    if len(it.relations) > 1:
        return WHOLE_TWO_HOP
    return RELATIONS[it.relations[0]].domain


def _num(eid: str) -> int:
    return int(eid.rsplit(":", 1)[1])


def _take_by_shape(items: list[SimQuestion], k: int, rng: random.Random) -> list[SimQuestion]:
    """k questions, shapes taking turns (round robin, each shape's questions shuffled); every
    question is used once before any repeats."""
    out: list[SimQuestion] = []
    while len(out) < k and items:
        queues: dict[tuple[str, ...], list[SimQuestion]] = {}
        for q in items:
            queues.setdefault(q.relations, []).append(q)
        for qs in queues.values():
            rng.shuffle(qs)
        order = sorted(queues)
        rng.shuffle(order)
        while len(out) < k and order:
            for shape in list(order):
                if len(out) == k:
                    break
                out.append(queues[shape].pop())
                if not queues[shape]:
                    order.remove(shape)
    return out
