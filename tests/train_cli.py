"""Run `router-r1 train` in a subprocess, as a user would, isolated from the caller's Ray and MLflow."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_train_cli(cfg_file: Path, cwd: Path, timeout: float, pythonpath: tuple[Path, ...] = (ROOT,),
                  **env: str) -> subprocess.CompletedProcess:
    """`python -m pipelines.cli train --config cfg_file --no-progress` in `cwd`, with `env`
    added and no inherited MLFLOW_TRACKING_URI or RAY_ADDRESS (the run starts its own local Ray)."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), **env}
    full.pop("MLFLOW_TRACKING_URI", None)
    full.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--config", str(cfg_file),
                           "--no-progress"], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)
