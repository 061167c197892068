"""Synthetic pools (router_r1.worlds.sim.synthetic) and the unseen-model experiment's measurements
(experiments/unseen_measures.py): descriptions in the pool file's words, routing by descriptors
alone, held-out names never in training text, per-domain call shares."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from experiments.unseen_measures import domain_shares, expert_routes
from router_r1.env.protocol import validate
from router_r1.infra.config import load_config
from router_r1.pool.descriptors import load_pool
from router_r1.worlds.base import make_world
from router_r1.worlds.sim import Simulation
from router_r1.worlds.sim.knowledge import NOT_UNDERSTOOD, WHOLE_TWO_HOP
from router_r1.worlds.sim.language import RELATIONS
from router_r1.worlds.sim.synthetic import HEADS, describe, random_pool, synthetic_traces

ROOT = Path(__file__).resolve().parents[1]
UNSEEN_POOL = ROOT / "configs" / "pool_simulated_unseen.yaml"


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return Simulation.from_pool(load_pool(ROOT / "configs" / "pool_simulated.yaml"))


def test_descriptions_use_the_pool_files_words(sim):
    """describe() of each pool model's profile, domains named in the file's order, is its description."""
    orders = {"Sim-Geo-Small": ("geography", "sports", "people", "science", "arts"),
              "Sim-Bio-Small": ("people", "arts", "geography", "science", "sports"),
              "Sim-Sci-Medium": ("science", "people", "geography", "arts", "sports"),
              "Sim-General-Large": ("geography", "people", "science", "arts", "sports")}
    for name, order in orders.items():
        spec = sim.models[name].spec
        assert describe(spec.skill, spec.hop_skill, order) == sim.descriptor(name).description
    assert describe({d: 0.9 for d in orders["Sim-Geo-Small"]}, 0.2) == "Good on every topic."
    assert describe({"geography": 0.5, "sports": 0.5, "people": 0.9, "science": 0.1, "arts": 0.3}, 0.1,
                    orders["Sim-Geo-Small"]) == "Strong on people; fair on geography and sports; weak on science and arts."


def test_random_pools_never_use_reserved_names():
    rng = random.Random(0)
    reserved = ["Sim-Geo-Small", "sim-nova-large", " SIM-ART-XL "]
    seen = set()
    for _ in range(400):
        pool = random_pool(rng, reserved)
        assert 2 <= len(pool.models) <= 5 and len(set(pool.names)) == len(pool.names)
        assert not {n.casefold() for n in pool.names} & {"sim-geo-small", "sim-nova-large", "sim-art-xl"}
        seen.update(pool.names)
    assert "Sim-Geo-Medium" in seen and "Sim-Bio-Small" in seen  # the parts do combine


def test_heads_widen_the_name_space():
    """The first 16 heads by default (the warm-start traces'); `heads` more (the RLlib catalog's 60)."""
    def heads_drawn(n_heads):
        rng = random.Random(1)
        return {m.split("-")[1] for _ in range(300) for m in random_pool(rng, heads=n_heads).names}

    assert heads_drawn(16) == set(HEADS[:16])
    assert heads_drawn(60) == set(HEADS) and len(HEADS) == 60
    assert random_pool(random.Random(3)).names == random_pool(random.Random(3), heads=16).names
    with pytest.raises(ValueError, match="heads must be between 2 and 60"):
        random_pool(random.Random(0), heads=61)


def _strong_on(description: str, domain: str) -> bool:
    """What the description says in words: strong on `domain` (or good on every topic)."""
    if description.startswith("Good on every topic"):
        return True
    m = re.match(r"Strong on ([^;.]*)", description)
    return bool(m) and domain in m.group(1)


def test_synthetic_traces_route_by_the_descriptions_alone(sim):
    """Each trace's first call goes to the cheapest model whose description says it is strong
    on the question's first domain (read from the prompt's text, not the simulator's numbers)."""
    qs = sim.world.questions("train", 200, seed=3)
    traces = synthetic_traces(sim, qs, seed=1, reserved=sim.names, layout="compact")
    checked = 0
    for q, e in zip(qs, traces):
        assert e.pool is not None and e.meta["synthetic_pool"]
        assert validate(e.response, e.pool) == [], e.response
        assert not set(e.pool.names) & set(sim.names)
        for m in e.pool.models:
            assert f"- {m.name}: ${m.price_in:.2f}/1M tokens. {m.description}" in e.prompt
        domain = RELATIONS[q.relations[0]].domain
        strong = [m for m in e.pool.models if _strong_on(m.description, domain)]
        if strong:
            first = e.pool[e.routes[0][0]]
            assert _strong_on(first.description, domain)
            assert first.price_in == min(m.price_in for m in strong)
            checked += 1
    assert checked > 150


