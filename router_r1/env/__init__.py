"""The routing environment: the protocol the router writes (`protocol`), the prompt it reads
(`prompt`), the multi-turn episode machine (`episode`), the reward and its cost normalisers
(`reward`, `cost`), answer metrics EM/F1 (`answer_metrics`), and episode scores plus rollout
metrics (`episode_metrics`). It knows no data source: worlds plug in through `router_r1.worlds`."""
