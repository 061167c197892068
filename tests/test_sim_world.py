"""The simulated world: deterministic, invented, disjoint splits, and free-form query parsing."""
from __future__ import annotations

import pytest

from router_r1.worlds.sim.knowledge import SimConfig, KnowledgeBase
from router_r1.worlds.sim.language import CHAINS, RELATIONS, template_words, words

SMALL = SimConfig(seed=3, entities_per_domain=24)


@pytest.fixture(scope="module")
def world() -> KnowledgeBase:
    return KnowledgeBase.build(SMALL)


def test_same_seed_same_world_other_seed_other_world(world):
    again = KnowledgeBase.build(SMALL)
    assert again.entities == world.entities and again.facts == world.facts
    assert [q.text for q in again.questions("train", 50)] == [q.text for q in world.questions("train", 50)]
    other = KnowledgeBase.build(SMALL, seed=4)
    assert {e.name for e in other.entities.values()} != {e.name for e in world.entities.values()}


def test_names_are_invented_unique_and_avoid_template_words(world):
    names = [e.name for e in world.entities.values()]
    assert len(names) == len(set(names))
    # No name word is a template or keyword word, so a name can never be parsed as a relation.
    assert not {w for n in names for w in words(n)} & template_words()


def test_world_structure(world):
    n = SMALL.entities_per_domain
    for kind in ("company", "element", "book", "team"):
        assert len(world.by_kind(kind)) == n
    assert len(world.by_kind("person")) == 4 * n
    for c in world.by_kind("country"):
        capital = world.lookup("capital_of", c)
        assert world.lookup("country_of", capital) == c
    # Every founder/discoverer/author/coach is a distinct person.
    roles = [world.facts[(r, s.id)] for r, kind in (("founder_of", "company"), ("discovered_by", "element"),
             ("author_of", "book"), ("coach_of", "team")) for s in world.by_kind(kind)]
    assert len(roles) == len(set(roles))


def test_splits_are_disjoint_by_subject_and_cover_everything(world):
    seen: dict[str, str] = {}
    total = 0
    for split in ("train", "val", "test"):
        qs = world.all_questions(split)
        total += len(qs)
        assert qs and all(q.split == split for q in qs)
        for q in qs:
            assert seen.setdefault(q.subject, split) == split
    n_facts = len(world.facts)
    chains = sum(1 for (r, _s) in world.facts for c in CHAINS if c[0] == r)
    assert total == n_facts + chains


def test_questions_mix_and_repeat(world):
    qs = world.questions("val", 40, two_hop_fraction=0.25)
    assert len(qs) == 40 and sum(q.two_hop for q in qs) == 10
    assert all(q.split == "val" for q in qs)
    assert all(not q.two_hop for q in world.questions("train", 30, two_hop_fraction=0.0))
    many = world.questions("test", 3 * len(world.all_questions("test")))
    assert {q.id for q in many} <= {q.id for q in world.all_questions("test")}
    assert len({q.id for q in many}) == len(world.all_questions("test"))  # all used before repeats


def test_questions_balance_shapes_without_repeats(world):
    from collections import Counter
    train = world.all_questions("train")
    have = Counter(q.relations for q in train if not q.two_hop)
    got = Counter(q.relations for q in world.questions("train", 80, two_hop_fraction=0.0))
    assert sum(got.values()) == 80 and len({*got}) == len(have)
    fair = 80 // len(have)
    for shape, k in have.items():  # each shape gets its turn, or all it has
        assert got[shape] >= min(k, fair), (shape, got[shape], k)
    qs = world.questions("train", 200)
    assert len({q.id for q in qs}) == 200


