"""Every loss of build_loss honours nn.CrossEntropyLoss's contract (issue 15 §1), checked in float64 against
independent references: F.cross_entropy itself (γ = 0, every combination of the contract's arguments), autograd of
the per-class formulas written out here (γ > 0, FLSD-53, the other losses), the same loss on flattened 2-D logits
(segmentation shapes), and clear refusals of what a loss has no published definition for. Also the warning of an
epoch-scheduled / validation-driven loss that no one drives (§4)."""

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from focal_calibration import (BEYOND_PAPER_LOSS_SPECS, PAPER_LOSS_SPECS, AdaFocalLoss, BrierLoss, CrossEntropyLoss,
                               DualFocalLoss, EpochScheduledGamma, FocalLoss, InverseFocalLoss, LabelSmoothingLoss,
                               MarginLabelSmoothingLoss, MMCELoss, PolyLoss, SampleDependentGamma, build_loss,
                               constants, focal_loss, mmce_weighted)
from focal_calibration.losses import functional

C = 5
SHAPES = {"2-D": (12, C), "4-D": (2, C, 3, 4)}  # logits; classes on dim 1
TIGHT = dict(rtol=1e-10, atol=1e-12)
# {2-D, 4-D} x {class indices, with ignore_index hit or not; probabilities} x {weight or not} x {label smoothing or
# not} x {mean, sum, none}
GRID = list(itertools.product(SHAPES, ["indices", "indices+ignored", "probabilities"], [False, True], [0.0, 0.2],
                              ["mean", "sum", "none"]))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread (a second one only waits, and on a busy machine it waits for milliseconds a
    call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_paths(monkeypatch, target_kind, weighted, smoothing):
    """Class indices run through both PyTorch paths where there are two: the small-batch path and the fused kernel
    (no weight), F.cross_entropy and the soft-target kernel (label smoothing at γ = 0); the other combinations take
    one path."""
    if target_kind == "probabilities" or (weighted and not smoothing):
        yield "one path"
        return
    for name, elements in (("small-batch", 2 ** 40), ("fused", 0)):
        monkeypatch.setattr(constants, "SMALL_BATCH_ELEMENTS", elements)
        yield name


def make_case(shape_name, target_kind, seed=0):
    """float64 logits (classes on dim 1) and a target of the kind asked for."""
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPES[shape_name]
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    if target_kind == "probabilities":
        return logits, torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64) * 2, dim=1)
    target = torch.randint(0, C, shape[:1] + shape[2:], generator=gen)
    if target_kind == "indices+ignored":
        flat = target.view(-1)
        flat[::4] = -100
    return logits, target


def class_weight(seed=1):
    return torch.rand(C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.25


def value_and_grad(fn, logits, seed=2):
    """The loss and d(Σ upstream · loss)/dlogits (a random upstream for "none", so every position's gradient
    counts)."""
    x = logits.detach().clone().requires_grad_()
    out = fn(x)
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype) + 0.5
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    return out.detach(), grad


def assert_same(fn, ref, logits, **tol):
    ours, grad = value_and_grad(fn, logits)
    expected, expected_grad = value_and_grad(ref, logits)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, **(tol or TIGHT))
    torch.testing.assert_close(grad, expected_grad, **(tol or TIGHT))


# ---------------------------------------------------------------------------------------------- naive references

def soft_target(logits, target, label_smoothing, ignore_index=-100):
    """q' = (1 - α) q + α / C with q one-hot for class indices (0 at ignored positions), and the valid mask."""
    num_classes = logits.shape[1]
    if target.is_floating_point():
        return (1 - label_smoothing) * target + label_smoothing / num_classes, None
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).movedim(-1, 1).to(logits.dtype)
    return ((1 - label_smoothing) * onehot + label_smoothing / num_classes) * valid.unsqueeze(1), valid


