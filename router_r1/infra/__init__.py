"""Infrastructure: the typed config (`config`), atomic writes (`atomic`), checkpoints
(`checkpoint`), MLflow tracking (`tracking`; the router's pyfunc model is
router_r1.serving.mlflow_model), secret masking (`redact`), startup checks (`preflight`) and the `router-r1` CLI (`cli`)."""