def test_question_texts_answers_and_subquestions(world):
    for q in world.all_questions("train"):
        assert q.text.endswith("?") and len(q.text.split()) <= 14
        assert 1 <= len(q.answer.split()) <= 3  # book titles are 'The Adj Noun'
        assert len(q.subquestions) == len(q.relations) == len(q.facts)
        # Following the facts from the subject reaches the gold answer.
        assert world.resolve(world.entities[q.subject], q.relations).name == q.answer
        # Each canonical sub-question is understood as exactly its fact.
        for sub, fact in zip(q.subquestions, q.facts):
            it = world.interpret(sub)
            assert it.relations == (fact.relation,) and it.subject.id == fact.subject
        it = world.interpret(q.text)
        assert it.relations == q.relations and it.subject.id == q.subject


def test_free_form_queries_are_understood(world):
    country = world.by_kind("country")[0]
    company = world.by_kind("company")[0]
    person = world.by_kind("person")[5]
    book = world.by_kind("book")[0]
    stem = company.name.split()[0]
    cases = {
        f"capital of {country.name.upper()}??": ("capital_of", country),
        f"Hey, could you tell me what {country.name}'s capital city is": ("capital_of", country),
        f"who is the founder of {stem}": ("founder_of", company),
        f"{person.name.lower()} - where born": ("born_in", person),
        f"Who is the author of {book.name.lower()}?": ("author_of", book),
        f"Who founded {company.name}, and where was that person born?": (("founder_of", "born_in"), company),
        f"which country is the birthplace of {person.name} in": (("born_in", "country_of"), person),
    }
    for query, (rels, subject) in cases.items():
        it = world.interpret(query)
        assert it is not None, query
        assert it.subject == subject and it.relations == (rels if isinstance(rels, tuple) else (rels,)), query


def test_unintelligible_queries_are_not_understood(world):
    country = world.by_kind("country")[0]
    for q in ("", "hello there", "What is the capital of Atlantis?", f"Tell me about {country.name}.",
              f"Who founded {country.name}?"):  # a country has no founder
        assert world.interpret(q) is None, q


def test_domains_restrict_questions():
    w = KnowledgeBase.build(SMALL, domains=["geography"])
    rels = {q.relations for s in ("train", "val", "test") for q in w.all_questions(s)}
    assert rels == {("capital_of",), ("country_of",), ("country_of", "capital_of")}
    assert KnowledgeBase.build(SMALL, domains=["geography"]).facts == KnowledgeBase.build(SMALL).facts
    with pytest.raises(ValueError):
        SimConfig(domains=["cooking"])


def test_relations_keywords_cover_their_templates():
    for r in RELATIONS.values():
        assert r.keywords & set(words(r.question)) and r.keywords & set(words(r.phrase))


