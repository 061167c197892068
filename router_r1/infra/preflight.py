"""Checks a driver runs before it starts any actor or replica, so a user's mistake is one clear
line on the terminal, not an `ActorDiedError` after 40 s or a replica retried three times.

Each check raises `CheckpointError` (checkpoints) or `ValueError` (everything else) with a
message fit to print as is. They read files and the environment only: no model is built.
"""
from __future__ import annotations

import contextlib
import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

from router_r1.engines.model import CheckpointError, check_checkpoint_dir
from router_r1.infra import checkpoint as ckpt


def check_weights(path: Path) -> list[Path]:
    """Every weight file of a transformers checkpoint is complete: a safetensors file is exactly
    as long as its header says (a truncated copy is caught without reading the tensors), a torch
    `.bin` is a readable zip, and every shard an index names is there. Returns the files."""
    index = sorted(path.glob("*.index.json"))
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    for ix in index:
        try:
            shards = set(json.loads(ix.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{ix}: not a valid weight index") from None
        missing = sorted(s for s in shards if not (path / s).exists())
        if missing:
            raise CheckpointError(f"{path}: weight shard(s) missing: {', '.join(missing)}")
    if not files:
        raise CheckpointError(f"{path}: no weights (*.safetensors or pytorch_model*.bin)")
    for f in files:
        if f.suffix == ".safetensors":
            _check_safetensors(f)
        elif not zipfile.is_zipfile(f):
            raise CheckpointError(f"{f}: truncated or not a torch checkpoint")
    return files


def _check_safetensors(f: Path) -> None:
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise CheckpointError(f"{f}: not a readable safetensors file (truncated or corrupt)") from None
    if size != 8 + n + end:
        raise CheckpointError(f"{f}: {size} bytes, its header says {8 + n + end}: truncated or corrupt")


def check_policy_checkpoint(path: str | Path) -> Path:
    """A policy checkpoint folder that will load: config.json parses, the weights are complete,
    a manifest (when there is one) matches, the tokenizer files are there."""
    p = check_checkpoint_dir(Path(path).expanduser())
    try:
        cfg = json.loads((p / "config.json").read_text())
        if not isinstance(cfg, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p}/config.json: not valid JSON ({type(e).__name__})") from None
    if (p / ckpt.MANIFEST).exists():
        ckpt.verify(p)
    check_weights(p)
    if not any((p / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json",
                                          "tokenizer_config.json")):
        raise CheckpointError(f"{p}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    return p


def check_resume(run_dir: str | Path) -> Path:
    """The checkpoint `--resume` will load, hashes verified here rather than in the learner."""
    path = ckpt.latest(run_dir)
    if path is None:
        raise CheckpointError(f"--resume: no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
    ckpt.verify(path)
    return path


SHARED_STORAGE_HINT = ("output_dir must be shared storage that every learner node and the driver see at "
                       "the same path (NFS, or a cloud bucket through a mounted path; docs/cluster.md)")


def check_shared_output_dir(run_dir: Path, write: Callable[[str, str], list[tuple[str, str]]]) -> None:
    """The learners write checkpoints into `run_dir` and the driver reads them back (resume,
    pruning, the MLflow upload): a token file written by every learner (`write(folder, token)` ->
    [(path, node), ...], one per rank) must be readable here, at once. Raises ValueError with one
    line saying which node and why; removes the token files."""
    import uuid

    folder = Path(run_dir) / ".storage_check"
    token = uuid.uuid4().hex
    try:
        written = write(str(folder), token)
    except Exception as e:  # a Ray task error wrapping the learner's OSError
        cause = e.__cause__ or e
        raise ValueError(f"output_dir {run_dir} is not writable from the learner's node "
                         f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}); "
                         f"{SHARED_STORAGE_HINT}") from None
    for path, node in written:
        p = Path(path)
        if not p.is_file() or p.read_text() != token:
            raise ValueError(f"output_dir {run_dir}: a file the learner on node {node} wrote there is not "
                             f"visible from the driver; {SHARED_STORAGE_HINT}")
        p.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()
