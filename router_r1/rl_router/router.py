"""RLlibRouter: a trained RLModule plus its feature spec; decides from features, no Algorithm.

    router = RLlibRouter.load("outputs/rllib_router")
    router.route("Which gas do plants take in?")   # -> "Mixtral-8x7B-Chat"

The checkpoint folder holds the RLModule (RLlib's `from_checkpoint` layout under `rl_module/`)
and `rllib_router.json` (feature spec, max calls, the training pool's descriptors). `pool=` swaps
in another descriptor file (unseen models: descriptors change, the network does not).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_r1.pool.descriptors import PoolSpec
from router_r1.rl_router.features import FeatureSpec, assign_slots, hash_ngrams, observation, pool_features

META_FILE = "rllib_router.json"
MODULE_DIR = "rl_module"


@dataclass
class Decision:
    action: int  # < max_models: call that slot; == max_models: answer
    model: str | None


class RLlibRouter:
    def __init__(self, module: Any, spec: FeatureSpec, pool: PoolSpec, max_calls: int,
                 meta: dict[str, Any] | None = None):
        import torch

        self.module, self.spec, self.max_calls, self.meta = module, spec, max_calls, meta or {}
        self._torch = torch
        self._mlp = _numpy_policy(module, spec.obs_dim, self._module_logits)
        self.set_pool(pool)

    def set_pool(self, pool: PoolSpec) -> None:
        """Route over `pool`: trained models keep their slots, unseen ones take free slots."""
        self.pool = pool
        self.slots = assign_slots(pool, self.spec, self.meta.get("slots", []))
        self.pool_block = pool_features(self.slots, self.spec.desc_dim)

    @classmethod
    def load(cls, path: str | Path, pool: PoolSpec | None = None) -> "RLlibRouter":
        from ray.rllib.core.rl_module.rl_module import RLModule

        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.exists():
            raise FileNotFoundError(f"{path}: not an RLlib router checkpoint (no {META_FILE})")
        meta = json.loads(meta_file.read_text())
        module = RLModule.from_checkpoint(str((path / MODULE_DIR).resolve()))
        module.eval()
        train_pool = PoolSpec.model_validate(meta["pool"])
        return cls(module, FeatureSpec(**meta["features"]), pool or train_pool, int(meta["max_calls"]), meta)

    def logits(self, obs: np.ndarray) -> np.ndarray:
        if self._mlp is not None:
            return self._mlp(obs)
        return self._module_logits(obs)

    def _module_logits(self, obs: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.from_numpy(obs[None, :])})
        return out["action_dist_inputs"][0].numpy()

    def decide(self, question_vec: np.ndarray, reply: str | None, called: np.ndarray, step: int) -> Decision:
        """Greedy action over valid ones: a model of this pool, or answer once there is a reply."""
        obs = observation(self.spec, question_vec, reply, called, step, self.max_calls, self.pool_block)
        z = self.logits(obs).astype(np.float64)
        valid = np.zeros_like(z, dtype=bool)
        valid[:self.spec.max_models] = self.pool_block[1] > 0
        valid[self.spec.max_models] = reply is not None
        if step >= self.max_calls:
            valid[:] = False
            valid[self.spec.max_models] = True
        if not valid.any():  # no model to call and nothing to answer with: answer empty
            valid[self.spec.max_models] = True
        a = int(np.argmax(np.where(valid, z, -np.inf)))
        return Decision(a, self.slots[a].name if a < self.spec.max_models else None)

    def question_features(self, question: str) -> np.ndarray:
        return hash_ngrams(question, self.spec.question_dim)

    def route(self, question: str) -> str:
        """The model to call first for `question` (one forward pass of a small MLP)."""
        d = self.decide(self.question_features(question), None,
                        np.zeros(self.spec.max_models, dtype=np.float32), 0)
        assert d.model is not None
        return d.model


def _numpy_policy(module: Any, obs_dim: int, reference) -> Any:
    """The actor of RLlib's default PPO module (MLP encoder + MLP head) as numpy matmuls.

    One decision is then a few microseconds instead of a framework call; the copy is checked
    against the module on random inputs, and any other architecture keeps using the module."""
    import torch.nn as nn

    try:
        seq = list(module.encoder.actor_encoder.net.mlp) + list(module.pi.net.mlp)
    except AttributeError:
        return None
    ops: list[tuple[str, Any]] = []
    for layer in seq:
        if isinstance(layer, nn.Linear):
            ops.append(("linear", (layer.weight.detach().numpy().astype(np.float32).T.copy(),
                                   layer.bias.detach().numpy().astype(np.float32))))
        elif isinstance(layer, nn.ReLU):
            ops.append(("relu", None))
        elif isinstance(layer, nn.Tanh):
            ops.append(("tanh", None))
        else:
            return None

    def forward(x: np.ndarray) -> np.ndarray:
        h = x.astype(np.float32, copy=False)
        for op, p in ops:
            if op == "linear":
                h = h @ p[0] + p[1]
            elif op == "relu":
                h = np.maximum(h, 0.0)
            else:
                h = np.tanh(h)
        return h

    probe = np.random.default_rng(0).normal(size=(3, obs_dim)).astype(np.float32)
    if not all(np.allclose(forward(x), reference(x), atol=1e-4) for x in probe):
        return None
    return forward
