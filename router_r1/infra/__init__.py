"""Infrastructure: the typed config (`config`), the learner's memory plan (`memory_plan`),
checkpoints (`checkpoint`), seeds and RNG state (`seeding`), MLflow tracking (`tracking`; the
router's pyfunc model is router_r1.serving.mlflow_model) and startup checks (`preflight`)."""
