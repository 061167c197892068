"""The replay world: real models' cached answers, correctness labels and costs, in long form.

Two public sources (see ../shared/data/README.md):
- RouterBench (Hu et al., 2024, arXiv 2403.12031) wide CSVs: per model a correctness column named
  after the model, `<model>|model_response` (a Python-literal list, as a string) and
  `<model>|total_cost` (USD); `prompt` is a Python-literal list of turns.
- RouteLLM's GSM8K file (Ong et al., 2024): per model True/False and `<model>_response`; no cost
  (cost is priced later from the model descriptors and token estimates).

Both are turned into one long table, one row per (question, model):
`sample_id, eval_name, prompt, model, response, correct, cost` (cost null when not recorded), plus
optional `prompt_tokens, completion_tokens`, which is what the replay backend, the baselines and the
RLlib environment read. The long table is also an input format of its own (a Parquet file with
these columns; docs/evaluation.md), and a world builds one in memory from rows
(`ReplayTable.from_rows`; router_r1.worlds.recorded). Ray-free.

Outcome rule (docs/evaluation.md): RouterBench has correctness labels, not gold answers, so an
episode's outcome is the label of the called model's reply that its final answer adopts.
"""
from __future__ import annotations

import ast
import csv
import hashlib
import os
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.types import CallFn, CallResult
from router_r1.worlds.base import DataError

LONG_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("eval_name", pa.string()), ("prompt", pa.string()),
    ("model", pa.string()), ("response", pa.string()), ("correct", pa.float64()),
    ("cost", pa.float64()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
])
# Columns a long table may leave out (null when absent): the recorded token counts of the call.
OPTIONAL_COLUMNS = ("prompt_tokens", "completion_tokens")
REQUIRED_COLUMNS = tuple(n for n in LONG_SCHEMA.names if n not in OPTIONAL_COLUMNS)
_ROUTERBENCH_META = {"", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}


def shared_data_dir() -> Path:
    """The real-data folder: $ROUTER_R1_DATA_DIR, else <repo root>/../shared/data."""
    env = os.environ.get("ROUTER_R1_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[4] / "shared" / "data"


def resolve_data_path(p: str | Path, pool: PoolSpec | None = None) -> Path:
    """A table path from a pool file or the command line: absolute, else relative to the pool
    file's folder, the working directory, then the shared data folder (first that exists)."""
    q = Path(p).expanduser()
    if q.is_absolute():
        return q
    cands = ([Path(pool.resolve_path(str(q)))] if pool is not None else []) + [q, shared_data_dir() / q]
    return next((c for c in cands if c.exists()), cands[-1])


def prompt_key(text: str) -> str:
    """The lookup key of a question: whitespace collapsed, nothing else changed."""
    return " ".join(text.split())


def _literal_text(value: Any, where: str) -> str:
    """A RouterBench cell holding a Python-literal list of strings (turns or a reply) -> text."""
    if value is None:
        raise DataError(f"{where}: empty")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
        raise DataError(f"{where}: not a Python-literal list ({type(e).__name__}: {e})") from None
    if isinstance(parsed, str):
        return parsed
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(t, str) for t in parsed):
        raise DataError(f"{where}: expected a list of strings, got {type(parsed).__name__}")
    return "\n\n".join(parsed)


def _read_csv(path: Path) -> pa.Table:
    if not path.exists():
        raise FileNotFoundError(f"replay table not found: {path}")
    with path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    # Text columns stay text even when every cell looks like a number (a reply "7").
    text = {c: pa.string() for c in header if "response" in c or c in ("prompt", "sample_id", "eval_name")}
    try:
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                              convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                                   column_types=text))
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not a readable CSV: {e}") from None


def _float_or_none(v: Any, where: str) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return float(v.strip().lower() == "true")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected a number or True/False, got {v!r}") from None


