"""One prompt renderer (router_r1.env.prompt.render_prompt_ids) for rollouts, `router-r1 evaluate`,
Serve and the MLflow model, from the options saved with the policy; and models unseen in training
kept out of training (not in the prompt, not callable) while evaluation and Serve offer them.

Two checkpoints: the demo's (tiny policy built from config, tokenizer trained here, no chat
template) and the Qwen2-style byte-level BPE one with a chat template (tests/bpe_checkpoint.py).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from router_r1.engines.model import save_policy, train_tokenizer
from router_r1.env.prompt import (PromptOptions, fit_history, load_prompt_options, render_prompt, render_prompt_ids,
                                  user_turn)
from router_r1.infra.config import load_config
from router_r1.pool.descriptors import load_pool
from router_r1.pool.types import CallStatus

ROOT = Path(__file__).resolve().parents[1]
TINY = {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 1024}
# Few-shot examples first, the question last: the saved tail length keeps only the end.
QUESTION = ("Example: the capital of Orvium is Kestrel. Example: the founder of Bazus Labs is Tovi. "
            "Now the real question: who discovered the element Zelix?")
# What the router is trained with. The evaluate and serve configs below leave the policy section
# at its defaults (full prompt, whole question), so they only match by reading the checkpoint.
TRAINED = {"policy.prompt_layout": "compact", "policy.max_question_tokens": 6, "policy.use_chat_template": True}
UNSEEN = "Sim-General-Large"


def pool_file(folder: Path, unseen: str | None = None) -> Path:
    """The simulated pool, with `unseen` marked seen_in_training: false."""
    raw = yaml.safe_load((ROOT / "configs" / "pool_simulated.yaml").read_text())
    for m in raw["models"]:
        if m["name"] == unseen:
            m["seen_in_training"] = False
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pool.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train_cfg(pool: Path, **over):
    return load_config(None, {"pool": str(pool), "policy.tiny": TINY, "policy.tokenizer_vocab_size": 400,
                              "pool_runtime.ledger_dir": None, "pool_runtime.cache": False,
                              "mlflow.enabled": False, "episode.max_turns": 1, **TRAINED, **over})


def corpus(pool) -> list[str]:
    return [render_prompt(pool, QUESTION, layout=layout) for layout in ("compact", "full")] * 4


# -- the renderer and the saved options ---------------------------------------------------------
def test_chat_template_ids_are_the_templates_own_and_the_tail_is_cut():
    from tests.bpe_checkpoint import build_bpe_tokenizer

    tok = build_bpe_tokenizer()
    pool = load_pool(ROOT / "configs" / "pool_simulated.yaml")
    opts = PromptOptions(layout="compact", max_question_tokens=6)
    text, ids = render_prompt_ids(tok, pool, QUESTION, opts)
    turn = user_turn(pool, QUESTION, opts, tok)
    msgs = [{"role": "user", "content": turn}]
    assert ids == list(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)["input_ids"])
    assert text == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    question = turn.split("Question: ")[1]
    assert question.startswith("... ") and "Orvium" not in question and question.rstrip().endswith("Zelix?")
    assert len(tok.encode(question.removeprefix("... ").strip(), add_special_tokens=False)) <= 7
    # Chat template off: the user turn itself, encoded once.
    plain, plain_ids = render_prompt_ids(tok, pool, QUESTION, opts.model_copy(update={"use_chat_template": False}))
    assert plain == turn and plain_ids == tok.encode(turn, add_special_tokens=False)


def test_options_round_trip_and_old_checkpoints(tmp_path):
    from router_r1.engines.model import build_tiny_policy

    pool = load_pool(ROOT / "configs" / "pool_simulated.yaml")
    tok = train_tokenizer(corpus(pool), 300)
    model = build_tiny_policy(TINY, tok)
    opts = PromptOptions(layout="compact", max_question_tokens=12, use_chat_template=False)
    save_policy(model, tok, tmp_path / "new", extra={"step": 3}, prompt_options=opts)
    assert load_prompt_options(tmp_path / "new") == opts
    assert json.loads((tmp_path / "new" / "router_r1.json").read_text())["step"] == 3

    save_policy(model, tok, tmp_path / "old", extra={"step": 3})  # written before options were saved
    with pytest.raises(ValueError, match="records no prompt options"):
        load_prompt_options(tmp_path / "old")
    fallback = PromptOptions(layout="compact")
    assert load_prompt_options(tmp_path / "old", default=fallback) == fallback
    (tmp_path / "old" / "router_r1.json").write_text(json.dumps({"prompt": {"layout": "compact", "tail": 3}}))
    with pytest.raises(ValueError, match="invalid prompt options"):
        load_prompt_options(tmp_path / "old", default=fallback)


def test_old_records_load_and_removed_layouts_are_refused(tmp_path):
    """Records saved before `layout` (bd566f4 and earlier: `compact`, later `name_last` and
    `by_strength` beside it) load as today's options; one trained with a removed layout is refused
    in one line that names the commit still having it."""
    meta = tmp_path / "router_r1.json"

    def load(prompt):
        meta.write_text(json.dumps({"step": 3, "prompt": prompt}))
        return load_prompt_options(tmp_path)

    old = {"compact": True, "max_question_tokens": 40, "use_chat_template": False, "name_last": False,
           "by_strength": False}
    assert load(old) == PromptOptions(layout="compact", max_question_tokens=40, use_chat_template=False)
    assert load({"compact": False, "max_question_tokens": None, "use_chat_template": True}) == PromptOptions()
    assert load({"compact": True}) == PromptOptions(layout="compact")
    for removed in ("name_last", "by_strength"):
        with pytest.raises(ValueError) as e:
            load({**old, removed: True})
        msg = str(e.value)
        assert len(msg.splitlines()) == 1 and f"'{removed}'" in msg and "bd566f4" in msg and str(meta) in msg
    with pytest.raises(ValueError, match="invalid prompt options"):  # both spellings at once: not an old record
        load({"layout": "compact", "compact": True})
    with pytest.raises(ValueError, match="invalid prompt options"):
        load({"layout": "name_last"})


def test_the_layouts_render_as_before():
    """The two layouts, pinned (the demo renders "compact"; the text is the one it was trained on)."""
    pool = load_pool(ROOT / "configs" / "pool_simulated.yaml")
    compact = render_prompt(pool, " Who coaches Drithus Wolves? ", layout="compact")
    assert compact == (
        "Answer the question. Think inside <think> </think>. To ask a model, write <search> Model-Name: "
        "question </search>; its reply comes inside <information> </information>. Each call costs its "
        "tokens times the model's price. Give the final answer inside <answer> </answer>.\n\n"
        "Candidate LLMs:\n"
        "- Sim-Geo-Small: $0.10/1M tokens. Strong on geography and sports; weak on people, science and arts.\n"
        "- Sim-Bio-Small: $0.20/1M tokens. Strong on people and arts; weak on geography, science and sports.\n"
        "- Sim-Sci-Medium: $0.60/1M tokens. Strong on science; fair on people and geography; weak on arts and sports.\n"
        "- Sim-General-Large: $2.00/1M tokens. Good on every topic, and on two-hop questions in one call.\n\n"
        "Question: Who coaches Drithus Wolves?\n")
    full = render_prompt(pool, "Who coaches Drithus Wolves?")
    assert full.startswith("Answer the given question. Every time you receive new information")
    assert ("\n- Sim-Geo-Small: $0.10/1M tokens; ~0.3s latency; 1B parameters. Strong on geography and sports; "
            "weak on people, science and arts.\n") in full
    cfg = load_config(None, {"policy.prompt_layout": "compact"})
    assert cfg.policy.prompt_options() == PromptOptions(layout="compact")
    assert user_turn(pool, "Who coaches Drithus Wolves?", cfg.policy.prompt_options()) == compact
    with pytest.raises(ValueError, match="prompt_layout"):
        load_config(None, {"policy.prompt_layout": "name_last"})


# -- the four consumers render the same ids -----------------------------------------------------
@pytest.fixture(scope="module", params=["demo", "bpe"])
def trained(request, tmp_path_factory):
    """(train config, the learner's tokenizer or None, policy folder written by Learner.save_policy)."""
    from actors.learner import Learner

    tmp = tmp_path_factory.mktemp(request.param)
    pool = pool_file(tmp)
    if request.param == "bpe":
        from tests.bpe_checkpoint import build_bpe_checkpoint

        cfg = train_cfg(pool, **{"policy.checkpoint": str(build_bpe_checkpoint(tmp / "bpe", fit_steps=0))})
        learner = Learner(cfg)
    else:
        cfg = train_cfg(pool)
        learner = Learner(cfg, corpus(load_pool(pool)))
    learner.save_policy(tmp / "policy")
    return cfg, (None if cfg.policy.checkpoint else learner.tokenizer), tmp / "policy"


def renderings(cfg, tokenizer, policy: Path, tmp: Path) -> dict[str, tuple[str, list[int]]]:
    from actors.rollout import RolloutWorker
    from router_r1.serving.engines import make_generator
    from router_r1.serving.openai_api import ChatCompletionRequest
    from router_r1.serving.service import RouterService
    from pipelines.evaluate import make_policy
    from router_r1.infra.tracking import MlflowTracker

    async def unused(*args, **kwargs):
        raise AssertionError("planning a request generates nothing and calls nobody")

    out = {"rollout": RolloutWorker(cfg, tokenizer).prompt_ids(QUESTION)}

    plain = load_config(None, {"pool": cfg.pool, "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db"})
    full_pool = load_pool(plain.pool)
    out["evaluate"] = make_policy(f"llm:{policy}", full_pool, plain, [], 1).render(QUESTION)

    # As deployments.router.RouterDeployment builds its service.
    _, serve_tok = make_generator("transformers", policy)
    service = RouterService(full_pool, plain.serve, plain.episode, serve_tok, unused, unused,
                            prompt_options=load_prompt_options(policy, plain.policy.prompt_options()))
    req = ChatCompletionRequest(model="router-r1", messages=[{"role": "user", "content": QUESTION}])
    plan = service.plan(req, "tenant")
    out["serve"] = (plan.prompt, plan.prompt_ids)

    # As the train driver logs it (Trainer.finish -> log_router), loaded back through MLflow.
    import mlflow

    tracker = MlflowTracker(plain.mlflow)
    run_id = tracker.start(run_name="renderer")
    from router_r1.serving.mlflow_model import log_router

    log_router(tracker, policy, plain.pool, {"episode": plain.episode.model_dump()})
    tracker.end()
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/router").unwrap_python_model()
    out["mlflow"] = model.prompt_ids(QUESTION)
    return out


def test_rollout_evaluate_serve_and_mlflow_render_identical_ids(trained, tmp_path):
    cfg, tokenizer, policy = trained
    assert load_prompt_options(policy) == cfg.policy.prompt_options()  # Learner.save_policy
    out = renderings(cfg, tokenizer, policy, tmp_path)
    text, ids = out["rollout"]
    assert ids and all(v == (text, ids) for v in out.values()), {k: v[0][-200:] for k, v in out.items()}
    assert "Candidate LLMs:" in text and "Orvium" not in text and "Zelix?" in text  # compact, tail cut
    if cfg.policy.checkpoint:  # the BPE checkpoint's chat template is applied
        assert text.startswith("<|im_start|>system")


# -- unseen models stay unseen in training ------------------------------------------------------
class RouteTo:
    """A rollout engine (router_r1.env.generation's interface) that routes to `model` on its first
    turn and answers on the next: a training rollout that names a model, without a trained router."""

    max_context = 1024

    def __init__(self, model: str, tokenizer):
        self.model, self.tokenizer, self.turns = model, tokenizer, 0

    def generate(self, contexts, **kw):
        from router_r1.env.generation import Generation

        self.turns += 1
        text = (f"<think> ask </think><search> {self.model}: Who discovered Zelix? </search>" if self.turns == 1
                else "<think> done </think><answer> Kestrel </answer>")
        return [Generation(ids=self.tokenizer.encode(text, add_special_tokens=False), text=text) for _ in contexts]

    def load_buckets(self, buckets):
        pass


def test_unseen_model_is_neither_shown_nor_callable_in_training(tmp_path):
    """A training rollout worker over a pool with one unseen model: the model is not in its
    prompt, and a route to it fails as unknown_model before any pool, even one that could reach
    it, is asked; a route to a seen model goes through."""
    from actors.rollout import RolloutWorker
    from pipelines.train import Trainer
    from router_r1.pool.core import PoolCore

    path = pool_file(tmp_path, unseen=UNSEEN)
    full = load_pool(path)
    seen = [n for n in full.names if n != UNSEEN]
    cfg = train_cfg(path)
    tok = train_tokenizer(corpus(full), 400)
    records: list = []
    worker = RolloutWorker(cfg, tok, PoolCore(full, cfg.pool_runtime, "t", on_record=records.append))
    item = {"id": "q", "question": QUESTION, "golden_answers": ["Kestrel"]}

    text, ids = worker.prompt_ids(QUESTION)
    assert UNSEEN not in text and UNSEEN not in tok.decode(ids) and all(n in text for n in seen)
    worker.engine = RouteTo(UNSEEN, tok)
    (e,) = worker.rollout([item])
    assert e.routes[0][0] == UNSEEN and e.calls[0].status is CallStatus.UNKNOWN_MODEL
    assert UNSEEN not in e.calls[0].error.split("choose one of")[1]
    assert not [r for r in records if r.get("kind") == "call"]  # the pool was never asked
    worker.engine = RouteTo(seen[0], tok)
    (e,) = worker.rollout([item])
    assert e.calls[0].ok and [r["model"] for r in records if r.get("kind") == "call"] == [seen[0]]

    # The driver: its pool, warm-start world and tokenizer corpus are the training view.
    trainer = Trainer(cfg, progress=False)
    assert trainer.spec.names == seen and trainer.world.sim.pool.names == seen
    assert not any(UNSEEN in t for t in trainer.tokenizer_corpus())


def test_evaluate_and_serve_offer_unseen_models(tmp_path):
    from router_r1.serving.openai_api import ChatCompletionRequest
    from router_r1.serving.service import RouterService
    from pipelines.evaluate import make_policy
    from router_r1.engines.model import build_tiny_policy

    path = pool_file(tmp_path, unseen=UNSEEN)
    full = load_pool(path)
    tok = train_tokenizer(corpus(full), 400)
    save_policy(build_tiny_policy(TINY, tok), tok, tmp_path / "policy",
                prompt_options=train_cfg(path).policy.prompt_options())
    cfg = load_config(None, {"pool": str(path)})

    text, ids = make_policy(f"llm:{tmp_path / 'policy'}", full, cfg, [], 1).render(QUESTION)
    assert UNSEEN in text and UNSEEN in tok.decode(ids)

    async def unused(*args, **kwargs):
        raise AssertionError

    service = RouterService(full, cfg.serve, cfg.episode, tok, unused, unused,
                            prompt_options=load_prompt_options(tmp_path / "policy"))
    plan = service.plan(ChatCompletionRequest(model="router-r1", messages=[{"role": "user", "content": "q"}]), "t")
    assert UNSEEN in plan.prompt and plan.pool.resolve(UNSEEN) is not None


def test_fit_history_cuts_oldest_turns_then_system_turns_in_few_calls():
    """Cut order: user/assistant turns oldest first, then system turns oldest first; the
    cut is found by bisection (monotone `fits`), in far fewer calls than one per turn."""
    def turn(role, n):
        return {"role": role, "content": "x" * n}

    history = [turn("system", 5), turn("user", 10), turn("assistant", 20), turn("developer", 7),
               turn("user", 30), turn("assistant", 40)]
    calls = []

    def under(budget):
        def fits(turns):
            calls.append(len(turns))
            return sum(len(t["content"]) for t in turns) <= budget
        return fits

    # Totals as turns go: 112 -> 102 (user 10) -> 82 (assistant 20) -> 52 (user 30) -> 12
    # (assistant 40) -> 7 (system 5) -> 0 (developer 7).
    s5, u10, a20, d7, u30, a40 = history
    for budget, kept in [(112, history), (111, [s5, a20, d7, u30, a40]), (90, [s5, d7, u30, a40]),
                         (60, [s5, d7, a40]), (52, [s5, d7, a40]), (51, [s5, d7]), (12, [s5, d7]),
                         (11, [d7]), (7, [d7]), (6, [])]:
        assert fit_history(history, under(budget)) == kept, budget
    assert fit_history([], under(0)) == []
    assert fit_history(history, lambda turns: False) == []  # not even [] fits: everything goes
    long = [turn("user" if i % 2 == 0 else "assistant", 1) for i in range(64)]
    calls.clear()
    assert fit_history(long, under(3)) == long[-3:]
    assert len(calls) <= 7, calls  # the whole history, then a bisection over 1..64: not 62 calls

    def one_at_a_time(history, fits):  # the rule as stated, one turn at a time
        kept = list(history)
        while kept and not fits(kept):
            others = [i for i, t in enumerate(kept) if t["role"] not in ("system", "developer")]
            kept.pop(others[0] if others else 0)
        return kept

    rng = random.Random(0)
    roles = ["system", "developer", "user", "assistant", "user", "assistant"]
    for _ in range(300):
        h = [turn(rng.choice(roles), rng.randrange(1, 30)) for _ in range(rng.randrange(0, 12))]
        budget = rng.randrange(0, 200)
        assert fit_history(h, under(budget)) == one_at_a_time(h, under(budget)), (h, budget)