def reduce_like_pytorch(per_position, target, weight, reduction, ignore_index=-100):
    """nn.CrossEntropyLoss's reductions: class indices, mean = Σ / Σ w[y] over non-ignored positions (their count
    without a weight); probabilities, mean = Σ / number of positions."""
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    if target.is_floating_point():
        return per_position.sum() / per_position.numel()
    valid = target != ignore_index
    w = torch.ones(C, dtype=per_position.dtype) if weight is None else weight
    return per_position.sum() / (w[torch.where(valid, target, 0)] * valid).sum()


def naive_per_class(logits, target, term, *, weight=None, label_smoothing=0.0, reduction="mean",
                    ignore_index=-100):
    """Σ_k w_k q'_k term(log p_k) per position, straight from the definition (autograd differentiates it)."""
    log_p = F.log_softmax(logits, dim=1)
    q, _ = soft_target(logits, target, label_smoothing, ignore_index)
    w = torch.ones(C, dtype=logits.dtype) if weight is None else weight
    per_position = (w.view((1, C) + (1,) * (logits.dim() - 2)) * q * term(log_p)).sum(dim=1)
    return reduce_like_pytorch(per_position, target, weight, reduction, ignore_index)


def focal_term(gamma):
    """-(1 - p)^γ log p with γ a number or a rule of the detached p (evaluated per class term)."""
    def term(log_p):
        p = log_p.exp()
        g = gamma(p.detach()) if callable(gamma) else gamma
        return -(1 - p) ** g * log_p
    return term


def flsd53(p):
    return torch.where(p < 0.2, 5.0, 3.0).to(p.dtype)  # §4: γ = 5 for p < 0.2, else 3


# ---------------------------------------------------------------------------------------------- γ = 0: F.cross_entropy

def gamma_zero_losses(shape_name, target_kind, weight, smoothing, reduction):
    """Every focal-family loss at γ = 0 that takes this combination, as callables of the logits."""
    contract = dict(reduction=reduction, weight=weight, label_smoothing=smoothing)
    sample_shape = SHAPES[shape_name][:1] + SHAPES[shape_name][2:]
    losses = {
        "focal_loss(gamma=0)": lambda z, t: focal_loss(z, t, weight, reduction=reduction, label_smoothing=smoothing,
                                                       gamma=0.0),
        "focal_loss(per-position γ = 0)": lambda z, t: focal_loss(
            z, t, weight, reduction=reduction, label_smoothing=smoothing,
            gamma=torch.zeros(sample_shape, dtype=torch.float64)),
        "FocalLoss(0)": FocalLoss(0.0, **contract),
        "CrossEntropyLoss": CrossEntropyLoss(**contract),
        "build_loss('ce')": build_loss("ce", **contract),
        "FLSD with γ = (0, 0)": FocalLoss(SampleDependentGamma((0.0, 0.0), (0.2,)), **contract),
        "FLSc with γ = (0, 0)": FocalLoss(EpochScheduledGamma((0.0, 0.0), (1,)), **contract),
        "InverseFocalLoss(0)": InverseFocalLoss(0.0, **contract),
        "PolyLoss(0)": PolyLoss(0.0, **contract),
    }
    if smoothing > 0:  # PyTorch's smoothing as the loss's own α
        losses["LabelSmoothingLoss(α, form='torch')"] = LabelSmoothingLoss(smoothing, form="torch",
                                                                            reduction=reduction, weight=weight)
    if target_kind != "probabilities" and smoothing == 0:  # one target class per sample only
        losses["DualFocalLoss(0)"] = DualFocalLoss(0.0, **contract)
    return losses


@pytest.mark.parametrize("shape_name,target_kind,weighted,smoothing,reduction", GRID)
def test_gamma_zero_is_cross_entropy_in_every_combination(shape_name, target_kind, weighted, smoothing, reduction,
                                                          monkeypatch):
    logits, target = make_case(shape_name, target_kind)
    weight = class_weight() if weighted else None

    def reference(z):
        return F.cross_entropy(z, target, weight, reduction=reduction, label_smoothing=smoothing)

    for path in torch_paths(monkeypatch, target_kind, weighted, smoothing):
        for name, loss in gamma_zero_losses(shape_name, target_kind, weight, smoothing, reduction).items():
            try:
                assert_same(lambda z: loss(z, target), reference, logits)
            except AssertionError as error:
                raise AssertionError(f"{name} ({path}): {error}") from None


