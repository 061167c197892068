"""Memory by plan (issue 25): `router-r1 plan` counts a learner rank's bytes row by row, and its
counts are the learner's own. Parameter counts equal real modules' exactly (every family counted,
the built-in Qwen2.5 shapes on the meta device); weights, master copy, grads, AdamW state, the warm
start's AdamW and the reference equal the byte counts of a real learner's tensors after an update
exactly; the configs plan as documented, and one that cannot fit is refused in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.plan import main as plan_main
from router_r1.infra.config import load_config
from router_r1.infra.memory_plan import BUILTIN_SHAPES, ModelShape, learner_memory, make_plan, model_shape

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = str(ROOT / "configs" / "cluster_train.yaml")
ONE_GPU = str(ROOT / "configs" / "gpu_0p5b.yaml")
BASE = {"vocab_size": 300, "hidden_size": 48, "intermediate_size": 112, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}
FAMILIES = [
    {"model_type": "qwen2", "tie_word_embeddings": True},
    {"model_type": "qwen2", "tie_word_embeddings": False, "num_key_value_heads": 4},
    {"model_type": "llama", "tie_word_embeddings": False, "attention_bias": True, "mlp_bias": True, "head_dim": 16},
    {"model_type": "mistral", "tie_word_embeddings": True, "head_dim": 8},
]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f["model_type"])
def test_parameter_count_equals_the_module(family):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = {**BASE, **family}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**d))
    assert ModelShape.from_config(d, "x").params() == sum(p.numel() for p in model.parameters())


def test_builtin_qwen25_shapes_equal_the_modules_they_name():
    from transformers import AutoConfig, AutoModelForCausalLM

    for s in BUILTIN_SHAPES.values():
        cfg = AutoConfig.for_model("qwen2", vocab_size=s.vocab_size, hidden_size=s.hidden_size,
                                   intermediate_size=s.intermediate_size, num_hidden_layers=s.num_hidden_layers,
                                   num_attention_heads=s.num_attention_heads,
                                   num_key_value_heads=s.num_key_value_heads, tie_word_embeddings=s.tie_word_embeddings)
        with torch.device("meta"):  # shapes only: no 7B of memory
            model = AutoModelForCausalLM.from_config(cfg)
        assert s.params() == sum(p.numel() for p in model.parameters()), s.name
    assert round(BUILTIN_SHAPES["Qwen2.5-3B-Instruct"].params() / 1e9, 2) == 3.09  # the model card's size


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    from router_r1.engines.model import build_tiny_policy, save_policy, train_tokenizer
    from tests.tiny_learner import CORPUS, TINY

    tok = train_tokenizer(CORPUS, 320)
    return save_policy(build_tiny_policy(TINY, tok, seed=3, dtype=torch.bfloat16), tok,
                       tmp_path_factory.mktemp("ckpt") / "bf16")


@pytest.mark.parametrize("algorithm, options", [
    ("grpo", {"master_dtype": "float32", "kl_coef": 0.1}),  # bf16 policy, float32 master, a reference
    ("ppo", {"kl_coef": 0.0}),                               # bf16 weights trained as they are, a value head
])
def test_state_rows_equal_a_learners_tensors(bf16_checkpoint, algorithm, options):
    from actors.learner import Learner
    from tests.tiny_learner import fixed_batch, tiny_config

    base = tiny_config(algorithm, **options)
    cfg = base.model_copy(update={"policy": base.policy.model_copy(update={"checkpoint": str(bf16_checkpoint)}),
                                  "warmstart": base.warmstart.model_copy(update={"steps": 1})})
    shape, source = model_shape(cfg)
    assert source.endswith("config.json") and shape.dtype == "bfloat16"
    plan = learner_memory(cfg, shape, prompt_tokens=0)
    learner = Learner(cfg)
    batch = fixed_batch(learner.tokenizer)
    learner.sft_step(batch)
    learner.update(batch)
    params = list(learner.model.parameters())
    trained = "master copy" if options.get("master_dtype") else "weights"
    assert plan[trained] == _nbytes(params)
    assert plan["grads"] == _nbytes(p.grad for p in params)
    moments = [t for s in learner.optimizer.state.values() for t in s.values() if t.dim() > 0]  # not `step`
    assert plan["optimizer"] == _nbytes(moments)
    sft = [t for s in learner.sft_optimizer.state.values() for t in s.values() if t.dim() > 0]
    assert plan["warm-start AdamW"] == _nbytes(sft)
    ref = list(learner.reference.parameters()) if learner.reference is not None else []
    assert plan["reference"] == _nbytes(ref) and (plan["reference"] > 0) == (cfg.learner.kl_coef != 0)


def test_the_cluster_config_is_the_documented_3b_plan_and_fits():
    cfg = load_config(CLUSTER)
    lc = cfg.learner
    assert (lc.num_learners, lc.sharding, lc.gradient_checkpointing, lc.master_dtype) == (4, "zero1", True, "float32")
    plan = make_plan(cfg, gpu_mem_gib=80)
    assert plan.shape.name == "Qwen2.5-3B-Instruct" and plan.fits
    # what docs/cluster.md says one unsharded learner holds before activations: ~56 GB of state
    one = make_plan(cfg.model_copy(update={"learner": lc.model_copy(update={"num_learners": 1})})).memory
    assert 55e9 < one["master copy"] + one["grads"] + one["optimizer"] + one["reference"] < 57e9


def test_plan_prints_the_table_for_the_cluster_and_the_one_gpu_configs(capsys):
    for config, shared in ((CLUSTER, False), (ONE_GPU, True)):
        assert plan_main(["--config", config, "--gpu-mem", "80"]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        for row in ("weights", "master copy", "grads", "optimizer", "activations", "logits peak", "vLLM share", "total"):
            assert f"\n{row} " in out, (config, row)
        assert "fits:" in out
        vllm = next(ln for ln in out.splitlines() if ln.startswith("vLLM share"))
        assert (float(vllm.split()[2]) > 0) == shared


def test_a_config_that_cannot_fit_is_refused_in_one_line(capsys):
    rc = plan_main(["--config", CLUSTER, "--set", "learner.gradient_checkpointing=false"])
    out, err = capsys.readouterr()
    assert rc == 1 and "DOES NOT FIT" in out
    assert len(err.strip().splitlines()) == 1 and "does not fit" in err
    assert "; set learner.gradient_checkpointing: true (-> " in err
    rc = plan_main(["--config", CLUSTER, "--set", "learner.sharding=none", "--gpu-mem", "72"])
    err = capsys.readouterr().err
    assert rc == 1 and "; set learner.micro_batch_size: 2 with grad_accum: 16 (-> " in err  # the same rows per step
    assert plan_main(["--config", CLUSTER, "--set", "learner.sharding=none", "--gpu-mem", "72",
                      "--set", "learner.micro_batch_size=2", "--set", "learner.grad_accum=16"]) == 0  # and it fits
    capsys.readouterr()
    # nothing a learner setting can do: said so, in one line
    assert plan_main(["--config", ONE_GPU, "--model-config", "Qwen2.5-7B-Instruct", "--gpu-mem", "16"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no learner setting tried fits" in err


def test_bad_model_config_is_one_line_through_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "plan", "--config", ONE_GPU,
                        "--model-config", str(tmp_path / "nope.json")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"router-r1 plan: model config not found: {tmp_path / 'nope.json'}"]


def test_a_checkpoint_path_not_here_and_not_built_in_asks_for_model_config(capsys):
    assert plan_main(["--config", ONE_GPU, "--set", "policy.checkpoint=/nowhere/my-model"]) == 2
    err = capsys.readouterr().err
    assert "--model-config" in err and "Qwen2.5-3B-Instruct" in err



def _synthetic_batch(vocab: int, rows: int, prompt: int, response: int):
    """Random ids, every row `prompt` + `response` tokens long, every response token a policy token."""
    from router_r1.rl.batch import TensorBatch

    g = torch.Generator().manual_seed(0)
    L = prompt + response
    ids = torch.randint(0, vocab, (rows, L), generator=g)
    ones, zeros = torch.ones(rows, response, dtype=torch.long), torch.zeros(rows, dtype=torch.long)
    return TensorBatch(input_ids=ids, attention_mask=torch.ones(rows, L, dtype=torch.long), response_ids=ids[:, prompt:],
                       response_pos=torch.arange(prompt, L).expand(rows, -1).contiguous(), response_mask=ones,
                       loss_mask=ones, sampler_logp=torch.zeros(rows, response), rewards=zeros.float(),
                       group_ids=zeros, policy_version=zeros)


@pytest.fixture(scope="module")
def wide_checkpoints(tmp_path_factory):
    """Qwen2 checkpoints (float32 and bf16) at two vocabulary sizes: logits-heavy and trunk-heavy."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from router_r1.engines.model import train_tokenizer
    from tests.tiny_learner import CORPUS

    tok = train_tokenizer(CORPUS, 320)
    out = {}
    for vocab, hidden, inter, layers in ((4096, 64, 176, 2), (512, 128, 352, 3)):
        cfg = AutoConfig.for_model("qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                   tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        for dtype in (torch.float32, torch.bfloat16):
            path = tmp_path_factory.mktemp(f"v{vocab}") / str(dtype).removeprefix("torch.")
            model.to(dtype).save_pretrained(path)
            tok.save_pretrained(path)
            out[vocab, str(dtype).removeprefix("torch.")] = path
    return out


MEASURED = [  # (vocab, checkpoint dtype, learner options)
    (4096, "float32", {"logprob_chunk": 64}),
    (4096, "bfloat16", {"master_dtype": "float32", "gradient_checkpointing": True, "entropy_coef": 0.01}),
    (512, "float32", {}),
    (512, "bfloat16", {"master_dtype": "float32", "gradient_checkpointing": True}),
]


@pytest.mark.parametrize("vocab, dtype, options", MEASURED)
def test_activation_rows_bound_a_micro_step_measured_on_cpu(wide_checkpoints, vocab, dtype, options):
    """One learner micro-step (forward, float32 log-prob chunks, backward) under torch's MemTracker,
    which counts every tensor storage alive: at the step's peak, what the forward and backward
    allocated (activations and temporaries) is at most the plan's weight casts + activations +
    logits peak, and at least half of it: the rows add up as if all peaked at once, while the
    recomputed layer and the float32 log-prob chunks come one after the other."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from actors.learner import Learner
    from router_r1.infra.config import RunConfig

    rows, prompt, response = 4, 32, 64
    cfg = RunConfig(policy={"checkpoint": str(wide_checkpoints[vocab, dtype]), "use_chat_template": False},
                    learner={"micro_batch_size": rows, "share_prefix": False, "kl_coef": 0.0, **options},
                    episode={"max_turns": 0, "max_new_tokens": response})
    shape, _ = model_shape(cfg)
    plan = learner_memory(cfg, shape, prompt_tokens=prompt)
    assert (plan.seq_len, plan.response_len) == (prompt + response, response)
    planned = plan["activations"] + plan["logits peak"] + (plan["weights"] if plan["master copy"] else 0)
    learner = Learner(cfg)
    entropy = "grad" if cfg.learner.entropy_coef > 0 else "value"  # as update() asks for it

    def loss_fn(rows_, mb, logp, ent, values):
        return -(logp.sum() + (ent.sum() if ent is not None and ent.requires_grad else 0)), {}

    tb = _synthetic_batch(vocab, rows, prompt, response)
    learner._micro_steps(tb, torch.arange(rows), loss_fn, with_values=False, entropy=entropy)  # grads now exist:
    tracker = MemTracker()  # the next micro-step accumulates into them, so its peak is the dynamic one
    tracker.track_external(learner.model, learner.optimizer)
    with tracker:
        learner._micro_steps(tb, torch.arange(rows), loss_fn, with_values=False, entropy=entropy)
    peak = {getattr(k, "value", k): v for k, v in next(iter(tracker.get_tracker_snapshot("peak").values())).items()}
    measured = peak["Activation"] + peak["Temp"]
    assert measured <= planned <= 2 * measured, (measured, planned, peak)


def test_docs_show_what_plan_prints(capsys):
    """docs/cluster.md's `router-r1 plan` block is the command's output, line for line."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    shown = text.split("$ router-r1 plan --config configs/cluster_train.yaml\n", 1)[1].split("```", 1)[0]
    assert plan_main(["--config", CLUSTER]) == 0
    assert capsys.readouterr().out == shown
