"""A lightweight feature-based router trained with RLlib PPO on the replay world.

`features` turns a question (hashed n-grams) and the pool's descriptors into a vector, `env` is the
gymnasium environment (actions: call model k, or answer with the last reply; the Router-R1 reward),
`router` loads a trained RLModule and decides in well under a millisecond, and `eval_policy` plugs it
into evaluation through the ModelPool. `env` and `features` are Ray-free.
"""
