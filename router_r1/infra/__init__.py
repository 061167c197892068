"""Infrastructure: the typed config (`config`), atomic writes (`atomic`), checkpoints
(`checkpoint`), MLflow tracking (`tracking`) and the router's MLflow pyfunc model (`mlflow_model`),
secret masking (`redact`), startup checks (`preflight`) and the `router-r1` CLI (`cli`)."""
