"""Dataset loading (FlashRAG + verl, real files when present) and `router-r1 score` end to end."""
import json
import subprocess
import sys

import pytest

from router_r1.worlds.qa import DataError, load_qa

ROUTER_R1 = [sys.executable, "-m", "pipelines.cli"]


def test_flashrag_and_verl_formats(tmp_path):
    fr = tmp_path / "nq_test.jsonl"
    fr.write_text(json.dumps({"id": "q1", "question": " Who? ", "golden_answers": ["A", "B"]}) + "\n")
    (ex,) = load_qa(fr)
    assert (ex.id, ex.question, ex.golden_answers, ex.source) == ("q1", "Who?", ["A", "B"], "nq")
    vj = tmp_path / "hotpot_verl.jsonl"
    rows = [{"data_source": "hp", "prompt": [{"content": "Q1?", "role": "user"}],
             "reward_model": {"ground_truth": "yes", "style": "rule"}},
            {"data_source": "hp", "prompt": [{"content": "Q2?", "role": "user"}],
             "reward_model": {"ground_truth": {"target": ["x", "y"]}}}]
    vj.write_text("\n".join(json.dumps(r) for r in rows))
    a, b = load_qa(vj)
    assert a.golden_answers == ["yes"] and b.golden_answers == ["x", "y"] and a.source == "hp"


@pytest.mark.parametrize("row, field", [
    ({"question": "q", "golden_answers": []}, "golden_answers"),
    ({"question": "", "golden_answers": ["a"]}, "question"),
    ({"prompt": [], "reward_model": {"ground_truth": "a"}}, "prompt[0].content"),
    ({"prompt": [{"content": "q"}], "reward_model": {}}, "reward_model.ground_truth"),
    ({"text": "q"}, "expected FlashRAG fields"),
])
def test_schema_errors_name_file_row_field(tmp_path, row, field):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"question": "ok", "golden_answers": ["a"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_qa(f)
    assert "bad.jsonl" in str(e.value) and "row 1" in str(e.value) and field in str(e.value)


@pytest.mark.data
@pytest.mark.parametrize("name", ["nq_test.jsonl", "triviaqa_test.jsonl", "popqa_test.jsonl",
                                  "bamboogle_test.jsonl", "hotpotqa_test_verl.jsonl",
                                  "musique_test_verl.jsonl", "2wikimultihopqa_test_verl.parquet"])
def test_real_qa_sets_load(shared_data, name):
    rows = load_qa(shared_data / "qa" / name, limit=50)
    assert len(rows) == 50
    assert all(r.question and r.golden_answers and all(isinstance(g, str) for g in r.golden_answers)
               for r in rows)


def run_score(path, *args):
    return subprocess.run([*ROUTER_R1, "score", "--input", str(path), *args],
                          capture_output=True, text=True, timeout=120)


def test_score_cli_examples_and_bad_lines(tmp_path):
    good = {"completion": "<think>a</think><search>LLaMA-3.1-70B-Instruct: who?</search>"
                          "<information>Orwell</information><think>b</think><answer>George Orwell</answer>",
            "golden_answers": ["george orwell"],
            "calls": [{"model": "meta/llama-3.1-70b-instruct", "prompt_tokens": 1000, "completion_tokens": 500}]}
    lines = [json.dumps(good), "{not json", json.dumps({**good, "calls": [{"model": "GPT-9",
             "prompt_tokens": 1, "completion_tokens": 1}]}), "",
             json.dumps({**good, "completion": "<answer>George Orwell</answer>"})]
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(lines) + "\n")
    r = run_score(f, "--alpha", "0.5", "--normalizer", "reference")
    assert r.returncode == 1, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3, 5]
    assert out[0]["em"] == 1.0 and out[0]["format_ok"] and out[0]["answer"] == "George Orwell"
    assert out[0]["cost_usd"] == pytest.approx(1500 * 0.88 / 1e6)
    assert "line 2" in out[1]["error"] and out[1]["field"] == "<line>"
    assert out[2]["field"] == "calls[0].model" and "GPT-9" in out[2]["error"]
    assert out[3]["reward"] == -1.0 and "no_leading_think" in out[3]["format_errors"]
    assert "line 2" in r.stderr and "line 3" in r.stderr


def test_score_cli_all_good_exits_zero(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"completion": "<think>k</think><answer>x</answer>",
                             "golden_answers": ["x"], "calls": []}) + "\n")
    r = run_score(f, "--metric", "f1")
    assert r.returncode == 0 and json.loads(r.stdout)["reward"] == 1.0
    assert run_score(tmp_path / "missing.jsonl").returncode != 0


@pytest.mark.data
def test_score_cli_on_real_qa_lines(shared_data, tmp_path):
    """Completions built from real NQ and HotpotQA rows: the gold answer scores EM 1, a wrong one 0."""
    rows = load_qa(shared_data / "qa" / "nq_test.jsonl", limit=20) + \
        load_qa(shared_data / "qa" / "hotpotqa_test_verl.jsonl", limit=20)
    lines = []
    for i, r in enumerate(rows):
        ans = r.golden_answers[0] if i % 2 == 0 else "certainly not this"
        lines.append(json.dumps({"completion": f"<think>{r.question}</think><answer>{ans}</answer>",
                                 "golden_answers": r.golden_answers, "calls": []}))
    f = tmp_path / "real.jsonl"
    f.write_text("\n".join(lines))
    res = run_score(f)
    assert res.returncode == 0, res.stderr
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert [o["em"] for o in out] == [1.0 if i % 2 == 0 else 0.0 for i in range(len(rows))]
