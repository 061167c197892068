"""benchmarks/check_demo.py: the demo's goals (issue #26) read off a report.json, by hand."""
import json

from benchmarks.check_demo import demo_goals, main


def _report(r0, r1, c0, c1, e0, e1, held=(0.60, 0.60), oracle_frac=0.80, wall=500.0):
    metrics = lambda r, c, e: {"reward/mean": r, "cost/mean_usd": c, "outcome/em": e}
    return {
        "wall_s": wall,
        "eval": {"start": metrics(r0, c0, e0), "end": metrics(r1, c1, e1)},
        "reference": {"oracle": 0.98, "best_single": ["Big", 0.68], "random": 0.44,
                      "fraction_of_oracle": oracle_frac},
        "extra": {"held_out_entities": {"reward": list(held)}},
    }


def _met(report):
    return {name: ok for name, ok, _ in demo_goals(report)}


def test_a_reward_gain_of_005_or_half_the_cost_at_the_same_em_is_rl_doing_the_work():
    assert _met(_report(0.65, 0.70, 1e-5, 1e-5, 0.7, 0.7))["RL does the work"]  # +0.05 exactly
    assert not _met(_report(0.65, 0.69, 1e-5, 1e-5, 0.7, 0.7))["RL does the work"]
    # Half the cost, EM 0.02 lower: met; EM 0.03 lower or 0.51 of the cost: not.
    assert _met(_report(0.65, 0.66, 2e-5, 1e-5, 0.70, 0.68))["RL does the work"]
    assert not _met(_report(0.65, 0.66, 2e-5, 1e-5, 0.70, 0.67))["RL does the work"]
    assert not _met(_report(0.65, 0.66, 2e-5, 1.02e-5, 0.70, 0.70))["RL does the work"]


def test_held_out_entities_best_single_random_oracle_and_wall():
    met = _met(_report(0.65, 0.70, 1e-5, 1e-5, 0.7, 0.7, held=(0.60, 0.58)))
    assert met["held-out entities kept"] and all(met.values())
    met = _met(_report(0.60, 0.67, 1e-5, 1e-5, 0.7, 0.7, held=(0.60, 0.57), oracle_frac=0.74, wall=601))
    assert met == {"RL does the work": True, "held-out entities kept": False,
                   "above the best single model": False, "above random routing": True,
                   "of the oracle": False, "within 10 minutes": False}


def test_the_command_exits_1_on_a_miss_and_2_on_a_file_that_is_no_report(tmp_path, capsys):
    good, bad, junk = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "junk.json"
    good.write_text(json.dumps(_report(0.65, 0.75, 1e-5, 1e-5, 0.7, 0.8)))
    bad.write_text(json.dumps(_report(0.65, 0.66, 1e-5, 1e-5, 0.7, 0.7)))
    junk.write_text("{}")
    assert main([str(good)]) == 0
    assert main([str(good), str(bad)]) == 1
    assert "MISS RL does the work" in capsys.readouterr().out
    assert main([str(junk)]) == 2
    assert "not a demo report" in capsys.readouterr().err
