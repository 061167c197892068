"""cluster.yaml is a valid Ray cluster-launcher config, and the configs' resources map onto it."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_ray_schema():
    pytest.importorskip("jsonschema")
    import json

    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load(), schema)  # the file as written
    validate_config(prepare_config(load()))  # and as `ray up` sees it, defaults filled in


def test_schema_check_is_real():
    pytest.importorskip("jsonschema")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = load()
    bad["available_node_types"]["pool_cpu"]["min_workers"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_every_role_resource_is_provided_by_a_node_type():
    cfg = load()
    provided = {r for t in cfg["available_node_types"].values() for r in t.get("resources", {})}
    assert {"learner", "rollout", "model_pool"} <= provided
    assert cfg["head_node_type"] in cfg["available_node_types"]
