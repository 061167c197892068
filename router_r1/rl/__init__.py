"""RL maths (`algos`: advantages, policy and value losses, KL; `update`: how an update is cut into
steps and its loss and metrics; `logprobs`: float32 log-probs and entropy in chunks), the trained
model (`policy_model`), LR schedules (`schedule`) and the batch contract between rollouts and the
learner (`batch`: TrajectoryBatch / TensorBatch). Ray-free, CPU-testable."""
