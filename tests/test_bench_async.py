"""benchmarks/bench_async.py's calibration: the latency scale that levels rollouts with the learner."""
import pytest

from benchmarks.bench_async import level_scale


def test_level_scale_meets_the_learner_on_the_line_through_two_probes():
    """Rollouts take 1.0 s per step at scale 0 and 2.0 s at 0.5: slope 2 s per unit of scale, so a
    3.0 s learner is met at scale (3.0 - 1.0) / 2 = 1.0; from the points (0.5, 2.0) and (1.5, 4.0)
    the same line gives the same answer; a learner faster than scale-0 rollouts needs scale 0."""
    assert level_scale((0.0, 1.0), (0.5, 2.0), 3.0) == pytest.approx(1.0)
    assert level_scale((1.5, 4.0), (0.5, 2.0), 3.0) == pytest.approx(1.0)
    assert level_scale((0.0, 1.0), (0.5, 2.0), 0.5) == 0.0
    assert level_scale((0.3, 1.0), (0.3, 1.2), 3.0) == 0.3  # one point twice: no line, keep it