def test_unbatched_input_and_a_non_default_ignore_index_are_cross_entropy():
    logits, target = make_case("2-D", "indices")
    assert_same(lambda z: focal_loss(z[0], target[0], gamma=0.0), lambda z: F.cross_entropy(z[0], target[0]), logits)
    assert_same(lambda z: focal_loss(z[0], target[0], gamma=0.0, reduction="none"),
                lambda z: F.cross_entropy(z[0], target[0], reduction="none"), logits)
    seg = target.clone()
    seg[::3] = 255  # segmentation's "void" label
    weight = class_weight()
    assert_same(lambda z: CrossEntropyLoss(ignore_index=255, weight=weight, label_smoothing=0.1)(z, seg),
                lambda z: F.cross_entropy(z, seg, weight, ignore_index=255, label_smoothing=0.1), logits)


# ---------------------------------------------------------------------------------------------- γ > 0: naive formula

GAMMAS = {"γ = 2": 2.0, "FLSD-53": "flsd-53"}


@pytest.mark.parametrize("gamma_name", GAMMAS)
@pytest.mark.parametrize("shape_name,target_kind,weighted,smoothing",
                         sorted({case[:4] for case in GRID if case[1] != "indices"}))
def test_focal_loss_equals_autograd_of_the_per_class_formula(gamma_name, shape_name, target_kind, weighted, smoothing,
                                                             monkeypatch):
    logits, target = make_case(shape_name, target_kind, seed=3)
    weight = class_weight() if weighted else None
    gamma = GAMMAS[gamma_name]
    rule = flsd53 if isinstance(gamma, str) else gamma
    for path, reduction in itertools.product(torch_paths(monkeypatch, target_kind, weighted, smoothing),
                                             ("mean", "sum", "none")):
        module = build_loss(gamma, reduction=reduction, weight=weight, label_smoothing=smoothing) \
            if isinstance(gamma, str) else FocalLoss(gamma, reduction, weight=weight, label_smoothing=smoothing)
        assert_same(lambda z: module(z, target),
                    lambda z: naive_per_class(z, target, focal_term(rule), weight=weight, label_smoothing=smoothing,
                                              reduction=reduction), logits)
        assert_same(lambda z: focal_loss(z, target, weight, reduction=reduction, label_smoothing=smoothing,
                                         gamma=module.policy), lambda z: module(z, target), logits)


@pytest.mark.parametrize("target_kind", ["indices+ignored", "probabilities"])
def test_per_position_gamma_and_chunked_soft_targets(target_kind, monkeypatch):
    """A tensor of one γ per position, and the soft-target kernel cut into chunks of a few logits (both ways it cuts:
    several samples a chunk, and pieces of one sample's positions)."""
    logits, target = make_case("4-D", target_kind, seed=4)
    gamma = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 4
    weight = class_weight()

    def reference(z):
        log_p = F.log_softmax(z, dim=1)
        q, _ = soft_target(z, target, 0.1)
        per = -(weight.view(1, C, 1, 1) * q * (1 - log_p.exp()) ** gamma.unsqueeze(1) * log_p).sum(1)
        return reduce_like_pytorch(per, target, weight, "mean")

    for chunk in (7, 3 * C, 10 ** 6):
        monkeypatch.setattr(constants, "SOFT_TARGET_CHUNK_ELEMENTS", chunk)
        assert_same(lambda z: focal_loss(z, target, weight, label_smoothing=0.1, gamma=gamma), reference, logits)
        assert_same(lambda z: build_loss("flsd-53", label_smoothing=0.1)(z, target),
                    lambda z: naive_per_class(z, target, focal_term(flsd53), label_smoothing=0.1), logits)


def test_recompute_mode_and_channels_last_logits(monkeypatch):
    """keep_softmax=False (the softmax recomputed in the backward) and logits in channels-last memory (strided
    classes) through the fused kernel."""
    monkeypatch.setattr(constants, "SMALL_BATCH_ELEMENTS", 0)
    logits, target = make_case("4-D", "indices+ignored", seed=12)
    channels_last = logits.contiguous(memory_format=torch.channels_last)
    for keep_softmax in (True, False):
        assert_same(lambda z: focal_loss(z, target, gamma=2.0, keep_softmax=keep_softmax),
                    lambda z: naive_per_class(z, target, focal_term(2.0)), channels_last)


