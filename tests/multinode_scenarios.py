"""Multi-node scenarios on one machine (`ray.cluster_utils.Cluster`), one per process:

    python -m tests.multinode_scenarios train   # rollout actors spread; a node dies mid-rollout
    python -m tests.multinode_scenarios serve   # 2 replicas on 2 nodes; one node dies

Each prints one JSON line (prefixed `RESULT `) that tests/test_multinode.py checks. A Cluster is
its own Ray, so these cannot share the test session's `ray_local`: each runs in a subprocess.

Layout, as in cluster.yaml: the head holds the driver, the learner (`learner`) and the ModelPool
(`model_pool`); two worker nodes hold rollout actors or Serve replicas (`rollout`).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 1024}
# Notice a dead node within ~1.5 s instead of Ray's default ~15 s.
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                "health_check_failure_threshold": 3}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_cluster(worker_resources: dict[str, float], worker_cpus: int = 2):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"learner": 1, "model_pool": 1},
        "object_store_memory": 150 * 1024 * 1024, "include_dashboard": False,
        "_system_config": FAST_FAILURE})
    log("head started")
    workers = [cluster.add_node(num_cpus=worker_cpus, resources=dict(worker_resources),
                                object_store_memory=100 * 1024 * 1024) for _ in range(2)]
    cluster.wait_for_nodes()
    return cluster, workers


def node_of(actor) -> str:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


# -- training --------------------------------------------------------------------------------------
def scenario_train() -> dict:
    """Rollout actors land on different worker nodes; one node is removed while its actor is still
    generating, after the other actor has returned its episodes. The returned episodes must all be
    in the batch trained on, the dead actor's share re-issued elsewhere, and training go on."""
    import ray

    from pipelines.train import Trainer
    from router_r1.infra.config import load_config

    cluster, workers = start_cluster({"rollout": 2})
    out_dir = tempfile.mkdtemp(prefix="router_r1_multinode_")
    cfg = load_config(None, {
        "name": "multinode", "output_dir": out_dir, "pool": str(ROOT / "configs" / "pool_simulated.yaml"),
        "policy.prompt_layout": "compact", "policy.tiny": TINY, "policy.tokenizer_vocab_size": 400,
        "pool_runtime": {"actor_name": f"pool_{uuid.uuid4().hex[:8]}", "ledger_dir": None, "cache": False,
                         "num_cpus": 0, "resources": {"model_pool": 1}},
        "rollout": {"num_actors": 2, "episodes_per_actor": 4, "num_cpus": 1, "max_restarts": 2,
                    "resources": {"rollout": 1}},
        "learner": {"algorithm": "grpo", "group_size": 2, "num_cpus": 1, "micro_batch_size": 8,
                    "resources": {"learner": 1}},
        "episode": {"max_turns": 2, "max_new_tokens": 24, "max_obs_tokens": 24},
        "data": {"kind": "simulated", "sim": {"val_size": 4}}, "mlflow": {"enabled": False},
        "ray": {"address": cluster.address}, "train": {"steps": 3, "checkpoint_every": 0}})
    T0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    trainer.start_ray()
    result: dict = {}
    try:
        trainer.create_pool()
        trainer.create_learner()
        trainer.create_rollout_workers()
        group = trainer.workers
        head = cluster.head_node.node_id
        worker_nodes = {n.node_id: n for n in workers}
        result["actor_nodes"] = [node_of(w) for w in group.workers]
        result["worker_node_ids"] = sorted(worker_nodes)
        result["head_node_id"] = head
        result["learner_node"] = node_of(trainer.learner.rank0)

        def step(n_questions: int, on_first_result=None, straggler: int | None = None) -> tuple[list, dict]:
            trainer.step += 1
            trainer.sync_weights()
            items = trainer.stream.next_batch(n_questions)
            if straggler is not None:  # a slow node: this actor's rollout queues behind a sleep
                group.workers[straggler].__ray_call__.remote(lambda self: time.sleep(10))
            if on_first_result is None:
                episodes = trainer.rollouts(items, cfg.learner.group_size, seed=trainer.step)
            else:
                episodes = _with_first_result_hook(lambda: trainer.rollouts(
                    items, cfg.learner.group_size, seed=trainer.step), on_first_result)
            scores = trainer.rewards(episodes)
            return episodes, trainer.update(episodes, scores)

        result["setup_s"] = round(time.perf_counter() - T0, 1)
        step(2)  # a normal step on two nodes
        returned: list[tuple[str, str]] = []  # (uid, response) of episodes back before the node died
        removed: list[str] = []

        def remove_other_node(first_value: list, others_pending: bool) -> None:
            if removed or not others_pending:
                return
            done_worker = first_value[0].meta["worker"]
            returned.extend((e.uid, e.response) for e in first_value)
            victim = result["actor_nodes"][1 - done_worker]
            cluster.remove_node(worker_nodes[victim], allow_graceful=False)
            removed.append(victim)

        t0 = time.perf_counter()
        # Worker 0 straggles: worker 1's episodes come back first, then worker 0's node dies.
        episodes, metrics = step(4, remove_other_node, straggler=0)
        result["loss_step_s"] = round(time.perf_counter() - t0, 1)
        batch = {(e.uid, e.response) for e in episodes}
        result.update(
            removed_node=removed[0] if removed else None, returned_before_loss=len(returned),
            returned_in_batch=sum(r in batch for r in returned), batch_size=len(episodes),
            batch_versions=sorted({e.policy_version for e in episodes}), version=trainer.version,
            restarts=trainer.restarts, update_ok=bool(metrics["learner/step"] > 0),
            batch_uids_unique=len({e.uid for e in episodes}) == len(episodes))
        episodes, metrics = step(2)  # training goes on with the survivors
        result.update(after_step_batch=len(episodes), after_learner_step=metrics["learner/step"],
                      actor_nodes_after=[node_of(w) for w in group.workers])
    finally:
        trainer.shutdown()
        cluster.shutdown()
    return result


