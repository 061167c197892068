"""router-r1's Ray-free core, grouped by role (docs/architecture.md draws the data flow):

- `rl/`: the RL maths (GRPO/PPO losses, advantages, KL) and the batch contract with the learner;
- `env/`: the routing environment: protocol, prompt, episode machine, reward, cost, EM/F1,
  episode scores and rollout metrics;
- `worlds/`: data sources behind one `World` protocol: the simulator, replay tables, QA sets;
- `engines/`: the router LLM (load, save, build) and its generation engines (transformers,
  vLLM, OpenAI-compatible endpoint);
- `pool/`: the ModelPool's logic, its backends and the model descriptors;
- `evaluation/`: routing policies to compare (baselines, LLM routers) and their report;
- `util/`: redaction of secrets and atomic writes;
- `infra/`: config, memory plan, checkpoints, seeding, tracking (MLflow), preflight;
- `serving/`: the served router without Ray: the OpenAI wire format, the request logic shared
  with the Serve app, the Python API (`router_r1.Router`) and the MLflow pyfunc model;
- `rl_router/`: the RLlib router, a separate small-policy baseline.

`router_r1.Router` (router_r1.serving.router.Router) is imported on first use, so importing any
part of the core never pulls in the serving stack.
"""


def __getattr__(name: str):
    if name == "Router":
        from router_r1.serving.router import Router

        return Router
    raise AttributeError(f"module 'router_r1' has no attribute {name!r}")