def test_subject_swapped_synthetic_traces_keep_their_pool(sim):
    qs = sim.world.questions("train", 20, seed=4)
    for q, e in zip(qs, synthetic_traces(sim, qs, seed=2, subject_swap=1.0)):
        assert e.pool is not None and e.prompt == "" and sim.world.entities[q.subject].name not in e.question


@pytest.fixture(scope="module")
def unseen_cfg():
    return load_config(ROOT / "configs" / "unseen_sim.yaml",
                       {"warmstart.num_traces": 300, "data.sim.val_size": 8, "data.sim.heldout_size": 8})


def test_the_held_out_model_is_nowhere_in_training_text(unseen_cfg):
    """Warm-start traces (prompts, pools, routes, replies) and the tokenizer corpus never name
    Sim-Geo-Small; the config's share of the traces is over synthetic pools, the rest over the
    training pool."""
    cfg = unseen_cfg
    world = make_world(cfg, cfg.load_pool().seen())
    assert world.sim.names == ["Sim-Bio-Small", "Sim-Sci-Medium", "Sim-General-Large"]
    traces = world.warmstart_traces(world.sim.pool, None)
    synth = [e for e in traces if e.pool is not None]
    assert len(traces) == 300 and len(synth) == round(300 * cfg.warmstart.synthetic_pools) > 0
    assert [e.pool is None for e in traces[:20]] != [True] * 20  # shuffled in, not appended
    texts = [e.question + e.prompt + e.response + " ".join(m for m, _ in e.routes) for e in traces]
    texts += [m.name + " " + m.description for e in synth for m in e.pool.models]
    texts += world.tokenizer_corpus(world.sim.pool, "compact")
    assert any("Sim-Nova" in t or "Sim-Geo-" in t for t in texts)  # name parts are fine
    assert not [t for t in texts if "sim-geo-small" in t.lower()]
    assert all(world.sim.pool.resolve(m) is not None for e in traces if e.pool is None for m, _ in e.routes)


def test_without_synthetic_pools_the_traces_are_the_demos(unseen_cfg):
    cfg = unseen_cfg.model_copy(update={"warmstart": unseen_cfg.warmstart.model_copy(update={"synthetic_pools": 0.0})})
    world = make_world(cfg, cfg.load_pool().seen())
    assert all(e.pool is None for e in world.warmstart_traces(world.sim.pool, None))


def test_encode_traces_renders_a_trace_over_its_own_pool(unseen_cfg):
    """The rollout worker renders a synthetic trace's prompt from the trace's pool with the run's
    options; a trace without a pool from the run's training pool."""
    from actors.rollout import RolloutWorker
    from router_r1.engines.model import train_tokenizer
    from router_r1.env.prompt import render_prompt_ids

    tiny = {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 1024}
    cfg = unseen_cfg.model_copy(update={"policy": unseen_cfg.policy.model_copy(update={"tiny": unseen_cfg.policy.tiny.model_copy(update=tiny)})})
    world = make_world(cfg, cfg.load_pool().seen())
    traces = world.warmstart_traces(world.sim.pool, None)[:12]
    tok = train_tokenizer(world.tokenizer_corpus(world.sim.pool, "compact")[:2000], 500)
    w = RolloutWorker(cfg, tok)
    w.encode_traces(traces)
    options = cfg.policy.prompt_options()
    for e in traces:
        pool = e.pool or world.sim.pool
        assert e.prompt_ids == render_prompt_ids(tok, pool, e.question, options)[1]
        assert all(n in e.prompt for n in pool.names)
        assert ("Sim-Bio-Small" in e.prompt) == (e.pool is None)