def test_a_masked_class_with_zero_target_probability_adds_nothing():
    """-inf masks a class out: with probability 0 there its term is 0 (F.cross_entropy would give 0 · inf = NaN),
    and its logit gets a 0 gradient."""
    logits, target = make_case("2-D", "probabilities", seed=6)
    logits[:, 2] = -math.inf
    target = target.clone()
    target[:, 2] = 0.0
    target = target / target.sum(1, keepdim=True)
    keep = [0, 1, 3, 4]

    def reference(z):  # the loss over the other classes (their log-softmax is the full one: p_2 = 0)
        log_p = F.log_softmax(z[:, keep], dim=1)
        return -(target[:, keep] * (1 - log_p.exp()) ** 2 * log_p).sum(1).mean()

    assert_same(lambda z: focal_loss(z, target, gamma=2.0), reference, logits)


# ---------------------------------------------------------------------------------------------- the other losses

def inverse_focal_term(gamma):
    return lambda log_p: -(1 + log_p.exp()) ** gamma * log_p


def poly1_term(epsilon):
    return lambda log_p: -log_p + epsilon * (1 - log_p.exp())


def naive_brier(logits, target, *, weight=None, label_smoothing=0.0, reduction="mean"):
    q, valid = soft_target(logits, target, label_smoothing)
    per = (torch.softmax(logits, 1) - q).square().sum(1)
    if valid is not None:
        per = per * valid
        if weight is not None:
            per = per * weight[torch.where(valid, target, 0)]
    return reduce_like_pytorch(per, target, weight, reduction)


def naive_paper_smoothing(alpha):
    """The paper's LS (§5.1): s = (1 - α) q + α (1 - q) / (C - 1), as a per-class coefficient on -log p."""
    def loss(logits, target, *, weight=None, reduction="mean"):
        q, valid = soft_target(logits, target, 0.0)
        s = (1 - alpha) * q + alpha * (1 - q) / (C - 1)
        if valid is not None:
            s = s * valid.unsqueeze(1)
        w = torch.ones(C, dtype=logits.dtype) if weight is None else weight
        per = -(w.view((1, C) + (1,) * (logits.dim() - 2)) * s * F.log_softmax(logits, 1)).sum(1)
        return reduce_like_pytorch(per, target, weight, reduction)
    return loss


def naive_mbls(logits, target, *, weight=None, label_smoothing=0.0, reduction="mean", margin=10.0, lam=0.1):
    """The released code's structure: nn.CrossEntropyLoss + λ · mean over classes of relu(max - z - m)."""
    ce = F.cross_entropy(logits, target, weight, reduction=reduction, label_smoothing=label_smoothing)
    penalty = F.relu(logits.max(1, keepdim=True).values - logits - margin).mean(1)
    if not target.is_floating_point():
        penalty = penalty * (target != -100)
        counted = (target != -100).sum()
    else:
        counted = penalty.numel()
    return ce + lam * {"none": penalty, "sum": penalty.sum(), "mean": penalty.sum() / counted}[reduction]


def naive_mmce(logits, target, *, weight=None, label_smoothing=0.0, reduction="mean", lam=2.0):
    ce = F.cross_entropy(logits, target, weight, reduction=reduction, label_smoothing=label_smoothing)
    valid = target != -100
    probs = torch.softmax(logits, 1)
    conf, prediction = probs.max(1)
    mmce = mmce_weighted(conf[valid], prediction[valid] == target[valid])  # tested against Kumar's sums elsewhere
    return ce + lam * {"none": mmce * valid, "sum": mmce * valid.sum(), "mean": mmce}[reduction]


