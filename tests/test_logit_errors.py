"""A NaN or +inf logit is named by the losses' checks -- the value and its row and class -- instead of the log p_y it
makes (a +inf logit used to be reported as "got -inf"), and the losses that had no check (label smoothing, Brier,
dual focal, MMCE's CE part) no longer return NaN for it; a -inf logit (a class of probability 0) stays allowed
where the loss is finite, with the value of F.cross_entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

from focal_calibration import BEYOND_PAPER_LOSS_SPECS, PAPER_LOSS_SPECS, build_loss, focal_loss_classes_last
from focal_calibration.losses.fused_smoothed import focal_label_smoothed_loss_classes_last
from focal_calibration.validation import check_finite_logits

INF, NAN = math.inf, math.nan


def logits_with(value, rows=4, classes=5, at=(1, 2)):
    logits = torch.randn(rows, classes, generator=torch.Generator().manual_seed(0))
    logits[at] = value
    return logits


SMALL, FUSED = (4, 5), (64, 300)  # the small-batch path and the fused path of focal_loss_classes_last


@pytest.mark.parametrize("value,named", [(INF, "inf"), (NAN, "nan"), (-INF, "-inf")])
@pytest.mark.parametrize("shape", [SMALL, FUSED])
@pytest.mark.parametrize("keep_softmax", [True, False])
def test_focal_loss_names_the_bad_logit(value, named, shape, keep_softmax):
    target = torch.arange(shape[0]) % shape[1]
    target[1] = 2  # the bad logit is row 1's target (for -inf: p_y = 0, an infinite loss)
    logits = logits_with(value, *shape)
    with pytest.raises(ValueError, match=rf"^logits must be finite, got {named} at row 1, class 2$"):
        focal_loss_classes_last(logits, target, 2.0, keep_softmax=keep_softmax)


@pytest.mark.parametrize("shape", [SMALL, FUSED])
def test_a_positive_inf_off_the_target_is_named_not_reported_as_minus_inf(shape):
    target = torch.zeros(shape[0], dtype=torch.long)  # row 1's target is class 0; the +inf sits at class 2
    with pytest.raises(ValueError, match=r"^logits must be finite, got inf at row 1, class 2$"):
        focal_loss_classes_last(logits_with(INF, *shape), target, 2.0)
    target[3] = -100  # an ignored row's bad logit is named too
    with pytest.raises(ValueError, match=r"^logits must be finite, got nan at row 3, class 0$"):
        focal_loss_classes_last(logits_with(NAN, *shape, at=(3, 0)), target, 2.0)


@pytest.mark.parametrize("shape", [SMALL, FUSED])
def test_a_minus_inf_off_the_target_is_a_class_of_probability_zero(shape):
    logits = logits_with(-INF, *shape)
    target = torch.zeros(shape[0], dtype=torch.long)
    torch.testing.assert_close(focal_loss_classes_last(logits, target, 0.0, reduction="none"),
                               F.cross_entropy(logits, target, reduction="none"))


def test_the_label_smoothed_loss_names_the_bad_logit():
    with pytest.raises(ValueError, match=r"^logits must be finite, got inf at row 1, class 2$"):
        focal_label_smoothed_loss_classes_last(logits_with(INF), torch.tensor([0, 1, 2, 3]), 2.0, 0.1)


@pytest.mark.parametrize("spec", [s for s in PAPER_LOSS_SPECS + BEYOND_PAPER_LOSS_SPECS if not s.startswith("flsc")]
                         + ["ls-torch-0.1"])
@pytest.mark.parametrize("value,named", [(INF, "inf"), (NAN, "nan")])
def test_every_loss_names_the_bad_logit(spec, value, named):
    """Label smoothing, Brier, dual focal returned NaN here; the others said "got -inf" or "got nan" for log p_y."""
    with pytest.raises(ValueError, match=rf"^logits must be finite, got {named} at row 1, class 2$"):
        build_loss(spec)(logits_with(value), torch.tensor([0, 1, 3, 3]))


def test_adafocal_validation_names_the_bad_logit():
    with pytest.raises(ValueError, match=r"^val_logits must be finite, got inf at row 1, class 2$"):
        build_loss("adafocal").observe_validation(logits_with(INF), torch.tensor([0, 1, 3, 3]))


def test_check_finite_logits_edge_cases():
    logits = torch.tensor([[0.0, 1.0], [-3e38, 3e38], [1.0, -INF]])
    check_finite_logits(logits)  # a -inf and finite extremes pass
    log_p_y = logits[:, 0] - torch.logsumexp(logits, dim=-1)  # row 1: -3e38 - 3e38 = -inf in float32
    with pytest.raises(ValueError, match=r"^logits at row 1 range from -3e\+38 to 3e\+38: too far apart for a finite "
                                         r"log-probability \(-inf\)$"):
        check_finite_logits(logits, log_p_y)
    both = torch.tensor([[0.0, 1.0], [-INF, INF]])  # their sum is NaN; the +inf is named, not the -inf
    with pytest.raises(ValueError, match=r"got inf at row 1, class 1$"):
        check_finite_logits(both)


@pytest.mark.parametrize("value,named", [(INF, "inf"), (NAN, "nan")])
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (2, 300, 3, 4)])  # the small-batch path and the fused path
def test_the_contract_focal_loss_names_the_bad_logit_of_segmentation_logits(value, named, shape):
    """nn.CrossEntropyLoss's layout [N, C, H, W]: the bad logit is named by its row (position n·H·W + h·W + w)
    and class."""
    from focal_calibration import focal_loss
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    logits[1, 2, 0, 3] = value
    target = torch.zeros(shape[0], *shape[2:], dtype=torch.long)
    with pytest.raises(ValueError, match=rf"^logits must be finite, got {named} at row {12 + 3}, class 2$"):
        focal_loss(logits, target, gamma=2.0)
