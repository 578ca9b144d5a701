"""``build_loss(spec)``: the one factory every trainer uses, from the spec names of the paper's tables.

The spec forms are listed in :mod:`focal_calibration.losses.modules`; γ-policy specs (``fl-``, ``flsc-``, ``flsd-``)
are parsed by :func:`focal_calibration.losses.gamma.parse_gamma_policy`.
"""

from __future__ import annotations

from focal_calibration.losses.gamma import GAMMA_POLICY_FORMS, parse_gamma_policy
from focal_calibration.losses.modules import (AdaFocalLoss, BrierLoss, CalibrationLoss, CrossEntropyLoss, DualFocalLoss,
                                              FocalLoss, InverseFocalLoss, LabelSmoothingLoss, MarginLabelSmoothingLoss,
                                              MMCELoss, PolyLoss)
from focal_calibration.validation import parse_finite_number

__all__ = ["build_loss", "PAPER_LOSS_SPECS", "BEYOND_PAPER_LOSS_SPECS"]

PAPER_LOSS_SPECS = ("ce", "ls-0.05", "brier", "mmce-2", "fl-1", "fl-2", "fl-3", "flsc-531", "flsc-532", "flsd-53",
                    "flsd-532", "flsd-prop2-0.2-0.25")
BEYOND_PAPER_LOSS_SPECS = ("adafocal", "inverse-focal-2", "dual-focal-5", "poly-1", "mbls-10-0.1")

_SPEC_FORMS = ("ce", "ls-<alpha>", "ls-torch-<alpha>", "brier", "mmce-<lambda>") + GAMMA_POLICY_FORMS + (
    "adafocal", "inverse-focal-<gamma>", "dual-focal-<gamma>", "poly-<epsilon>", "mbls-<margin>-<lambda>")
# build_loss(**options) each spec accepts: the keyword arguments of its loss class
_OPTIONS = {"adafocal": ("lam", "gamma_init", "switch_threshold", "gamma_min", "gamma_max", "n_bins"),
            "dual-focal": ("pj",), "mbls": ("normalization",)}


def _unknown(spec: str, why: str = "") -> ValueError:
    return ValueError(f"unknown loss spec {spec!r}{': ' + why if why else ''}. Valid forms: {', '.join(_SPEC_FORMS)} "
                      f"(the paper's: {', '.join(PAPER_LOSS_SPECS)})")


def _number(text: str, spec: str) -> float:
    try:
        return parse_finite_number(text)
    except ValueError as error:
        raise _unknown(spec, str(error)) from None


def _two_numbers(text: str, spec: str) -> tuple[float, float]:
    """``"10-0.1"`` -> (10, 0.1); the split is the first '-' that leaves two numbers (``"10-1e-3"`` works)."""
    for at in [i for i, char in enumerate(text) if char == "-"]:
        try:
            return parse_finite_number(text[:at]), parse_finite_number(text[at + 1:])
        except ValueError:
            continue
    raise _unknown(spec, f"{text!r} is not two numbers <margin>-<lambda>")


def _check_options(spec: str, family: str | None, options: dict) -> None:
    allowed = _OPTIONS.get(family, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepts = ", ".join(allowed) if allowed else "no options"
        raise ValueError(f"build_loss({spec!r}) got unknown option(s) {unknown}; it accepts {accepts}")


def build_loss(spec: str, *, reduction: str = "mean", ignore_index: int = -100, weight=None,
               label_smoothing: float = 0.0, epochs: int | None = None, milestones=None, thresholds=None,
               mmce_variant: str = "kumar", **options) -> CalibrationLoss:
    """Build a loss module from a spec (see the module docstring), e.g. ``build_loss("flsd-53")``.

    ``reduction``, ``ignore_index``, ``weight`` (per class) and ``label_smoothing`` (PyTorch's form) are
    ``nn.CrossEntropyLoss``'s; a loss that cannot take one of them (e.g. ``ls-0.05`` with ``label_smoothing``, which
    would smooth twice) raises naming it.

    ``epochs``: the run's number of epochs. FLSc (``flsc-531``, ``flsc-532``) follows the run: without
    ``milestones`` its γ changes after 100/350 and 250/350 of ``epochs`` (Appendix E's 100 and 250 of 350 epochs;
    ``epochs=350`` gives exactly those), and a FLSc spec with neither ``epochs`` nor ``milestones`` is refused, since
    the absolute (100, 250) silently turn FLSc-531 into FL-5 on any run shorter than 101 epochs. Explicit
    ``milestones`` (0-based epochs) that do not fit below ``epochs`` are refused too. ``thresholds``
    (probabilities) override FLSD's default (0.2,) / (0.2, 0.5); both are required for γ lists of other lengths.
    ``mmce_variant``: ``"kumar"`` or ``"official"`` (see :class:`MMCELoss`). ``**options``: the keyword arguments
    of the losses beyond the paper (``adafocal``: ``lam``, ``gamma_init``, ``switch_threshold``, ``gamma_min``,
    ``gamma_max``, ``n_bins``; ``dual-focal-<γ>``: ``pj``; ``mbls-<m>-<λ>``: ``normalization``); an option the spec
    does not take is refused.
    """
    if not isinstance(spec, str):
        raise TypeError(f"loss spec must be a string, got {spec!r}")
    name = spec.strip().lower()
    common = dict(reduction=reduction, ignore_index=ignore_index, weight=weight, label_smoothing=label_smoothing)
    family = next((f for f in _OPTIONS if name == f or name.startswith(f + "-")), None)
    _check_options(spec, family, options)
    if name == "ce":
        return CrossEntropyLoss(**common)
    if name == "brier":
        return BrierLoss(**common)
    if name == "adafocal":
        return AdaFocalLoss(**options, **common)
    if name.startswith("ls-torch-"):
        return LabelSmoothingLoss(_number(name[len("ls-torch-"):], spec), form="torch", **common)
    if name.startswith("ls-"):
        return LabelSmoothingLoss(_number(name[3:], spec), form="paper", **common)
    if name.startswith("mmce-"):
        return MMCELoss(_number(name[5:], spec), variant=mmce_variant, **common)
    if name.startswith("inverse-focal-"):
        return InverseFocalLoss(_number(name[len("inverse-focal-"):], spec), **common)
    if name.startswith("dual-focal-"):
        return DualFocalLoss(_number(name[len("dual-focal-"):], spec), **options, **common)
    if name.startswith("poly-"):
        return PolyLoss(_number(name[5:], spec), **common)
    if name.startswith("mbls-"):
        margin, lam = _two_numbers(name[5:], spec)
        return MarginLabelSmoothingLoss(margin, lam, **options, **common)
    if name.startswith(("fl-", "flsc-", "flsd-")):
        return FocalLoss(parse_gamma_policy(spec, milestones=milestones, thresholds=thresholds, epochs=epochs),
                         **common)
    raise _unknown(spec)
