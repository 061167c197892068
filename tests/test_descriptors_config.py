"""The descriptor file, name matching, the prompt rendered from descriptors, and the config."""
import pytest
import yaml

from router_r1.env.prompt import render_prompt
from router_r1.infra.config import load_config
from router_r1.pool.descriptors import PoolSpec, load_pool

PAPER_PRICES = {"Qwen2.5-7B-Instruct": 0.30, "LLaMA-3.1-8B-Instruct": 0.18,
                "LLaMA-3.1-70B-Instruct": 0.88, "Mistral-7B-Instruct": 0.20,
                "Mixtral-8x22B-Instruct": 1.20, "Gemma-2-27B-Instruct": 0.80,
                "Palmyra-Creative-122B": 1.80, "LLaMA3-ChatQA-1.5-8B": 0.18}


def test_paper_pool(paper_pool):
    assert {m.name: m.price_in for m in paper_pool.models} == PAPER_PRICES
    assert all(m.price_in == m.price_out for m in paper_pool.models)
    assert {m.name for m in paper_pool.models if not m.seen_in_training} == {
        "Palmyra-Creative-122B", "LLaMA3-ChatQA-1.5-8B"}
    assert len(paper_pool.seen().models) == 6


def test_name_matching_exact_casefold_trim(paper_pool):
    assert paper_pool.resolve("  qwen2.5-7b-INSTRUCT ").name == "Qwen2.5-7B-Instruct"
    assert paper_pool.resolve("meta/llama-3.1-70b-instruct").name == "LLaMA-3.1-70B-Instruct"
    for fuzzy in ("Qwen2.5", "qwen 2.5 7b instruct", "Qwen2.5-7B-Instruct.", ""):
        assert paper_pool.resolve(fuzzy) is None
    with pytest.raises(KeyError, match="not in pool"):
        paper_pool["nope"]


def test_duplicate_alias_rejected():
    with pytest.raises(ValueError, match="used by both"):
        PoolSpec(models=[{"name": "A", "price": 1, "aliases": ["x"]},
                         {"name": "B", "price": 1, "aliases": ["X "]}])


def test_bad_descriptor_file_names_file(tmp_path):
    f = tmp_path / "pool.yaml"
    f.write_text(yaml.safe_dump({"models": [{"name": "A", "price_in": -1, "price_out": 1}]}))
    with pytest.raises(ValueError, match="pool.yaml"):
        load_pool(f)
    with pytest.raises(FileNotFoundError):
        load_pool(tmp_path / "missing.yaml")


def test_prompt_rendered_from_descriptors(paper_pool):
    p = render_prompt(paper_pool, "Who wrote Hamlet?")
    for m in paper_pool.models:
        assert m.name in p
    assert "$0.88/1M tokens" in p and "70B parameters" in p
    assert p.rstrip().endswith("Question: Who wrote Hamlet?")
    # a swapped pool changes the prompt: descriptors are all the router knows
    assert "Palmyra" not in render_prompt(paper_pool.seen(), "q")


def test_config_yaml_overrides_and_errors(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"reward": {"alpha": 0.3}, "episode": {"max_turns": 2}}))
    cfg = load_config(f, {"learner.algorithm": "ppo", "reward.metric": "f1"})
    assert cfg.reward.alpha == 0.3 and cfg.episode.max_turns == 2
    assert cfg.learner.algorithm == "ppo" and cfg.reward.metric == "f1"
    assert "reward.alpha" in cfg.flat() and not any("api_keys" in k for k in cfg.flat())
    f.write_text(yaml.safe_dump({"reward": {"alpah": 0.3}}))
    with pytest.raises(ValueError, match="alpah"):
        load_config(f)
    with pytest.raises(ValueError):
        load_config(None, {"reward.alpha": 2.0})