def naive_dual_focal(gamma):
    def loss(logits, target, *, weight=None, reduction="mean"):
        valid = target != -100
        y = torch.where(valid, target, 0).unsqueeze(1)
        log_p = F.log_softmax(logits, 1)
        p = log_p.exp()
        p_y = p.gather(1, y)
        below = torch.where(p < p_y, p, torch.zeros_like(p))  # the largest probability below p_y, 0 if none
        per = (-(1 - p_y + below.max(1, keepdim=True).values) ** gamma * log_p.gather(1, y)).squeeze(1) * valid
        if weight is not None:
            per = per * weight[y.squeeze(1)]
        return reduce_like_pytorch(per, target, weight, reduction)
    return loss


def per_class(term):
    return lambda z, t, **kw: naive_per_class(z, t, term, **kw)


# (module factory taking the contract's keywords, naive reference, what the loss takes: "soft" = probability targets
# and label smoothing, "weight+soft" = a class weight with them)
OTHER_LOSSES = {
    "InverseFocalLoss(2)": (lambda **kw: InverseFocalLoss(2.0, **kw), per_class(inverse_focal_term(2.0)),
                            {"soft", "weight+soft"}),
    "PolyLoss(1)": (lambda **kw: PolyLoss(1.0, **kw), per_class(poly1_term(1.0)), {"soft", "weight+soft"}),
    "PolyLoss(-1)": (lambda **kw: PolyLoss(-1.0, **kw), per_class(poly1_term(-1.0)), {"soft", "weight+soft"}),
    "LabelSmoothingLoss(0.1, paper)": (lambda **kw: LabelSmoothingLoss(0.1, **kw),
                                       lambda z, t, label_smoothing, **kw: naive_paper_smoothing(0.1)(z, t, **kw),
                                       {"probabilities", "weight+probabilities"}),
    "BrierLoss": (lambda **kw: BrierLoss(**kw), naive_brier, {"soft"}),
    "MMCELoss(2)": (lambda **kw: MMCELoss(2.0, **kw), naive_mmce, {"smoothing", "weight+smoothing"}),
    "MarginLabelSmoothingLoss": (lambda **kw: MarginLabelSmoothingLoss(**kw), naive_mbls, {"soft", "weight+soft"}),
    "AdaFocalLoss (γ = 1 in every bin)": (lambda **kw: AdaFocalLoss(**kw),
                                          lambda z, t, label_smoothing, **kw: naive_per_class(z, t, focal_term(1.0),
                                                                                              **kw), set()),
    "DualFocalLoss(2)": (lambda **kw: DualFocalLoss(2.0, **kw),
                         lambda z, t, label_smoothing, **kw: naive_dual_focal(2.0)(z, t, **kw), set()),
}


def takes(accepts, target_kind, weighted, smoothing):
    soft_kinds = ({"probabilities"} if target_kind == "probabilities" else set()) | ({"smoothing"} if smoothing
                                                                                      else set())
    for kind in soft_kinds:
        if kind not in accepts and "soft" not in accepts:
            return False
        if weighted and f"weight+{kind}" not in accepts and "weight+soft" not in accepts:
            return False
    return True


@pytest.mark.parametrize("name", OTHER_LOSSES)
@pytest.mark.parametrize("shape_name,target_kind,weighted,smoothing",
                         sorted({case[:4] for case in GRID if case[1] != "indices"}))
