"""router-r1's Ray-free core, grouped by role (docs/architecture.md draws the data flow):

- `rl/`: the RL maths (GRPO/PPO losses, advantages, KL) and the batch contract with the learner;
- `env/`: the routing environment: protocol, prompt, episode machine, reward, cost, EM/F1,
  episode scores and rollout metrics;
- `worlds/`: data sources behind one `World` protocol: the simulator, replay tables, QA sets;
- `engines/`: the router LLM (load, save, build) and its generation engines (transformers,
  vLLM, OpenAI-compatible endpoint);
- `pool/`: the ModelPool's logic, its backends and the model descriptors;
- `evaluation/`: routing policies to compare (baselines, LLM routers) and their report;
- `infra/`: config, checkpoints, tracking (MLflow and the router's pyfunc model), CLI, preflight;
- `rl_router/`: the RLlib router, a separate small-policy baseline.
"""
