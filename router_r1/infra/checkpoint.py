"""Training checkpoints: atomic, self-verifying folders.

A checkpoint is a folder of files plus `manifest.json` (each file's size and sha256, the step,
and a JSON `meta` dict). It is written into a temporary folder beside its final name and renamed
into place in one `os.replace`, so a crash mid-write leaves no folder under the final name;
`load` re-hashes every file against the manifest and refuses a partial or edited checkpoint
with a `CheckpointError` naming the file. Ray-free; the learner decides what goes in.

Layout under a run directory: `<run_dir>/checkpoints/step_00000012/`; `latest(run_dir)` picks
the newest complete one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from router_r1.engines.model import CheckpointError
from router_r1.util.atomic import atomic_dir

MANIFEST = "manifest.json"
FORMAT = "router-r1-checkpoint/1"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives in a run directory."""
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save(path: str | Path, objects: dict[str, Any], step: int, meta: dict[str, Any] | None = None) -> Path:
    """Write `objects` (name -> anything `torch.save` takes; each becomes `<name>.pt`) and `meta`
    (JSON) as one checkpoint at `path`, atomically. An existing checkpoint there is replaced."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        files: dict[str, dict[str, Any]] = {}
        for name, obj in objects.items():
            buf = io.BytesIO()
            torch.save(obj, buf)
            data = buf.getvalue()
            fname = f"{name}.pt"
            _fsync_write(tmp / fname, data)
            files[fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {"format": FORMAT, "step": int(step), "files": files, "meta": meta or {}}
        # The manifest is written last: a folder without one was never completed.
        _fsync_write(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    mf = path / MANIFEST
    if not mf.exists():
        raise CheckpointError(f"{path}: no {MANIFEST}; the checkpoint is partial (its write never finished)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mf}: manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mf}: not a {FORMAT} manifest")
    return manifest


def verify(path: str | Path, hashes: bool = True) -> dict[str, Any]:
    """Check every file against the manifest (size, and sha256 when `hashes`); return the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    for fname, info in manifest["files"].items():
        f = path / fname
        if not f.exists():
            raise CheckpointError(f"{f}: missing from checkpoint {path}")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{f}: {size} bytes, the manifest says {info['bytes']} "
                                  "(truncated or partial file); refusing to load")
        if hashes and _sha256(f) != info["sha256"]:
            raise CheckpointError(f"{f}: sha256 does not match the manifest (file edited or corrupt); "
                                  "refusing to load")
    return manifest


def load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], int, dict[str, Any]]:
    """Verify then load a checkpoint: returns (objects, step, meta)."""
    path = Path(path)
    manifest = verify(path)
    objects = {}
    for fname in manifest["files"]:
        try:
            objects[fname.removesuffix(".pt")] = torch.load(path / fname, map_location=map_location,
                                                           weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path / fname}: cannot be read ({type(e).__name__}: {e})") from e
    return objects, int(manifest["step"]), manifest.get("meta", {})


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (highest step whose files match the manifest by size), or
    None. Incomplete ones (no manifest, missing or short files) are passed over; `load` still
    re-hashes the chosen one."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found: list[tuple[int, str, Path]] = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            manifest = verify(d, hashes=False)
        except CheckpointError:
            continue
        found.append((int(manifest.get("step", -1)), d.name, d))
    return max(found)[2] if found else None


def prune(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints of a run; returns the deleted folders."""
    root = Path(run_dir) / "checkpoints"
    if keep < 1 or not root.is_dir():
        return []
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_"))
    gone = dirs[:-keep]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone
