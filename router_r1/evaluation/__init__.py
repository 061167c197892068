"""Evaluation: routing policies to compare (`baselines`: direct baselines and LLM routers played
by the episode machine), per-question scoring, aggregates and the Pareto report (`report`), and
scoring of finished completions for `router-r1 score` (`completions`)."""