def _with_first_result_hook(fn, hook):
    """Run `fn` with `ray.wait` patched: when the first of several rollout results is ready,
    call `hook(value, others_pending)` before the driver sees it (the moment to kill a node)."""
    import ray

    real_wait = ray.wait
    state = {"fired": False}

    def wait(refs, *args, **kwargs):
        ready, rest = real_wait(refs, *args, **kwargs)
        if not state["fired"] and len(refs) > 1 and ready:
            value = ray.get(ready[0])
            if isinstance(value, list) and value and hasattr(value[0], "uid"):
                state["fired"] = True
                still, _ = real_wait(rest, num_returns=len(rest), timeout=0) if rest else ([], [])
                hook(value, len(still) < len(rest))
        return ready, rest

    ray.wait = wait
    try:
        return fn()
    finally:
        ray.wait = real_wait


# -- serving ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(base: str, question: str, timeout: float = 30) -> tuple[int, dict]:
    body = json.dumps({"model": "router-r1", "messages": [{"role": "user", "content": question}]}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {"error": e.read().decode(errors="replace")[:300]}
    except OSError as e:
        return 0, {"error": repr(e)}


def scenario_serve() -> dict:
    """Two replicas pinned to two worker nodes (one `rollout` slot each); one node is removed
    while requests flow. Every request must succeed, each within at most 3 attempts."""
    import ray
    import yaml
    from ray import serve

    from benchmarks.tiny_router import build_scripted_router
    from deployments.router import build_app
    from router_r1.pool.descriptors import load_pool

    import torch

    torch.set_num_threads(1)  # the fixture's SFT below: two threads on a loaded 2-core machine crawl
    cluster, workers = start_cluster({"rollout": 1}, worker_cpus=1)
    tmp = Path(tempfile.mkdtemp(prefix="router_r1_multinode_serve_"))
    pool_path = ROOT / "configs" / "pool_simulated.yaml"
    actor_name = f"serve_pool_{uuid.uuid4().hex[:8]}"
    (tmp / "config.yaml").write_text(yaml.safe_dump({
        "name": "multinode-serve", "pool": str(pool_path),
        "pool_runtime": {"actor_name": actor_name, "ledger_dir": str(tmp / "ledger"), "cache": False, "num_cpus": 0,
                         "resources": {"model_pool": 1}},
        "episode": {"max_turns": 2, "max_new_tokens": 48},
        "serve": {"num_cpus": 0, "min_replicas": 2, "max_replicas": 2, "resources": {"rollout": 1},
                  "request_timeout_s": 20, "max_batch_size": 8, "batch_wait_timeout_s": 0.01}}))
    ckpt = build_scripted_router(tmp / "router", load_pool(pool_path), "Sim-Geo-Small", steps=100,
                                 prompt_options={"layout": "compact"})
    log("scripted router built")
    ray.init(address=cluster.address, namespace="router_r1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}})
    result: dict = {}
    try:
        port = _free_port()
        # One proxy on the head: every "node" here shares the machine's ports.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"checkpoint": str(ckpt), "config": str(tmp / "config.yaml")}),
                  name="router_r1", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        log("app deployed")
        _wait_healthy(base)
        replica_nodes = _replica_nodes()
        result["replica_nodes"] = sorted(replica_nodes)
        result["worker_node_ids"] = sorted(n.node_id for n in workers)
        before = [_ask(base, f"What is the capital of country {i}?") for i in range(4)]
        result["before_ok"] = sum(s == 200 for s, _ in before)
        victim = next(n for n in workers if n.node_id in replica_nodes)
        cluster.remove_node(victim, allow_graceful=False)
        log("replica node removed")
        result["removed_node"] = victim.node_id
        attempts, latencies, answers = [], [], 0
        t_end = time.time() + 8  # keep asking while Serve notices the dead replica
        i = 0
        while time.time() < t_end or i < 8:
            t0 = time.perf_counter()
            for k in range(1, 4):  # a bounded retry: a request in flight on the dead replica fails
                status, body = _ask(base, f"Who founded company {i}?")
                if status == 200:
                    answers += bool(body["choices"][0]["message"]["content"])
                    break
                time.sleep(0.5)
            attempts.append(k if status == 200 else None)
            latencies.append(time.perf_counter() - t0)
            i += 1
        result.update(after_requests=len(attempts), after_ok=sum(a is not None for a in attempts),
                      after_max_attempts=max((a for a in attempts if a), default=None),
                      after_first_try=sum(a == 1 for a in attempts), answers=answers,
                      max_latency_s=round(max(latencies), 2))
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
    return result


def _wait_healthy(base: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=5).read()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def _replica_nodes() -> set[str]:
    """Node ids of the RouterR1 replicas' actors (from the GCS actor table)."""
    import ray

    nodes = set()
    for info in ray._private.state.actors().values():
        if "RouterR1" in info.get("ActorClassName", "") and info.get("State") == "ALIVE":
            nodes.add(info["Address"]["NodeID"])
    return nodes


SCENARIOS = {"train": scenario_train, "serve": scenario_serve}

if __name__ == "__main__":
    # A Cluster writes its address where every plain `ray.init()` on this machine looks
    # (<RAY_TMPDIR>/ray_current_cluster): keep it, and the sessions, in a private folder.
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rr1mn_", dir="/tmp"))
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in SCENARIOS:
        sys.exit(f"usage: python -m tests.multinode_scenarios {{{'|'.join(SCENARIOS)}}}")
    t0 = time.perf_counter()
    res = SCENARIOS[name]()
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(res), flush=True)
