"""RL maths (`algos`: advantages, policy and value losses, KL) and the batch contract between
rollouts and the learner (`batch`: TrajectoryBatch / TensorBatch). Ray-free, CPU-testable."""