def test_domain_shares_count_calls_per_domain_of_the_query(sim):
    w = sim.world
    country = w.by_kind("country")[0].name
    team = w.by_kind("team")[0].name
    element = w.by_kind("element")[0].name
    routes = [("Sim-Geo-Small", f"What is the capital of {country}?"),     # geography, to it
              ("sim-geo-small ", f"Who coaches {team}?"),                  # sports, to it (resolved)
              ("Sim-General-Large", f"What is the home city of {team}?"),  # sports, elsewhere
              ("Sim-Sci-Medium", f"Who discovered {element}?"),            # science, elsewhere
              ("No-Such-Model", f"Who discovered {element}?"),             # science, no model
              ("Sim-Geo-Small", "What is the weather like?"),              # not understood
              ("Sim-Geo-Small", f"What is the capital of the country of {w.by_kind('city')[0].name}?")]
    s = domain_shares(routes, "Sim-Geo-Small", sim.pool, w)
    assert list(s)[:5] == ["geography", "sports", "people", "science", "arts"]
    assert s["geography"] == {"calls": 1, "to_model": 1, "share": 1.0}
    assert s["sports"] == {"calls": 2, "to_model": 1, "share": 0.5}
    assert s["science"] == {"calls": 2, "to_model": 0, "share": 0.0}
    assert s["people"] == {"calls": 0, "to_model": 0, "share": None}
    assert s[NOT_UNDERSTOOD]["to_model"] == 1 and s[WHOLE_TWO_HOP]["to_model"] == 1


def test_the_expert_calls_the_cheap_specialist_on_its_domains(sim):
    qs = sim.world.questions("val", 60, seed=0)
    s = domain_shares(expert_routes(sim, qs), "Sim-Geo-Small", sim.pool, sim.world)
    first_tries = {d: v for d, v in s.items() if v["calls"]}
    assert first_tries["people"]["share"] == first_tries["science"]["share"] == 0.0
    assert first_tries["geography"]["share"] > 0.5  # a hedged reply is retried elsewhere


