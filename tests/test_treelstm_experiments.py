"""treelstm/experiments.py: the epoch views of a logged run (hand-made logs), the regime at the reported epoch, and
focal loss's population minimiser on a binary label against its first-order condition and cross-entropy."""

import numpy as np
import pytest

from treelstm.experiments import epoch_view, focal_optimum_temperature, regime_of


def _log(val_accuracy, train_error, nll_incorrect):
    return [{"epoch": e, "val_accuracy": a, "train_error": t, "test_nll_incorrect": n, "temperature": 1.0 + e / 10}
            for e, (a, t, n) in enumerate(zip(val_accuracy, train_error, nll_incorrect), start=1)]


LOG = _log(val_accuracy=[0.60, 0.70, 0.70, 0.65, 0.72, 0.71],
           train_error=[0.30, 0.10, 0.004, 0.003, 0.002, 0.001],
           nll_incorrect=[1.0, 0.9, 1.2, 1.5, 1.6, 1.8])


def test_epoch_views_are_what_a_shorter_or_last_epoch_run_would_report():
    assert epoch_view(LOG, epochs=3, select="best-val")["epoch"] == 2      # ties: the first epoch, as the trainer
    assert epoch_view(LOG, epochs=6, select="best-val")["epoch"] == 5
    assert epoch_view(LOG, epochs=4, select="last")["epoch"] == 4
    view = epoch_view(LOG, epochs=6, select="last")
    assert view["temperature"] == pytest.approx(1.6) and view["regime_met"]
    with pytest.raises(ValueError, match="the log has 6 epochs, fewer than the 7"):
        epoch_view(LOG, epochs=7, select="last")
    with pytest.raises(ValueError, match="select must be"):
        epoch_view(LOG, epochs=6, select="best")


def test_the_regime_is_judged_at_the_reported_epoch():
    at_2 = regime_of(LOG, 2)       # 10 % training error: not near zero
    assert not at_2["near_zero_train_error"] and not at_2["meets"]
    at_4 = regime_of(LOG, 4)       # 0.3 % and the misclassified NLL 1.5 vs its minimum 0.9
    assert at_4["meets"] and at_4["nll_misclassified_min"] == 0.9
    assert not epoch_view(LOG, epochs=3, select="best-val")["regime_met"]


def test_cross_entropy_minimiser_is_calibrated():
    for q in (0.6, 0.8, 0.95):
        p_star, temperature = focal_optimum_temperature(q, lambda p: np.zeros_like(p))
        assert p_star == pytest.approx(q, abs=2e-6) and temperature == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("gamma", [1.0, 3.0])
@pytest.mark.parametrize("q", [0.6, 0.75, 0.9])
def test_focal_minimiser_solves_the_first_order_condition(gamma, q):
    # d/dp [q FL(p) + (1 - q) FL(1 - p)] = q FL'(p) - (1 - q) FL'(1 - p), FL'(p) = γ(1-p)^(γ-1) log p - (1-p)^γ / p
    def d_focal(p):
        return gamma * (1 - p) ** (gamma - 1) * np.log(p) - (1 - p) ** gamma / p

    p_star, temperature = focal_optimum_temperature(q, lambda p: np.full_like(p, gamma))
    slope = q * d_focal(p_star) - (1 - q) * d_focal(1 - p_star)
    assert abs(slope) < 1e-4
    assert 0.5 < p_star < q and 0 < temperature < 1               # under-confident: focal loss's T* < 1


def test_bad_q_is_refused():
    with pytest.raises(ValueError, match="q must lie in"):
        focal_optimum_temperature(0.4, lambda p: np.full_like(p, 3.0))