def load_routerbench(path: str | Path) -> pa.Table:
    """A RouterBench wide CSV -> the long table (LONG_SCHEMA). Errors name file, row and column."""
    path = Path(path)
    tab = _read_csv(path)
    cols = set(tab.column_names)
    for need in ("sample_id", "prompt", "eval_name"):
        if need not in cols:
            raise DataError(f"{path}: missing column {need!r} (not a RouterBench table?)")
    models = [c for c in tab.column_names if "|" not in c and c not in _ROUTERBENCH_META]
    if not models:
        raise DataError(f"{path}: no model columns")
    for m in models:
        for suffix in ("|model_response", "|total_cost"):
            if m + suffix not in cols:
                raise DataError(f"{path}: model {m!r} has no column {m + suffix!r}")
    out: dict[str, list] = {f.name: [] for f in LONG_SCHEMA}
    rows = tab.to_pylist()
    for i, r in enumerate(rows):
        where = f"{path}: row {i}"
        prompt = _literal_text(r["prompt"], f"{where}: column 'prompt'")
        for m in models:
            correct = _float_or_none(r[m], f"{where}: column {m!r}")
            cost = _float_or_none(r[m + "|total_cost"], f"{where}: column {m + '|total_cost'!r}")
            raw = r[m + "|model_response"]
            response = None if raw is None else _literal_text(raw, f"{where}: column {m + '|model_response'!r}")
            out["sample_id"].append(str(r["sample_id"]))
            out["eval_name"].append(str(r["eval_name"]))
            out["prompt"].append(prompt)
            out["model"].append(m)
            out["response"].append(response)
            out["correct"].append(correct)
            out["cost"].append(cost)
    return _long_table(out)


def load_routellm(path: str | Path) -> pa.Table:
    """RouteLLM's GSM8K responses CSV -> the long table; cost is null (priced from descriptors)."""
    path = Path(path)
    tab = _read_csv(path)
    if "prompt" not in tab.column_names:
        raise DataError(f"{path}: missing column 'prompt' (not a RouteLLM table?)")
    models = [c[: -len("_response")] for c in tab.column_names if c.endswith("_response")]
    for m in models:
        if m not in tab.column_names:
            raise DataError(f"{path}: column {m + '_response'!r} has no correctness column {m!r}")
    if not models:
        raise DataError(f"{path}: no '<model>_response' columns")
    out: dict[str, list] = {f.name: [] for f in LONG_SCHEMA}
    for i, r in enumerate(tab.to_pylist()):
        where = f"{path}: row {i}"
        if not isinstance(r["prompt"], str) or not r["prompt"].strip():
            raise DataError(f"{where}: column 'prompt' is empty")
        for m in models:
            out["sample_id"].append(f"{path.stem}.{i}")
            out["eval_name"].append(path.stem.replace("_responses", ""))
            out["prompt"].append(r["prompt"])
            out["model"].append(m)
            out["response"].append(r[m + "_response"])
            out["correct"].append(_float_or_none(r[m], f"{where}: column {m!r}"))
            out["cost"].append(None)
    return _long_table(out)


def _long_table(columns: dict[str, list]) -> pa.Table:
    """The long table of `columns` (LONG_SCHEMA names), optional columns left empty as nulls."""
    n = len(columns["sample_id"])
    return pa.table({f.name: columns[f.name] if columns.get(f.name) or f.name not in OPTIONAL_COLUMNS
                     else [None] * n for f in LONG_SCHEMA}, schema=LONG_SCHEMA)


