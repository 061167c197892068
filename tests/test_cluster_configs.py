"""The cluster configs named in cluster.yaml load, and every resource they ask for is offered by
one of cluster.yaml's node types (otherwise the actor would wait forever for a node)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from router_r1.infra.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())
OFFERED = {r for t in CLUSTER["available_node_types"].values() for r in t.get("resources", {})}


def test_configs_named_in_cluster_yaml_exist():
    named = set(re.findall(r"configs/[\w.]+\.yaml", (ROOT / "cluster.yaml").read_text()))
    assert {"configs/cluster_train.yaml", "configs/serve_cluster.yaml"} <= named
    for rel in named:
        assert (ROOT / rel).is_file(), rel


def test_cluster_train_config_maps_onto_node_types():
    cfg = load_config(ROOT / "configs" / "cluster_train.yaml")
    roles = {"learner": cfg.learner.resources, "rollout": cfg.rollout.resources,
             "pool_runtime": cfg.pool_runtime.resources, "serve": cfg.serve.resources}
    for role, res in roles.items():
        assert res, f"{role} asks for no custom resource: it could land on the head"
        assert set(res) <= OFFERED, (role, res)
    # bf16 end to end: a bf16 policy, float32 master weights in the learner (autocast to bf16)
    assert cfg.learner.num_gpus >= 1 and cfg.policy.dtype == "bfloat16" and cfg.learner.master_dtype == "float32"
    assert cfg.rollout.engine == "vllm" and cfg.rollout.num_gpus >= 1
    assert cfg.ray.address == "auto"
    assert cfg.load_pool().names  # the descriptor file resolves from the config's folder
    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    assert not set(head.get("resources", {})) & set().union(*roles.values())  # no role on the head


def test_serve_cluster_config_is_a_serve_deploy_file_whose_args_load():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((ROOT / "configs" / "serve_cluster.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    assert app.import_path == "deployments.router:build_app"
    args = dict(app.args)
    args.pop("checkpoint")
    config = Path(args.pop("config"))
    cfg = load_config(ROOT / "configs" / config.name, overrides=args)  # as build_app loads it
    assert set(cfg.serve.resources) <= OFFERED and set(cfg.pool_runtime.resources) <= OFFERED
    assert cfg.serve.min_replicas == 2 and cfg.serve.num_gpus == 0.5
