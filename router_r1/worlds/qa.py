"""QA sets (NQ, TriviaQA, HotpotQA, ...): their loaders and the world that trains on them
(`data.kind: qa`). Files are read with pyarrow: FlashRAG JSONL and verl Parquet/JSONL.

FlashRAG rows: {"id", "question", "golden_answers": [...]}.
verl rows: {"prompt": [{"content": question, ...}], "reward_model": {"ground_truth": ...}} where
ground_truth is a string, a list, or {"target": str | list}. Schema errors name file, row, field.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from router_r1.worlds.base import DataError, Item, QAExample, Split, World, check_trace_mix, item

if TYPE_CHECKING:
    from router_r1.infra.config import RunConfig
    from router_r1.pool.descriptors import PoolSpec


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a Parquet or JSONL file as dicts. Arrow reads both; a JSONL file whose rows mix
    types in one column (which Arrow cannot infer) is read line by line instead. Fields a row does
    not have are absent (not None), so a missing field is reported as missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported dataset format {path.suffix!r} (want .jsonl or .parquet)")
    try:
        rows = pajson.read_json(path).to_pylist()
        return [{k: v for k, v in r.items() if v is not None} for r in rows]
    except pa.ArrowInvalid:
        pass
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {i}: not valid JSON: {e}") from None
    return rows


def _answers(value: Any, where: str) -> list[str]:
    if isinstance(value, dict):
        if "target" not in value:
            raise DataError(f"{where}: reward_model.ground_truth has no 'target'")
        value = value["target"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise DataError(f"{where}: gold answers must be a non-empty list of strings, got {value!r}")
    return value


def _row_to_example(row: dict[str, Any], where: str, index: int, source: str) -> QAExample:
    if "question" in row and "golden_answers" in row:  # FlashRAG
        q, golds = row["question"], _answers(row["golden_answers"], f"{where}: field golden_answers")
    elif "prompt" in row and "reward_model" in row:  # verl
        prompt = row["prompt"]
        if not isinstance(prompt, list) or not prompt or not isinstance(prompt[0], dict) \
                or not isinstance(prompt[0].get("content"), str):
            raise DataError(f"{where}: field prompt[0].content missing or not a string")
        q = prompt[0]["content"]
        rm = row["reward_model"] if isinstance(row["reward_model"], dict) else {}
        if "ground_truth" not in rm:
            raise DataError(f"{where}: field reward_model.ground_truth missing")
        golds = _answers(rm["ground_truth"], f"{where}: field reward_model.ground_truth")
        source = row.get("data_source") or source
    else:
        raise DataError(f"{where}: expected FlashRAG fields (question, golden_answers) or verl "
                        f"fields (prompt, reward_model); got {sorted(row)}")
    if not isinstance(q, str) or not q.strip():
        raise DataError(f"{where}: field question is empty or not a string")
    rid = row.get("id")
    return QAExample(str(rid) if rid is not None else f"{source}-{index}", q.strip(), golds, source)


def load_qa(path: str | Path, limit: int | None = None) -> list[QAExample]:
    """Load a QA set in either format. `limit` keeps the first N rows."""
    path = Path(path)
    rows = read_rows(path)[:limit]
    source = path.stem.replace("_test", "").replace("_verl", "")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise DataError(f"{path}: row {i}: expected a JSON object")
        out.append(_row_to_example(r, f"{path}: row {i}", i, source))
    return out


class QAWorld(World):
    """Questions with gold answers from `data.train` (and `data.eval`, else a seeded
    `data.val_fraction` of the training rows held out); outcome EM/F1 against the gold answers,
    tokenizer text from the prompts and answers (the World defaults); no warm-start traces."""

    def __init__(self, train: list[Item], val: list[Item]):
        self._splits = {"train": train, "val": val}

    @classmethod
    def from_config(cls, cfg: RunConfig, pool: PoolSpec) -> QAWorld:
        check_trace_mix(cfg.warmstart.trace_mix, (), "qa")
        data = cfg.data
        if not data.train:
            raise ValueError("data.kind 'qa' needs data.train files")
        train = [item(f"{ex.source}:{ex.id}", ex.question, ex.golden_answers)
                 for path in data.train for ex in load_qa(path, data.limit)]
        if data.eval:
            val = [item(f"{ex.source}:{ex.id}", ex.question, ex.golden_answers)
                   for path in data.eval for ex in load_qa(path, data.limit)]
        else:  # hold out a seeded fraction of the training rows
            rng = random.Random(cfg.split_seed)
            order = list(range(len(train)))
            rng.shuffle(order)
            n_val = max(1, int(len(train) * data.val_fraction))
            held = set(order[:n_val])
            val = [train[i] for i in sorted(held)]
            train = [x for i, x in enumerate(train) if i not in held]
        return cls(train, val)

    def questions(self, split: Split) -> list[Item]:
        return self._splits[split]
