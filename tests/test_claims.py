"""The demo's claims: per-seed statistics, pairing by seed, the paired test-set bootstrap, post-T scaling of the
resampled logits, verdicts — on hand-made records whose answers are known."""

import math

import numpy as np
import pytest
import torch

from classification.claims import CLAIMS, claims_markdown, compute_claims, versus_ce_claims
from focal_calibration import bootstrap_samples, calibration_metrics

SIZE = 1000


def _record(tmp_path, loss, seed, logits, labels, **values):
    run_dir = tmp_path / f"{loss}-{seed}"
    run_dir.mkdir()
    torch.save({"test_logits": logits, "test_labels": labels}, run_dir / "logits.pt")
    base = {"size": SIZE, "loss": loss, "seed": seed, "run_dir": str(run_dir), "train_error": 0.0,
            "nll_misclassified_rising": True, "regime_criterion_met": True, "nll_misclassified_final": 2.0}
    return {**base, **values}


def _fake_bootstrap(seen):
    """Replicates equal to the mean |logit| (known per run), remembering what it was called with."""
    def bootstrap(labels, *, logits, n_resamples, seed):
        seen.append((float(logits.abs().mean()), n_resamples, seed))
        value = float(logits.abs().mean())
        return {"ece": np.full(n_resamples, value), "adaece": np.full(n_resamples, value),
                "error": np.zeros(n_resamples)}
    return bootstrap


def test_claims_pair_runs_by_seed_and_compute_verdicts(tmp_path):
    labels = torch.zeros(10, dtype=torch.long)
    records = []
    for seed, (ce_ece, fl_ece) in zip((1, 2, 3), ((0.10, 0.02), (0.12, 0.03), (0.11, 0.04))):
        records.append(_record(tmp_path, "ce", seed, torch.full((10, 3), 2.0 * seed), labels, ece_pre=ce_ece,
                               adaece_pre=ce_ece, ece_post=0.01, temperature=2.0, error=0.10))
        records.append(_record(tmp_path, "flsd-53", seed, torch.full((10, 3), 1.0 * seed), labels, ece_pre=fl_ece,
                               adaece_pre=fl_ece, ece_post=0.02, temperature=1.0, error=0.105,
                               nll_misclassified_final=1.0))
    records.append(_record(tmp_path, "ce", 4, torch.zeros(10, 3), labels, ece_pre=0.5, adaece_pre=0.5,
                           ece_post=0.5, temperature=2.0, error=0.5))  # unpaired seed: left out of differences
    seen = []
    result = compute_claims(records, SIZE, bootstrap=_fake_bootstrap(seen), n_resamples=50)
    claims = {c["id"]: c for c in result["claims"]}
    assert set(claims) == {"ece_pre_lower", "adaece_pre_lower", "ece_post_lower", "t_flsd_near_1", "t_ce_above_1",
                           "error_within_1", "nll_misclassified_lower"}  # no FL-3 runs: its claim is left out

    ece = claims["ece_pre_lower"]
    assert ece["seeds"] == [1, 2, 3] and ece["per_seed"] == pytest.approx([-0.08, -0.09, -0.07])
    assert ece["mean"] == pytest.approx(-0.08) and ece["std"] == pytest.approx(0.01)
    # test-set replicates: mean over seeds of (|FL logits| - |CE logits|) = mean(s - 2s) = -2
    assert ece["interval_test_set"] == pytest.approx((-2.0, -2.0))
    assert ece["verdict"] == "holds"
    # post-T claim: the resampled logits are divided by each run's T (CE: 2s / 2 = s, FL: s / 1): difference 0
    assert claims["ece_post_lower"]["interval_test_set"] == pytest.approx((0.0, 0.0))
    assert claims["ece_post_lower"]["verdict"] == "does not hold"  # +0.01 in every seed, both intervals >= 0
    assert claims["t_ce_above_1"]["seeds"] == [1, 2, 3, 4] and claims["t_ce_above_1"]["verdict"] == "holds"
    assert claims["t_flsd_near_1"]["verdict"] == "holds" and claims["t_flsd_near_1"]["interval_test_set"] is None
    assert claims["error_within_1"]["verdict"] == "holds"
    assert claims["nll_misclassified_lower"]["mean"] == pytest.approx(-1.0)
    assert {n for _, n, _ in seen} == {50} and {s for *_, s in seen} == {0}  # one bootstrap seed for every run
    assert result["regime"]["criterion_held"] and result["regime"]["ce_train_error_per_seed"] == [0.0] * 4

    text = claims_markdown(result)
    assert text.count("| **holds** |") == 6 and "| **does not hold** |" in text

    # the same four comparisons for any loss (here FLSD-53 again): the numbers of the paper's claims
    generic = {c["id"]: c for c in compute_claims(records, SIZE, bootstrap=None,
                                                  claims=versus_ce_claims("flsd-53"))["claims"]}
    assert list(generic) == ["flsd-53_ece_pre_lower", "flsd-53_ece_post_lower", "flsd-53_t_near_1",
                             "flsd-53_error_within_1"]
    assert generic["flsd-53_ece_pre_lower"]["per_seed"] == ece["per_seed"]
    assert generic["flsd-53_ece_pre_lower"]["interval_test_set"] is None  # no bootstrap given


