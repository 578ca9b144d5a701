"""Evidence helpers: seed summaries vs hand computation, verdicts on hand-made intervals, the regime criterion on a
hand-made log."""

import math

import pytest

from focal_calibration.experiments.evidence import claim_result, regime_check, seed_summary, verdict

# Student-t quantile with 2 degrees of freedom in closed form: t_p = (2p - 1) / sqrt(2 p (1 - p))
T_975_DF2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)


def test_seed_summary_matches_hand_computation():
    s = seed_summary([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3
    half = T_975_DF2 / math.sqrt(3)
    assert s["ci"] == pytest.approx((2.0 - half, 2.0 + half), abs=1e-12)


def test_seed_summary_single_value_has_no_interval():
    assert seed_summary([0.3]) == {"mean": 0.3, "std": 0.0, "n": 1, "ci": None}


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [None, 1.0]])
def test_seed_summary_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="values must"):
        seed_summary(bad)


@pytest.mark.parametrize("intervals, region, expected", [
    ([(0.1, 0.3)], {"above": 0.0}, "holds"),
    ([(-0.2, -0.1)], {"above": 0.0}, "does not hold"),
    ([(-0.1, 0.2)], {"above": 0.0}, "inconclusive"),
    ([(0.0, 0.2)], {"above": 0.0}, "inconclusive"),  # touching the bound is not strictly above
    ([(-0.5, -0.1), (-0.3, -0.05)], {"below": 0.0}, "holds"),
    ([(-0.5, -0.1), (-0.3, 0.05)], {"below": 0.0}, "inconclusive"),  # every interval must agree
    ([(0.1, 0.2), (0.3, 0.4)], {"below": 0.0}, "does not hold"),
    ([(0.95, 1.05)], {"inside": (0.9, 1.1)}, "holds"),
    ([(0.4, 0.6)], {"inside": (0.9, 1.1)}, "does not hold"),
    ([(1.2, 1.4)], {"inside": (0.9, 1.1)}, "does not hold"),
    ([(0.8, 1.0)], {"inside": (0.9, 1.1)}, "inconclusive"),
    ([(1.4, 1.4)], {"above": 1.0}, "holds"),  # a degenerate interval (every seed equal)
    ([None], {"above": 1.0}, "inconclusive"),  # one seed: no interval
])
def test_verdict_on_hand_made_intervals(intervals, region, expected):
    assert verdict(intervals, **region) == expected


def test_verdict_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of"):
        verdict([(0, 1)])
    with pytest.raises(ValueError, match="exactly one of"):
        verdict([(0, 1)], above=0, below=1)
    with pytest.raises(ValueError, match="lo <= hi"):
        verdict([(2, 1)], above=0)
    with pytest.raises(ValueError, match="at least one interval"):
        verdict([], above=0)


def test_claim_result_combines_seed_and_test_set_intervals():
    # per-seed differences clearly below 0 and bootstrap replicates below 0: holds
    result = claim_result([-0.03, -0.025, -0.035], bootstrap=[-0.04, -0.03, -0.02, -0.035] * 50, below=0.0)
    assert result["verdict"] == "holds"
    assert result["interval_test_set"][1] < 0
    # the seeds agree but the test-set interval straddles 0: inconclusive
    result = claim_result([-0.03, -0.025, -0.035], bootstrap=[-0.04, 0.01, -0.02, 0.02] * 50, below=0.0)
    assert result["verdict"] == "inconclusive"


def test_regime_check_on_a_hand_made_log():
    log = [{"train_error": 0.10, "test_nll_incorrect": 1.50},
           {"train_error": 0.02, "test_nll_incorrect": 1.20},  # minimum
           {"train_error": 0.004, "test_nll_incorrect": None},  # no test evaluation this epoch
           {"train_error": 0.001, "test_nll_incorrect": 1.80}]
    r = regime_check(log)
    assert r["near_zero_train_error"] and r["nll_misclassified_rising"] and r["meets"]
    assert r["nll_misclassified_min"] == 1.20 and r["nll_misclassified_final"] == 1.80
    assert r["nll_misclassified_rise"] == pytest.approx(0.5)
    # a separately measured final training error overrides the running one
    assert not regime_check(log, train_error_final=0.02)["meets"]
    # NLL ending at its minimum: no over-fitting signature
    flat = [dict(r, test_nll_incorrect=v) for r, v in zip(log, (1.5, 1.4, None, 1.3))]
    assert not regime_check(flat)["nll_misclassified_rising"]
    # a small rise below the 5% threshold does not count
    small = [dict(r, test_nll_incorrect=v) for r, v in zip(log, (1.5, 1.00, None, 1.04))]
    assert not regime_check(small)["meets"]


def test_regime_check_rejects_logs_without_the_needed_keys():
    with pytest.raises(ValueError, match="at least one epoch"):
        regime_check([])
    with pytest.raises(ValueError, match="test_nll_incorrect"):
        regime_check([{"train_error": 0.0}])
    with pytest.raises(ValueError, match="final training error"):
        regime_check([{"test_nll_incorrect": 1.0}])