def test_world_is_identical_across_processes(world):
    """Python's hash() is salted per process; the world must not depend on it, since the trainer
    and the ModelPool's backend each build their own copy."""
    import os
    import subprocess
    import sys
    code = ("from router_r1.worlds.sim.knowledge import SimConfig, KnowledgeBase; "
            "print(KnowledgeBase.build(SimConfig(seed=3, entities_per_domain=24)).fingerprint())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == world.fingerprint()
    assert KnowledgeBase.build(SMALL, seed=4).fingerprint() != world.fingerprint()


def test_question_lookup_and_qa_rows(world):
    q = world.all_questions("val")[0]
    row = q.to_qa()
    assert world.question(row.id) == q and row.question == q.text and row.golden_answers == [q.answer]


def test_no_entity_is_a_real_word_or_place():
    from router_r1.worlds.sim.names import REAL_WORDS
    for seed in range(5):
        w = KnowledgeBase.build(SMALL, seed=seed)
        assert not {x for e in w.entities.values() for x in words(e.name)} & REAL_WORDS


def test_question_split_holds_out_questions_over_names_training_knows(world):
    """split 'question': val and train share no question, every val subject is named (asked
    about or answered) in training, test holds out whole subjects (the entity rule's val), and
    the split covers every question; the knowledge base is unchanged and the split is stable."""
    qw = KnowledgeBase.build(SMALL, split="question")
    assert qw.entities == world.entities and qw.facts == world.facts
    train, val, test = (qw.all_questions(s) for s in ("train", "val", "test"))
    assert train and val and test
    assert all(q.split == s for s, qs in (("train", train), ("val", val), ("test", test)) for q in qs)
    ids = [q.id for q in train + val + test]
    assert len(ids) == len(set(ids))
    assert set(ids) == {q.id for s in ("train", "val", "test") for q in world.all_questions(s)}
    named = {q.subject for q in train} | {q.facts[-1].object for q in train}
    assert all(q.subject in named for q in val)
    # Most val subjects are also asked about in training, not only named as an answer.
    assert sum(q.subject in {t.subject for t in train} for q in val) > 0.8 * len(val)
    # The held-out-entity test: no train or val question is about a test subject, and test is
    # exactly the entity rule's val (the same subjects, so the two figures compare).
    test_subjects = {q.subject for q in test}
    assert not test_subjects & {q.subject for q in train + val}
    assert {q.id for q in test} == {q.id for q in world.all_questions("val")}
    # Deterministic: same config, same split, in this process and in another.
    again = KnowledgeBase.build(SMALL, split="question")
    assert [q.id for q in again.all_questions("val")] == [q.id for q in val]
    assert again.fingerprint() == qw.fingerprint() != world.fingerprint()
    assert len(val) == pytest.approx(SMALL.val_fraction * (len(train) + len(val)), rel=0.35)


def test_split_option_reaches_the_training_world():
    """data.sim.split 'question' gives the run a question-split validation and the held-out-entity
    test as an extra greedy evaluation; 'entity' (the pool file's default) has none."""
    from router_r1.infra.config import load_config
    from router_r1.worlds.base import make_world

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "demo.yaml", {"data.sim.split": "question", "data.sim.val_size": 20,
                                                       "data.sim.heldout_size": 10})
    w = make_world(cfg, cfg.load_pool().seen())
    assert w.sim.world.config.split == "question" and "questions" in w.held_out()
    train, val, held = w.questions("train"), w.questions("val"), w.extra_evals()["held_out_entities"]
    assert len(val) == 20 and len(held) == 10
    assert all(w.sim.world.question(it["id"]).split == "val" for it in val)
    assert all(w.sim.world.question(it["id"]).split == "test" for it in held)
    assert not {it["id"] for it in train} & {it["id"] for it in val + held}
    ent = load_config(root / "configs" / "demo.yaml", {"data.sim.split": "entity"})
    we = make_world(ent, ent.load_pool().seen())
    assert we.extra_evals() == {} and "entities" in we.held_out()
    with pytest.raises(ValueError):
        load_config(root / "configs" / "demo.yaml", {"data.sim.split": "fact"})


@pytest.mark.parametrize("swap_names, leaks", [("training", False), ("all", True)])
def test_warm_start_names_held_out_entities_only_when_asked(swap_names, leaks):
    """The held-out-entity test asks about subjects no training question asks about; with
    warmstart.swap_names "training" no renamed warm-start trace asks about them either, where
    "all" (the default, the demo's) names them as renamed subjects. (A held-out entity may still
    be the answer of a training question, as in the world itself.)"""
    import re

    from router_r1.infra.config import load_config
    from router_r1.worlds.base import make_world

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "demo.yaml", {"warmstart.num_traces": 600,
                                                       "warmstart.swap_names": swap_names})
    spec = cfg.load_pool().seen()
    w = make_world(cfg, spec)
    kb = w.sim.world
    # Under the question rule (the demo's) validation subjects are training subjects; test ones not.
    assert all(kb.trained_subject(kb.question(it["id"]).subject) for it in w.questions("train") + w.questions("val"))
    assert not any(kb.trained_subject(q.subject) for q in kb.questions("test"))
    held = {kb.entities[kb.question(it["id"]).subject].name for it in w.extra_evals()["held_out_entities"]}
    text = "\n".join(t.question for t in w.warmstart_traces(spec, None))
    written = {n for n in held if re.search(rf"\b{re.escape(n)}\b", text)}
    assert bool(written) is leaks, sorted(written)
