"""Experiment tracking with MLflow: params, per-step metrics, artifacts, the final router.

The tracking URI comes from `MLFLOW_TRACKING_URI` or the config (default a local SQLite store,
`sqlite:///mlruns/mlflow.db`); the filesystem store is refused, since MLflow deprecates it.
Artifacts of a new experiment go to an `artifacts/` folder beside the SQLite file. A run is
identified by its MLflow run id, which the trainer keeps in its checkpoints so `--resume`
continues the same run. `NullTracker` has the same methods and does nothing (tests, `enabled:
false`).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from router_r1.infra.config import MlflowConfig

# Artifact download bars would interleave with the training progress bar.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Metrics drawn in the training-curves PNG, when present (name -> panel title).
CURVES = {"reward/mean": "reward", "outcome/em": "EM", "format/ok_rate": "format ok",
          "cost/mean_usd": "cost per episode (USD)", "calls/per_episode": "calls per episode",
          "actor/kl": "KL to reference",
          "eval/reward/mean": "greedy val reward (start, every eval_every, end)"}


# The experiment's kind as MLflow's UI reads it (`mlflow.experimentKind`).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """`MLFLOW_TRACKING_URI` wins over the config. Refuses the deprecated file store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if "://" not in uri or uri.startswith("file:"):
        raise ValueError(f"MLflow tracking URI {uri!r} is a filesystem store, which MLflow "
                         f"deprecates; use a database, e.g. sqlite:///mlruns/mlflow.db")
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return uri


def artifact_root(uri: str) -> str | None:
    """Beside the SQLite file; None (the server's default) for remote stores."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "artifacts").as_uri()
    return None


class NullTracker:
    """Tracking switched off: every method is a no-op, `run_id` is None."""

    run_id: str | None = None

    def start(self, run_id: str | None = None, run_name: str | None = None) -> str | None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_series(self, name: str, values: list[float]) -> None: ...
    def log_samples(self, records: list[dict], name: str) -> None: ...
    def log_curves(self, history: list[dict[str, float]], sft_losses: list[float] = (),
                   name: str = "training_curves.png") -> None: ...
    def describe_run(self, markdown: str) -> None: ...
    def log_dir(self, path: str | Path, artifact_path: str) -> None: ...
    def log_dict(self, d: dict, name: str) -> None: ...
    def log_pyfunc(self, name: str, python_model: Any, **kwargs: Any) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, cfg: MlflowConfig):
        import mlflow

        self.mlflow = mlflow
        self.uri = resolve_tracking_uri(cfg)
        mlflow.set_tracking_uri(self.uri)
        client = mlflow.MlflowClient(self.uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        self.experiment_id = exp.experiment_id if exp is not None else client.create_experiment(
            cfg.experiment, artifact_location=artifact_root(self.uri))
        # A model-training experiment: the UI opens on runs and their charts, not the GenAI overview.
        if (exp is None or EXPERIMENT_KIND[0] not in exp.tags):
            client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        self.run_id = None

    def start(self, run_id: str | None = None, run_name: str | None = None) -> str:
        """A new run, or the run `run_id` continued (resume)."""
        run = self.mlflow.start_run(run_id=run_id, experiment_id=None if run_id else self.experiment_id,
                                    run_name=None if run_id else run_name)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened config. Values are stringified; MLflow refuses changing a logged param, so a
        resumed run only logs the params it does not have yet."""
        have = self.mlflow.get_run(self.run_id).data.params
        new = {k: _param(v) for k, v in params.items() if k not in have}
        if new:
            self.mlflow.log_params(new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        clean = {k.replace("/", "."): float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_series(self, name: str, values: list[float]) -> None:
        """`values[i]` as metric `name` at step i + 1, in batches of MLflow's 1,000 metrics."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name.replace("/", "."), float(v), now, i + 1) for i, v in enumerate(values)
                   if math.isfinite(float(v))]
        client = self.mlflow.MlflowClient(self.uri)
        for i in range(0, len(metrics), 1000):
            client.log_batch(self.run_id, metrics=metrics[i:i + 1000], synchronous=True)

    def log_samples(self, records: list[dict], name: str) -> None:
        """Sample trajectories as an MLflow table (one row per episode, one column per field; the
        UI shows it as a table), nested fields as JSON text."""
        cols = list(dict.fromkeys(k for r in records for k in r))
        data = {c: [r.get(c) if isinstance(r.get(c), (str, int, float, bool, type(None)))
                    else json.dumps(r.get(c), ensure_ascii=False, default=str) for r in records] for c in cols}
        self.mlflow.log_table(data=data, artifact_file=name)

    def log_dict(self, d: dict, name: str) -> None:
        self.mlflow.log_dict(d, name)

    def describe_run(self, markdown: str) -> None:
        """The run page's description, shown first when the run opens."""
        self.mlflow.set_tag("mlflow.note.content", markdown)

    def log_curves(self, history: list[dict[str, float]], sft_losses: list[float] = (),
                   name: str = "training_curves.png") -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = plot_curves(history, Path(tmp) / name, sft_losses)
            if path is not None:
                self.mlflow.log_artifact(str(path))

    def log_dir(self, path: str | Path, artifact_path: str) -> None:
        self.mlflow.log_artifacts(str(path), artifact_path)

    def log_pyfunc(self, name: str, python_model: Any, **kwargs: Any) -> None:
        """An MLflow pyfunc model in this run (`mlflow.pyfunc.log_model(name=..., python_model=...,
        **kwargs)`): the router's is built by router_r1.serving.mlflow_model.log_router."""
        self.mlflow.pyfunc.log_model(name=name, python_model=python_model, **kwargs)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.mlflow.end_run(status=status)


def _param(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def plot_curves(history: list[dict[str, float]], path: str | Path, sft_losses: list[float] = ()) -> Path | None:
    """A PNG grid (matplotlib, Agg backend): the warm start's loss by supervised step, then the
    RL curves in CURVES by RL step; None if there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if any(k in h for h in history)]
    panels = (["sft"] if sft_losses else []) + keys
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, k in zip(axes.flat, panels):
        if k == "sft":
            ax.plot(range(1, len(sft_losses) + 1), list(sft_losses), linewidth=1)
            ax.set_title("warm start: loss (nll)")
            ax.set_xlabel("supervised step")
        else:
            pts = [(h["step"], h[k]) for h in history if k in h]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", linewidth=1)
            ax.set_title(f"RL: {CURVES[k]}")
            ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def make_tracker(cfg: MlflowConfig) -> NullTracker:
    return MlflowTracker(cfg) if cfg.enabled else NullTracker()