def test_cli_refuses_a_pool_without_held_out_models(capsys, tmp_path):
    from experiments.unseen import main

    rc = main(["--config", str(ROOT / "configs" / "demo.yaml"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "seen_in_training: false" in err[0]
    rc = main(["--config", str(ROOT / "configs" / "unseen_sim.yaml"), "--out", str(tmp_path / "x"),
               "--set", "data.kind=qa"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "data.kind must be 'simulated'" in err[-1]
    assert not (tmp_path / "x").exists()


def test_one_call_rows_are_the_simulators_replies(sim, tmp_path):
    """The replay export: one row per (question, model) with the simulated reply, EM of the
    answer it states, the backend's cost and the question's domain; the replay world reads it."""
    from router_r1.worlds.replay.tables import ReplayTable
    from router_r1.worlds.sim.replay_export import one_call_rows, replay_pool, write_table

    qs = sim.world.questions("val", 6, seed=1)
    rows = one_call_rows(sim, qs)
    assert len(rows) == 6 * len(sim.names)
    for r in rows:
        q = next(q for q in qs if q.id == r["sample_id"])
        c = sim.call(r["model"], q.text)
        assert r["response"] == c.reply.text and r["cost"] == c.cost_usd and r["prompt"] == q.text
        assert r["correct"] == float(c.reply.stated is not None and c.reply.stated.name in q.golden_answers)
        assert r["eval_name"] == ("two-hop, asked whole" if q.two_hop else RELATIONS[q.relations[0]].domain)
    path = write_table(rows, tmp_path / "t.parquet")
    table = ReplayTable.from_files([path])
    assert len(table) == 6 and sorted(table.models) == sorted(sim.names)
    held = load_pool(UNSEEN_POOL)
    rp = replay_pool(held, [path])
    assert rp.names == held.names and rp.kinds() == {"replay"}
    assert [m.description for m in rp.models] == [m.description for m in held.models]
    assert rp.seen().names == ["Sim-Bio-Small", "Sim-Sci-Medium", "Sim-General-Large"]


def test_choice_cases_say_what_the_descriptors_ask_for(sim):
    """Each case's expert is the cheapest model strong on the first hop's domain (the most skilled
    one where none is), and `strong` lists every model at or above STRONG there."""
    from experiments.unseen_measures import choice_cases
    from router_r1.worlds.sim.plans import STRONG

    qs = sim.world.questions("val", 80, seed=3)
    cases = choice_cases(sim, qs, seed=1, reserved=sim.pool.names, heads=60)
    assert [c.question for c in cases] == qs
    assert cases == choice_cases(sim, qs, seed=1, reserved=sim.pool.names, heads=60)  # seeded
    for c in cases:
        assert not set(c.pool.names) & set(sim.pool.names)
        s = Simulation(c.pool, sim.world)
        skill = {m: s.models[m].spec.p_know(c.question.domains[0]) for m in s.names}
        assert c.strong == tuple(m for m in s.names if skill[m] >= STRONG)
        if c.strong:
            price = {m: c.pool[m].price_in for m in c.strong}
            assert c.expert in c.strong and price[c.expert] == min(price.values())
        else:
            assert skill[c.expert] == max(skill.values())


def test_choice_rates_by_hand(sim):
    from experiments.unseen_measures import ChoiceCase, choice_rates

    q = sim.world.questions("val", 1, seed=0)[0]
    three = next(p for p in (random_pool(random.Random(i), heads=60) for i in range(100)) if len(p.models) == 3)
    two = three.model_copy(update={"models": three.models[:2]})
    a, b, c = three.names
    cases = [ChoiceCase(q, three, a, (a, b)), ChoiceCase(q, two, b, (b,)),
             ChoiceCase(q, three, c, (c,)), ChoiceCase(q, two, a, ())]
    # the expert written in upper case; the expert; a name not in the pool; no call at all
    r = choice_rates(cases, [a.upper(), b, "Sim-Nowhere-XL", None])
    assert r["n"] == 4 and r["in_pool"] == 0.5 and r["strong"] == 0.5 and r["expert"] == 0.5
    assert r["uniform_strong"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 3 + 0) / 4)
    assert r["uniform_expert"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    r = choice_rates(cases[:1], [b])
    assert (r["in_pool"], r["strong"], r["expert"]) == (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="one choice per case"):
        choice_rates(cases, [a])


def test_route_choice_reads_the_first_route_of_each_prompt(bpe_checkpoint, monkeypatch):
    """`router-r1 unseen`'s descriptor-reading figure, wired end to end with a real tokenizer and
    model, its generation replaced by one that always calls the first model line of its prompt:
    every choice is a pool name, and the expert's rate is the share of cases whose expert is listed
    first."""
    from experiments.unseen import route_choice
    from experiments.unseen_measures import choice_cases
    from router_r1.engines.hf import HFGenerator
    from router_r1.env.generation import Generation

    def first_line(self, prompts, **_):
        texts = [self.tokenizer.decode(p) for p in prompts]
        return [Generation(text=f"<think> x </think>\n<search> {re.search(r'^- ([^:]+):', t, re.M).group(1)}: q </search>")
                for t in texts]

    monkeypatch.setattr(HFGenerator, "generate", first_line)
    cfg = load_config(ROOT / "configs" / "unseen_sim.yaml", {"data.sim.val_size": 40})
    world = make_world(cfg, cfg.load_pool().seen())
    qs = [world.sim.world.question(it["id"]) for it in world.questions("val")[:40]]
    r = route_choice(cfg, bpe_checkpoint, world, qs)
    cases = choice_cases(world.sim, qs, seed=cfg.seed, reserved=world.reserved_names())
    assert r["n"] == 40 and r["in_pool"] == 1.0
    assert r["expert"] == sum(c.expert == c.pool.names[0] for c in cases) / 40
    assert r["strong"] == sum(c.pool.names[0] in c.strong for c in cases) / 40
    assert [s["chosen"] for s in r["samples"]] == [c.pool.names[0] for c in cases[:6]]