def test_claims_with_the_core_bootstrap_match_the_point_estimates(tmp_path):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(600, 4, generator=generator, dtype=torch.float64)
    labels = torch.distributions.Categorical(logits=scores).sample()
    records = []
    for seed in (1, 2, 3):
        noise = 0.1 * torch.randn(600, 4, generator=generator, dtype=torch.float64)
        for loss, scale in (("ce", 3.0), ("flsd-53", 1.0)):
            logits = scale * scores + noise
            m = calibration_metrics(labels, logits=logits)
            records.append(_record(tmp_path, loss, seed, logits, labels, ece_pre=m["ece"], adaece_pre=m["adaece"],
                                   ece_post=m["ece"], temperature=1.0, error=m["error"]))
    result = compute_claims(records, SIZE, bootstrap=bootstrap_samples, n_resamples=200)
    ece = next(c for c in result["claims"] if c["id"] == "ece_pre_lower")
    low, high = ece["interval_test_set"]
    assert low < ece["mean"] < high < 0  # CE at 3x the true logits is far more over-confident
    assert ece["verdict"] == "holds"


def test_claims_need_cross_entropy_runs(tmp_path):
    record = _record(tmp_path, "flsd-53", 1, torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), temperature=1.0)
    with pytest.raises(ValueError, match="no cross-entropy runs at size 1000"):
        compute_claims([record], SIZE, bootstrap=None)


def test_every_claim_names_a_region_and_a_statistic():
    for claim_id, text, loss, (kind, key), region, metric, scaled in CLAIMS:
        assert kind in ("diff", "value") and len(region) == 1 and text and loss
        assert math.isfinite(next(iter(region.values()))[0] if "inside" in region else next(iter(region.values())))


def test_verdicts_by_size_put_each_claim_against_the_regime(tmp_path):
    # size 1000: CE in the regime, FLSD-53 clearly better calibrated; size 2000: CE not in the regime, FLSD-53 worse
    from classification.claims import verdicts_by_size_markdown
    labels = torch.zeros(10, dtype=torch.long)
    records = []
    for size, delta, in_regime in ((1000, -0.05, True), (2000, +0.05, False)):
        for seed, jitter in zip((1, 2, 3), (0.0, 0.002, -0.002)):
            common = dict(size=size, ece_post=0.01, error=0.1, adaece_pre=0.1)
            (tmp_path / f"{size}").mkdir(exist_ok=True)
            records.append(_record(tmp_path / f"{size}", "ce", seed, torch.zeros(10, 3), labels, ece_pre=0.1,
                                   temperature=2.0, regime_criterion_met=in_regime, **common))
            records.append(_record(tmp_path / f"{size}", "flsd-53", seed, torch.zeros(10, 3), labels,
                                   ece_pre=0.1 + delta + jitter, temperature=1.0, **common))
    blocks = [compute_claims(records, size, bootstrap=None) for size in (1000, 2000)]
    lines = verdicts_by_size_markdown(blocks).splitlines()
    assert lines[2] == "| claim | statistic | 1,000 images | 2,000 images |"
    assert lines[4] == "| CE in the §3 regime (every seed) | | **yes** (3/3 seeds) | no (0/3 seeds) |"
    row = next(line for line in lines if line.startswith("| FLSD-53 has a lower test ECE than CE before"))
    assert row.endswith("| Δ ECE, points | -5.00 holds | +5.00 does not hold |")