def load_long(path: str | Path) -> pa.Table:
    """Any replay table: a long Parquet file, a RouterBench CSV or a RouteLLM CSV (by header)."""
    path = Path(path)
    if path.suffix == ".parquet":
        if not path.exists():
            raise FileNotFoundError(f"replay table not found: {path}")
        tab = pq.read_table(path)
        missing = set(REQUIRED_COLUMNS) - set(tab.column_names)
        if missing:
            raise DataError(f"{path}: missing columns {sorted(missing)} of the long replay schema")
        for c in OPTIONAL_COLUMNS:
            if c not in tab.column_names:
                tab = tab.append_column(c, pa.nulls(len(tab), pa.int64()))
        try:
            return tab.select(LONG_SCHEMA.names).cast(LONG_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise DataError(f"{path}: a column does not fit the long replay schema ({e})") from None
    if path.suffix != ".csv":
        raise DataError(f"{path}: unsupported replay table {path.suffix!r} (want .csv or .parquet)")
    if not path.exists():
        raise FileNotFoundError(f"replay table not found: {path}")
    with path.open(encoding="utf-8") as f:
        header = f.readline()
    if "|model_response" in header:
        return load_routerbench(path)
    if "_response" in header:
        return load_routellm(path)
    raise DataError(f"{path}: neither a RouterBench nor a RouteLLM table (no response columns)")


def is_replay_file(path: str | Path) -> bool:
    """True for tables this module reads (CSV with response columns or long Parquet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.suffix == ".csv":
        with path.open(encoding="utf-8") as f:
            return "_response" in f.readline()
    if path.suffix == ".parquet":
        return set(REQUIRED_COLUMNS) <= set(pq.read_schema(path).names)
    return False


@dataclass(frozen=True)
class Answer:
    response: str | None
    correct: float | None  # the graded score in [0, 1] (RouterBench: a 0/1 label)
    cost: float | None  # recorded USD; None when the source has no cost
    prompt_tokens: int | None = None  # recorded token counts of the call; None: estimated
    completion_tokens: int | None = None


@dataclass
class ReplaySample:
    """One question with every model's recorded answer (keys: the table's model ids)."""

    sample_id: str
    eval_name: str
    prompt: str
    answers: dict[str, Answer] = field(default_factory=dict)

    def label(self, model_id: str) -> float:
        a = self.answers.get(model_id)
        return 0.0 if a is None or a.correct is None else a.correct


class ReplayTable:
    """Questions indexed by `prompt_key`; answers by model id. Built from long tables."""

    def __init__(self, tables: Iterable[pa.Table]):
        self.samples: list[ReplaySample] = []
        self._by_key: dict[str, ReplaySample] = {}
        self.models: list[str] = []
        for tab in tables:
            for r in tab.to_pylist():
                key = prompt_key(r["prompt"])
                s = self._by_key.get(key)
                if s is None:
                    s = self._by_key[key] = ReplaySample(r["sample_id"], r["eval_name"], r["prompt"])
                    self.samples.append(s)
                s.answers[r["model"]] = Answer(r["response"], r["correct"], r["cost"],
                                               r.get("prompt_tokens"), r.get("completion_tokens"))
                if r["model"] not in self.models:
                    self.models.append(r["model"])

    @classmethod
    def from_files(cls, paths: Sequence[str | Path]) -> "ReplayTable":
        return cls(load_long(p) for p in paths)

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]], where: str = "recorded rows") -> "ReplayTable":
        """A table from long-table rows in memory (dicts with the LONG_SCHEMA keys; `cost`,
        `response` and the token counts may be missing or None), e.g. a world's own data set.
        A row that does not fit is a DataError naming the row and the field."""
        cols: dict[str, list] = {f.name: [] for f in LONG_SCHEMA}
        for i, r in enumerate(rows):
            at = f"{where}: row {i}"
            if not isinstance(r, dict):
                raise DataError(f"{at}: expected a dict of the long table's columns, got {type(r).__name__}")
            unknown = sorted(set(r) - set(LONG_SCHEMA.names))
            if unknown:
                raise DataError(f"{at}: unknown fields {unknown}; the long table has {LONG_SCHEMA.names}")
            for k in ("sample_id", "eval_name", "prompt", "model"):
                v = r.get(k)
                if v is None or not str(v).strip():
                    raise DataError(f"{at}: field {k!r} is empty")
                cols[k].append(str(v))
            resp = r.get("response")
            if resp is not None and not isinstance(resp, str):
                raise DataError(f"{at}: field 'response' must be text or None, got {type(resp).__name__}")
            cols["response"].append(resp)
            score = _float_or_none(r.get("correct"), f"{at}: field 'correct'")
            if score is not None and not 0.0 <= score <= 1.0:
                raise DataError(f"{at}: field 'correct' is a graded score in [0, 1], got {score}")
            cols["correct"].append(score)
            cost = _float_or_none(r.get("cost"), f"{at}: field 'cost'")
            if cost is not None and not 0.0 <= cost < float("inf"):
                raise DataError(f"{at}: field 'cost' must be a non-negative USD amount, got {cost}")
            cols["cost"].append(cost)
            for k in OPTIONAL_COLUMNS:
                v = r.get(k)
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    raise DataError(f"{at}: field {k!r} must be a non-negative integer or None, got {v!r}")
                cols[k].append(v)
        table = cls([pa.table(cols, schema=LONG_SCHEMA)])
        if not table.samples:
            raise DataError(f"{where}: no rows")
        return table

    def lookup(self, question: str) -> ReplaySample | None:
        return self._by_key.get(prompt_key(question))

    def __len__(self) -> int:
        return len(self.samples)


def model_ids(pool: PoolSpec, table_models: Sequence[str]) -> dict[str, str]:
    """Display name -> the table's model id, for pool models the table knows.

    A descriptor names its column with `backend.replay_column`, else by its name or an alias."""
    known = {m: m for m in table_models}
    folded = {m.casefold(): m for m in table_models}
    out: dict[str, str] = {}
    for d in pool.models:
        cands = [d.backend.replay_column] if d.backend.replay_column else [d.name, *d.aliases]
        for c in cands:
            if c is None:
                continue
            hit = known.get(c) or folded.get(c.strip().casefold())
            if hit:
                out[d.name] = hit
                break
    return out


def split_samples(samples: Sequence[ReplaySample], split: str, val_fraction: float = 0.2,
                  seed: int = 0) -> list[ReplaySample]:
    """Deterministic train/validation split by a hash of sample_id (stable across runs, machines
    and file orderings). `split` is "train", "val" or "all"."""
    if split == "all":
        return list(samples)
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; want train, val or all")

    def in_val(s: ReplaySample) -> bool:
        h = hashlib.sha256(f"{seed}:{s.eval_name}:{s.sample_id}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < val_fraction

    return [s for s in samples if in_val(s) == (split == "val")]


# -- the outcome rule --------------------------------------------------------------------------
_PUNCT = set(string.punctuation)
_ADOPT_MIN_F1 = 0.5  # a reproduced reply must share at least half its tokens with the answer


def adopted_call(answer: str | None, replies: Sequence[tuple[str, str]], pool: PoolSpec | None = None
                 ) -> int | None:
    """Index of the called model's reply that `answer` adopts, or None.

    `replies` are (model display name, reply text) in call order. In order of precedence:
    1. the answer names a called model (display name or alias; the last such call wins);
    2. the answer equals a reply, verbatim or normalised (last call wins);
    3. one contains the other, as whole tokens (last call wins);
    4. the reply with the best token F1 against the answer, if at least 0.5.
    """
    if answer is None or not replies:
        return None
    a = answer.strip()
    if pool is not None:
        m = pool.resolve(a)
        if m is not None:
            for i in range(len(replies) - 1, -1, -1):
                if replies[i][0] == m.name:
                    return i
    else:
        for i in range(len(replies) - 1, -1, -1):
            if a.casefold() == replies[i][0].casefold():
                return i
    for i in range(len(replies) - 1, -1, -1):
        if replies[i][1].strip() == a:
            return i
    na = _norm(a)
    if na:
        norm_replies = [_norm(t) for _, t in replies]
        for i in range(len(replies) - 1, -1, -1):
            if norm_replies[i] == na:
                return i
        for i in range(len(replies) - 1, -1, -1):
            nr = norm_replies[i]
            if nr and (_contains(nr, na) or _contains(na, nr)):
                return i
    best, best_i = 0.0, None
    for i, (_, text) in enumerate(replies):
        f = _token_f1(a, text)
        if f >= best and f > 0:
            best, best_i = f, i
    return best_i if best >= _ADOPT_MIN_F1 else None


def _norm(s: str) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed. Unlike SQuAD normalisation it
    keeps articles: multiple-choice answers are often the letter 'A'."""
    s = "".join(" " if ch in _PUNCT else ch for ch in s.lower())
    return " ".join(s.split())


