"""Evaluation and Serve on GPU (issue #16): `evaluate --device/--dtype`, Serve's generator in the
policy dtype (transformers, and vLLM through the fake import boundary of test_vllm_engine), and
`data.val_size` applied by the driver to every world."""
from __future__ import annotations

import json

import pytest
import torch

from router_r1.engines.model import build_tiny_policy, save_policy, train_tokenizer
from router_r1.infra.config import load_config
from tests.test_vllm_engine import _FakeLLM, fake_vllm  # noqa: F401 (fixture)
from tests.test_worlds import POOL, CapitalsWorld
from tests.tiny_learner import CORPUS, TINY


@pytest.fixture(scope="module")
def bf16_policy(tmp_path_factory):
    tok = train_tokenizer(CORPUS, 320)
    return save_policy(build_tiny_policy(TINY, tok, seed=4, dtype=torch.bfloat16), tok,
                       tmp_path_factory.mktemp("policy") / "p")


def test_evaluate_device_auto_and_a_missing_gpu():
    from pipelines.evaluate import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device"):
            resolve_device("cuda")


def test_evaluate_llm_router_loads_in_the_asked_dtype(bf16_policy, monkeypatch):
    import pipelines.evaluate as ev
    from router_r1.engines import hf

    seen = []
    real = hf.HFGenerator.__init__

    def spy(self, model, tokenizer, device="cpu", **kw):
        seen.append((model.dtype, str(device)))
        real(self, model, tokenizer, device=device, **kw)

    monkeypatch.setattr(hf.HFGenerator, "__init__", spy)
    cfg = load_config(None, {"pool": POOL, "mlflow.enabled": False})
    pool = cfg.load_pool()
    ev.make_policy(f"llm:{bf16_policy}", pool, cfg, [], 4, device="cpu")  # policy.dtype auto: the checkpoint's
    ev.make_policy(f"llm:{bf16_policy}", pool, cfg, [], 4, device="cpu", dtype="float32")
    assert seen == [(torch.bfloat16, "cpu"), (torch.float32, "cpu")]


def test_serve_generator_in_the_policy_dtype(bf16_policy, fake_vllm):  # noqa: F811
    from router_r1.serving.engines import make_generator

    gen, _ = make_generator("transformers", bf16_policy)
    assert gen.model.dtype == torch.bfloat16 and not gen.model.training
    gen, _ = make_generator("transformers", bf16_policy, dtype="float32")
    assert gen.model.dtype == torch.float32
    # a float32 checkpoint is served by vLLM in float32 by name, not vLLM's "auto" (float16)
    cfg32 = json.loads((bf16_policy / "config.json").read_text())
    assert cfg32["dtype"] == "bfloat16"
    make_generator("vllm", bf16_policy, gpu_memory_utilization=0.7)
    (llm,) = _FakeLLM.instances
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["gpu_memory_utilization"] == 0.7
    assert llm.kwargs["load_format"] == "auto"  # Serve reads the trained policy's own weights


def test_data_val_size_applies_to_every_world():
    from pipelines.train import Trainer

    cfg = load_config(None, {"pool": POOL, "mlflow.enabled": False, "output_dir": "/nonexistent/run",
                             "data.val_size": 1})
    world = CapitalsWorld(n_train=2)  # 2 validation questions
    t = Trainer(cfg, progress=False, world=world)
    assert t.val_items == world.val[:1]
    cfg = load_config(None, {"pool": POOL, "mlflow.enabled": False, "output_dir": "/nonexistent/run"})
    assert Trainer(cfg, progress=False, world=world).val_items == world.val  # None: all of them
