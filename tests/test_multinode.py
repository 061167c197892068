"""Multi-node behaviour on one machine: a head and two worker nodes (`ray.cluster_utils.Cluster`).

Each scenario (tests/multinode_scenarios.py) runs in its own process, because a Cluster is its
own Ray and this session may already hold one (`ray_local`); the test checks its JSON result.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_scenario(name: str, timeout: float = 240) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
           "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    # The cluster's address file and sessions stay private, so that no other process's
    # `ray.init()` on this machine joins the test cluster while it runs.
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rr1mn_", dir="/tmp")
    proc = subprocess.run([sys.executable, "-m", "tests.multinode_scenarios", name], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert proc.returncode == 0 and lines, f"scenario {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.ray
@pytest.mark.slow
def test_rollouts_spread_and_survive_a_node_loss():
    r = run_scenario("train")
    # (a) the two rollout actors sit on the two worker nodes; learner and pool stay on the head
    assert sorted(r["actor_nodes"]) == r["worker_node_ids"]
    assert r["learner_node"] == r["head_node_id"]
    # (b) a node died mid-rollout, after the other actor had returned its episodes
    assert r["removed_node"] in r["worker_node_ids"]
    assert r["returned_before_loss"] > 0
    assert r["returned_in_batch"] == r["returned_before_loss"]  # nothing completed was lost
    assert r["batch_size"] == 4 * 2 and r["batch_uids_unique"]  # the dead actor's share re-issued
    assert r["batch_versions"] == [r["version"]]  # re-issued with the current weights, not fresh ones
    assert r["restarts"] >= 1 and r["update_ok"]
    # training goes on, on the surviving node
    assert r["after_step_batch"] == 2 * 2 and r["after_learner_step"] == 3
    survivor = next(n for n in r["worker_node_ids"] if n != r["removed_node"])
    assert r["actor_nodes_after"] == [survivor, survivor]


@pytest.mark.ray
@pytest.mark.slow
def test_serve_keeps_answering_when_a_replica_node_dies():
    r = run_scenario("serve")
    assert r["replica_nodes"] == r["worker_node_ids"]  # one replica per worker node
    assert r["before_ok"] == 4
    assert r["removed_node"] in r["worker_node_ids"]
    assert r["after_requests"] >= 8
    assert r["after_ok"] == r["after_requests"]  # every request answered ...
    assert r["after_max_attempts"] <= 3  # ... within a bounded retry