def _token_f1(a: str, b: str) -> float:
    ta, tb = _norm(a).split(), _norm(b).split()
    same = sum((Counter(ta) & Counter(tb)).values())
    if same == 0:
        return 0.0
    p, r = same / len(ta), same / len(tb)
    return 2 * p * r / (p + r)


def _contains(hay: str, needle: str) -> bool:
    """Whole-token containment: 'b' is not in 'abc', but is in 'answer b'."""
    return f" {needle} " in f" {hay} "


def adopted_outcome(answer: str | None, replies: Sequence[tuple[str, str]], labels: Sequence[float],
                    pool: PoolSpec | None = None) -> tuple[float, int | None]:
    """(outcome, adopted index): the correctness label of the adopted reply, 0 when none is."""
    i = adopted_call(answer, replies, pool)
    return (0.0 if i is None else float(labels[i])), i


def replay_outcome(answer: str | None, calls: Sequence[Any], sample: ReplaySample, pool: PoolSpec,
                   table_models: Sequence[str]) -> tuple[float, str | None]:
    """(outcome, adopted model) of one episode in the replay world: the label of the successful
    call (`CallResult`s, in order) whose reply the answer adopts. Shared by evaluation and by
    RL training on replay data (reward outcome)."""
    columns = model_ids(pool, table_models)
    ok = [c for c in calls if c.ok]
    replies = [(c.model, c.text) for c in ok]
    labels = [sample.label(columns[c.model]) if c.model in columns else 0.0 for c in ok]
    outcome, idx = adopted_outcome(answer, replies, labels, pool)
    return outcome, None if idx is None else replies[idx][0]


def replay_call(call: CallFn, questions: dict[str, str]) -> CallFn:
    """The call function of the replay world: recorded answers exist only for the sample's own
    question, so a routed call answers that question (looked up by episode id) whatever
    sub-question the router wrote. Calls without a known episode id pass through unchanged."""
    async def wrapped(model: str, query: str, episode_id: str | None = None) -> CallResult:
        if episode_id in questions:
            query = questions[episode_id]
        return await call(model, query, episode_id=episode_id or "")

    return wrapped