def test_other_losses_match_their_formula_or_refuse_clearly(name, shape_name, target_kind, weighted, smoothing):
    factory, naive, accepts = OTHER_LOSSES[name]
    logits, target = make_case(shape_name, target_kind, seed=7)
    weight = class_weight() if weighted else None
    for reduction in ("mean", "sum", "none"):
        contract = dict(reduction=reduction, weight=weight, label_smoothing=smoothing)
        if not takes(accepts, target_kind, weighted, smoothing):
            with pytest.raises(ValueError, match=r"does not take (label_smoothing|probability targets|weight)"):
                factory(**contract)(logits, target)
            return
        assert_same(lambda z: factory(**contract)(z, target), lambda z: naive(z, target, **contract), logits,
                    rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("spec", PAPER_LOSS_SPECS + BEYOND_PAPER_LOSS_SPECS)
@pytest.mark.parametrize("target_kind", ["indices+ignored", "probabilities"])
def test_segmentation_logits_equal_the_same_loss_on_flattened_rows(spec, target_kind):
    """[N, C, H, W] with classes on dim 1 is the loss of the [N·H·W, C] rows (values and gradients, every
    reduction)."""
    logits, target = make_case("4-D", target_kind, seed=8)

    def rows(z):  # [N, C, H, W] -> [N·H·W, C]
        return z.movedim(1, -1).reshape(-1, C)

    row_target = rows(target) if target_kind == "probabilities" else target.reshape(-1)
    for reduction in ("mean", "sum", "none"):
        loss = build_loss(spec, reduction=reduction, epochs=10)
        try:
            loss(logits, target)
        except ValueError as error:  # a loss that does not take probability targets says so
            assert target_kind == "probabilities" and "does not take probability targets" in str(error)
            return
        shape = (2, 3, 4) if reduction == "none" else ()  # the positions [N, H, W], or a scalar
        assert_same(lambda z: loss(z, target), lambda z: loss(rows(z), row_target).reshape(shape), logits)


def test_half_precision_segmentation_logits_compute_in_float32():
    logits, target = make_case("4-D", "indices+ignored", seed=9)
    for fn in (lambda z, t: focal_loss(z, t, gamma=2.0), build_loss("flsd-53", label_smoothing=0.1)):
        ref = fn(logits.float(), target)
        half = logits.to(torch.bfloat16).requires_grad_()
        value = fn(half, target)
        value.backward()
        assert value.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
        torch.testing.assert_close(value, ref, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("make,call,message", [
    (lambda: build_loss("ls-0.05", label_smoothing=0.1), None,
     r"LabelSmoothingLoss does not take label_smoothing=0.1: it smooths the target itself"),
    (lambda: build_loss("ls-torch-0.1", label_smoothing=0.1), None, r"LabelSmoothingLoss does not take label_smooth"),
    (lambda: build_loss("adafocal", label_smoothing=0.1), None, r"AdaFocalLoss does not take label_smoothing=0.1"),
    (lambda: build_loss("adafocal"), "probabilities", r"AdaFocalLoss does not take probability targets"),
    (lambda: build_loss("mmce-2"), "probabilities", r"mmce_loss does not take probability targets"),
    (lambda: build_loss("dual-focal-2"), "probabilities", r"dual_focal_loss does not take probability targets"),
    (lambda: build_loss("dual-focal-2", label_smoothing=0.1), None, r"DualFocalLoss does not take label_smoothing"),
    (lambda: build_loss("brier", weight=torch.ones(C), label_smoothing=0.1), None,
     r"BrierLoss does not take label_smoothing=0.1: with weight="),
    (lambda: build_loss("brier", weight=torch.ones(C)), "probabilities",
     r"brier_loss does not take weight= with probability targets"),
    (lambda: build_loss("fl-2", ignore_index=255), "probabilities",
     r"ignore_index=255 applies to class-index targets only"),
])
def test_unsupported_combinations_raise_naming_the_argument_and_the_loss(make, call, message):
    with pytest.raises(ValueError, match=message):
        loss = make()
        logits, target = make_case("4-D", call or "indices")
        loss(logits, target)


@pytest.mark.parametrize("kwargs,message", [
    (dict(weight=3.0), r"weight of focal_loss must be a 1-D tensor .* \(gamma and the other options are keyword"),
    (dict(weight=torch.ones(4, dtype=torch.float64)), r"one weight per class \(5 classes\), got 4 weights"),
    (dict(weight=torch.tensor([1.0, -1, 1, 1, 1])), r"weight of focal_loss must be finite and >= 0, got -1"),
    (dict(label_smoothing=1.5), r"label_smoothing must be a number in \[0, 1\], got 1.5"),
    (dict(target=torch.zeros(2, 3, 4)), r"target of shape \(2, 3, 4\) must hold integer class indices"),
    (dict(target=torch.zeros(2, 4, 3, dtype=torch.long)), r"shape mismatch: logits have shape \(2, 5, 3, 4\) "
     r"\(classes on dim 1\), so target must have shape \(2, 3, 4\)"),
    (dict(target=torch.zeros(2, C, 3, 4, dtype=torch.long)), r"holds class probabilities, so it must be floating"),
    (dict(target=torch.full((2, C, 3, 4), -0.5, dtype=torch.float64)), r"probabilities must be finite and >= 0"),
    (dict(target=torch.full((2, 3, 4), 7)), r"target holds class index 7, outside \[0, 4\]"),
    (dict(gamma=torch.ones(2, 3)), r"per-sample gamma must have the target's shape \(2, 3, 4\)"),
    (dict(backend="triton", label_smoothing=0.1),
     r"focal_loss does not take backend='triton' with probability targets or label_smoothing"),
    (dict(reduction="avg"), r"reduction must be 'mean', 'sum' or 'none', got 'avg'"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    logits, target = make_case("4-D", "indices")
    args = {"target": target, **kwargs}
    target = args.pop("target")
    if "weight" in args:
        with pytest.raises((ValueError, TypeError), match=message):
            focal_loss(logits, target, args.pop("weight"), **args)
        return
    with pytest.raises((ValueError, TypeError), match=message):
        focal_loss(logits, target, **args)


def test_functional_twins_equal_their_modules():
    logits, target = make_case("4-D", "indices+ignored", seed=10)
    weight = class_weight()
    pairs = [(functional.inverse_focal_loss, dict(gamma=2.0), InverseFocalLoss(2.0, weight=weight)),
             (functional.poly1_loss, dict(epsilon=1.0), PolyLoss(1.0, weight=weight)),
             (functional.brier_loss, {}, BrierLoss(weight=weight)),
             (functional.dual_focal_loss, dict(gamma=2.0), DualFocalLoss(2.0, weight=weight)),
             (functional.margin_label_smoothing_loss, {}, MarginLabelSmoothingLoss(weight=weight)),
             (functional.mmce_loss, {}, MMCELoss(weight=weight))]
    for fn, options, module in pairs:
        torch.testing.assert_close(fn(logits, target, weight, **options), module(logits, target), **TIGHT)


# ---------------------------------------------------------------------------------------------- §4: the warning

@pytest.fixture
def warn_after_three(monkeypatch):
    monkeypatch.setattr(constants, "UNSCHEDULED_LOSS_WARNING_CALLS", 3)


def calls_warned(loss, calls):
    logits, target = make_case("2-D", "indices")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(calls):
            loss(logits, target)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_an_undriven_epoch_schedule_warns_once_naming_the_call_and_the_callbacks(warn_after_three):
    loss = build_loss("flsc-531", epochs=30)
    assert calls_warned(loss, 2) == []
    (message,) = calls_warned(loss, 10)  # once, at the third call
    assert "FocalLoss has run 3 forward calls without set_epoch(epoch)" in message
    assert "stays at epoch 0's value 5" in message
    assert "focal_calibration.integrations.lightning.CalibrationLossCallback" in message
    assert "focal_calibration.integrations.huggingface.CalibrationLossCallback" in message


def test_an_undriven_adafocal_warns_once_naming_observe_validation(warn_after_three):
    (message,) = calls_warned(AdaFocalLoss(), 5)
    assert "AdaFocalLoss has run 3 forward calls without observe_validation(val_logits, val_labels)" in message
    assert "CalibrationLossCallback" in message


def test_driven_or_unscheduled_losses_never_warn(warn_after_three):
    scheduled = build_loss("flsc-531", epochs=30)
    scheduled.set_epoch(0)
    observed = AdaFocalLoss()
    observed.observe_validation(*make_case("2-D", "indices", seed=11))
    restored = AdaFocalLoss()
    restored.load_state_dict(observed.state_dict())  # a resumed run: a trainer drives it
    for loss in (scheduled, observed, restored, build_loss("flsd-53"), build_loss("fl-3"), build_loss("ce"),
                 FocalLoss(EpochScheduledGamma((2.0, 2.0), (5,)))):  # a "schedule" of one γ changes nothing
        assert calls_warned(loss, 6) == [], loss
