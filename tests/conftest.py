"""Shared fixtures. One local Ray instance serves every test that needs one (a start costs ~3 s)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# A key planted for leak tests, in this process and so in every Ray worker of the session (set
# before ray.init; never through runtime_env, whose agent logs it), so a pool actor made by a Serve
# replica sends it; tests grep what a run wrote for any part of it.
PLANTED_KEY_ENV = "ROUTER_R1_TEST_PLANTED_KEY"
os.environ.setdefault(PLANTED_KEY_ENV, "sk-PLNT-7Qx9Lm2Vb8Nc4Zr1Kd5")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs and a modest object store, shared by the whole session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False,
                 namespace="router_r1_tests", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}})
    yield ray
    # Left running for the rest of the session; pytest exit tears it down with the process.


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def paper_pool():
    from router_r1.pool.descriptors import load_pool
    return load_pool(ROOT / "configs" / "pool_router_r1.yaml")


@pytest.fixture(scope="session")
def bpe_checkpoint(tmp_path_factory) -> Path:
    """A small Qwen2 checkpoint with a real-world-like tokenizer (tests/bpe_checkpoint.py): tags are
    several byte-level BPE tokens, Qwen chat template, generation_config with a repetition penalty."""
    from bpe_checkpoint import build_bpe_checkpoint

    return build_bpe_checkpoint(tmp_path_factory.mktemp("bpe") / "policy")
