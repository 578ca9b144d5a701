"""The fused Triton kernels (focal_calibration.losses.triton_kernels): values and gradients against the PyTorch path
(itself
tested against autograd of the naive formula) and, for the plain loss, against autograd of the naive formula in
float64. Tiles of 16 columns, so rows span several tiles and the last one is ragged; ignored rows; extreme logits;
γ < 1 with p -> 1; every γ mode; label smoothing; float16 and bfloat16 inputs.

Two launchers run this file in a process of its own:
  * tests/test_focal_triton.py (``make test``): Triton's interpreter on CPU tensors. TRITON_INTERPRET must be set
    before triton is first imported (triton.language's own helpers are decorated then); it is set below.
  * tests/test_cuda.py (``pytest -m cuda``): FOCAL_KERNEL_DEVICE=cuda, the compiled kernels on the GPU, plus a
    [64 x 32003] case with the default tiles.
The GPU's softmax sums use Triton's fast exp, hence its looser (still float32-level) tolerances.
"""

import math
import os

DEVICE = os.environ.get("FOCAL_KERNEL_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from focal_calibration import build_loss, focal_loss, focal_loss_classes_last  # noqa: E402
from focal_calibration.losses import backend, triton_kernels  # noqa: E402
from focal_calibration.losses.fused_smoothed import focal_label_smoothed_loss_classes_last  # noqa: E402
from focal_calibration.losses.gamma import SampleDependentGamma, prop2_gamma_policy  # noqa: E402
from focal_reference import IGNORE, IGNORED_ROWS, batch, naive_focal, value_and_grad  # noqa: E402

VALUE_TOL, GRAD_TOL = {"cpu": (dict(rtol=1e-6, atol=1e-6), dict(rtol=1e-5, atol=1e-7)),
                       "cuda": (dict(rtol=1e-5, atol=1e-5), dict(rtol=1e-4, atol=1e-6))}[DEVICE]


@pytest.fixture(scope="module", autouse=True)
def small_tiles():
    if DEVICE == "cpu" and not triton_kernels.INTERPRETER:
        pytest.fail("TRITON_INTERPRET=1 must be set before triton is imported (run this file in a fresh process)")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.fail("FOCAL_KERNEL_DEVICE=cuda, but torch sees no CUDA device")
    saved = triton_kernels.MAX_BLOCK_COLS
    triton_kernels.MAX_BLOCK_COLS = 16  # K = 50: four tiles per row, the last one 2 columns wide
    yield
    triton_kernels.MAX_BLOCK_COLS = saved


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def compare(fn, logits, upstream, naive=None):
    """fn(x, backend) on both backends: equal values and gradients (and equal to naive(x) in float64 on the CPU)."""
    ours, grad = value_and_grad(lambda x: fn(x, "triton"), logits, upstream)
    ref, ref_grad = value_and_grad(lambda x: fn(x, "torch"), logits, upstream)
    torch.testing.assert_close(ours, ref, **VALUE_TOL)
    torch.testing.assert_close(grad, ref_grad, **GRAD_TOL)
    if naive is not None:
        expected, expected_grad = value_and_grad(naive, logits.cpu().double(), upstream.cpu().double())
        torch.testing.assert_close(ours.cpu().double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad.cpu().double(), expected_grad, rtol=1e-4, atol=1e-6)
    return ours, grad


GAMMAS = {
    "fixed 3": 3.0,
    "fixed 0 (cross-entropy)": 0.0,
    "fixed 0.5": 0.5,
    "per-row tensor": torch.linspace(0.0, 5.0, 37),
    "FLSD-53 table": build_loss("flsd-53").policy,
    "FLSD-532 table": build_loss("flsd-532").policy,
    "Prop. 2 table": prop2_gamma_policy([0.2, 0.25]),
    "other callable": lambda p: torch.where(p < 0.5, 4.0, 1.0),
}


@pytest.mark.parametrize("name", list(GAMMAS))
def test_plain_kernel_matches_torch_path_and_naive_formula(name):
    gamma = GAMMAS[name]
    gamma_here = gamma.to(DEVICE) if isinstance(gamma, torch.Tensor) else gamma
    logits, target, upstream = batch()
    logits, target_here, upstream = on_device(logits, target, upstream)
    naive = None if callable(gamma) else (lambda x: naive_focal(x, target, gamma))
    ours, grad = compare(lambda x, backend: focal_loss_classes_last(x, target_here, gamma_here, reduction="none",
                                                       ignore_index=IGNORE, backend=backend), logits, upstream, naive)
    assert torch.all(grad[list(IGNORED_ROWS)] == 0) and torch.all(ours[list(IGNORED_ROWS)] == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_broadcast_the_upstream_gradient(reduction):
    logits, target, _ = on_device(*batch(seed=1))
    x = logits.clone().requires_grad_()
    ours = focal_loss_classes_last(x, target, 2.0, reduction=reduction, ignore_index=IGNORE, backend="triton")
    (grad,) = torch.autograd.grad(ours, x)  # autograd passes a stride-0 (expanded) gradient per row
    y = logits.clone().requires_grad_()
    ref = focal_loss_classes_last(y, target, 2.0, reduction=reduction, ignore_index=IGNORE, backend="torch")
    (ref_grad,) = torch.autograd.grad(ref, y)
    torch.testing.assert_close(ours, ref, **VALUE_TOL)
    torch.testing.assert_close(grad, ref_grad, **GRAD_TOL)


def test_extreme_logits_and_gamma_below_one_with_p_to_one():
    """|z| up to 1e4 and rows whose p_y is 1 in float32 (or just below): finite, equal to the torch path."""
    logits = torch.zeros(6, 19)
    logits[0, 0], logits[1, 5], logits[2, 18] = 1e4, -1e4, 1e4  # p_y = 1, 0 and 1 (target 18)
    logits[3, :] = torch.linspace(-1e4, 1e4, 19)
    logits[4, 2], logits[5, 2] = 40.0, 12.0  # p_y = 1 exactly and 1 - 1e-4
    logits, target, upstream = on_device(logits, torch.tensor([0, 5, 18, 0, 2, 2]), torch.ones(6))
    # p_y - 1 at p_y = 1 - 1e-4 cancels in float32 on both paths alike: two ulps of 1 apart at most
    grad_tol = dict(GRAD_TOL, atol=max(GRAD_TOL["atol"], 2.5e-7))
    for gamma in [0.3, 0.0, 3.0]:
        ours, grad = value_and_grad(
            lambda x: focal_loss_classes_last(x, target, gamma, reduction="none", backend="triton"), logits, upstream)
        ref, ref_grad = value_and_grad(
            lambda x: focal_loss_classes_last(x, target, gamma, reduction="none", backend="torch"), logits, upstream)
        assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(ours, ref, **VALUE_TOL)
        torch.testing.assert_close(grad, ref_grad, **grad_tol)
        assert float(ours[1]) == pytest.approx(1e4 + math.log(18), rel=1e-6)  # p_y = 0: L = -log p_y, any γ


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    logits, target, upstream = on_device(*batch(scale=8.0, dtype=dtype, seed=2))
    policy = build_loss("flsd-53").policy
    ours, grad = value_and_grad(lambda x: focal_loss_classes_last(x, target, policy, reduction="none",
                                                                  ignore_index=IGNORE, backend="triton"),
                                logits, upstream)
    ref, ref_grad = value_and_grad(lambda x: focal_loss_classes_last(x, target, policy, reduction="none",
                                                                     ignore_index=IGNORE, backend="torch"),
                                   logits, upstream)
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(ours, ref, **VALUE_TOL)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=0, atol=2 * float(torch.finfo(dtype).eps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["fixed 0.5", "fixed 0 (cross-entropy)", "per-row tensor", "FLSD-532 table",
                                  "other callable"])
def test_label_smoothed_kernel_matches_torch_path(name, dtype):
    gamma = GAMMAS[name]
    gamma = gamma.to(DEVICE) if isinstance(gamma, torch.Tensor) else gamma
    logits, target, upstream = on_device(*batch(seed=3, dtype=dtype))
    kwargs = dict(reduction="none", ignore_index=IGNORE, return_nll=True)
    x, y = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ours_nll = focal_label_smoothed_loss_classes_last(x, target, gamma, 0.1, backend="triton", **kwargs)
    ref, ref_nll = focal_label_smoothed_loss_classes_last(y, target, gamma, 0.1, backend="torch", **kwargs)
    (grad,) = torch.autograd.grad((ours * upstream).sum(), x)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), y)
    assert grad.dtype == dtype
    torch.testing.assert_close(ours, ref, **VALUE_TOL)
    torch.testing.assert_close(ours_nll, ref_nll, **VALUE_TOL)
    grad_tol = GRAD_TOL if dtype == torch.float32 else dict(rtol=0, atol=2 * float(torch.finfo(dtype).eps))
    torch.testing.assert_close(grad.float(), ref_grad.float(), **grad_tol)
    assert torch.all(grad[list(IGNORED_ROWS)] == 0)


@pytest.mark.skipif(DEVICE != "cuda", reason="a full-size row: too slow for the interpreter")
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_default_tiles_on_a_32k_vocabulary(smoothing, monkeypatch):
    monkeypatch.setattr(triton_kernels, "MAX_BLOCK_COLS", 8192)  # [64 x 32003]: three full tiles and a ragged one
    logits, target, upstream = batch(64, 32003, seed=6)
    policy = build_loss("flsd-53").policy
    naive = (lambda x: naive_focal(x, target, 3.0)) if smoothing == 0 else None
    target_here, = on_device(target)
    compare(lambda x, backend: focal_label_smoothed_loss_classes_last(x, target_here, 3.0 if naive else policy,
                                                                      smoothing, reduction="none",
                                                                      ignore_index=IGNORE, backend=backend),
            *on_device(logits, upstream), naive)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in NumPy
def test_value_checks_and_bad_inputs(monkeypatch):
    logits = batch(rows=4, classes=5)[0].to(DEVICE)
    bad = logits.clone()
    bad[1, 2] = float("nan")
    labels = torch.tensor([0, 1, 2, 3], device=DEVICE)
    monkeypatch.setattr("focal_calibration.validation._VALUE_CHECKS_ON_ACCELERATORS", True)  # CUDA: checks on
    with pytest.raises(ValueError, match="logits must be finite, got nan at row 1, class 2"):
        focal_loss_classes_last(bad, labels, 2.0, backend="triton")
    with pytest.raises(ValueError, match="logits must be finite, got nan at row 1, class 2"):  # in an ignored row
        focal_label_smoothed_loss_classes_last(bad, torch.tensor([0, IGNORE, 2, 3], device=DEVICE), 2.0, 0.1,
                                               backend="triton")
    bad[1, 2] = float("inf")  # off the target: log p_y = -inf, but the logit is what is named
    with pytest.raises(ValueError, match="logits must be finite, got inf at row 1, class 2"):
        focal_loss_classes_last(bad, labels.flip(0), 2.0, backend="triton")
    with pytest.raises(ValueError, match="logits must be finite, got inf at row 1, class 2"):
        focal_label_smoothed_loss_classes_last(bad, labels.flip(0), 2.0, 0.1, backend="triton")
    with pytest.raises(ValueError, match=r"target holds class index 7, outside \[0, 4\]"):
        focal_loss_classes_last(logits, torch.tensor([0, 7, 2, 3], device=DEVICE), 2.0, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' computes float32, float16 and bfloat16 logits, got "
                                         "torch.float64"):
        focal_loss_classes_last(logits.double(), labels, 2.0, backend="triton")
    with pytest.raises(ValueError, match="backend must be 'auto', 'torch' or 'triton', got 'cuda'"):
        focal_loss_classes_last(logits, labels, 2.0, backend="cuda")
    monkeypatch.setattr(triton_kernels, "INTERPRETER", False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors, got logits on cpu"):
        focal_loss_classes_last(logits.cpu(), labels.cpu(), 2.0, backend="triton")


def test_kernel_bucketizes_a_table_policy_without_calling_it():
    """SampleDependentGamma is bucketized in the kernel (its tables), not called from Python."""
    class Counting(SampleDependentGamma):
        calls = 0

        def __call__(self, p_y):
            Counting.calls += 1
            return super().__call__(p_y)

    logits, target, _ = on_device(*batch(seed=5))
    policy = Counting((5, 3), thresholds=(0.2,))
    ours = focal_loss_classes_last(logits, target, policy, ignore_index=IGNORE, backend="triton")
    assert Counting.calls == 0
    ref = focal_loss_classes_last(logits, target, policy, ignore_index=IGNORE, backend="torch")
    torch.testing.assert_close(ours, ref, **VALUE_TOL)


def test_contract_segmentation_logits_with_weight_and_per_position_gamma():
    """focal_loss with nn.CrossEntropyLoss's contract on [N, C, H, W] (the kernel reads one classes-last copy), a
    class weight and ignored positions: equal to the PyTorch path, which is tested against F.cross_entropy and the
    per-class formula in tests/test_loss_contract.py."""
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 50, 3, 4, generator=gen) * 3
    target = torch.randint(0, 50, (2, 3, 4), generator=gen)
    target[0, 1] = IGNORE
    weight = torch.rand(50, generator=gen) + 0.5
    upstream = torch.rand(2, 3, 4, generator=gen)
    target, weight = on_device(target, weight)
    for gamma in (*on_device(torch.rand(2, 3, 4, generator=gen) * 4), build_loss("flsd-53").policy):
        compare(lambda x, backend: focal_loss(x, target, weight, ignore_index=IGNORE, reduction="none", gamma=gamma,
                                              backend=backend), *on_device(logits, upstream))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_backend_checks_the_real_kernels_then_uses_them(dtype, monkeypatch):
    """backend="auto": the one-time self-check of each kernel (plain / label-smoothed x every kind of γ) with the real
    kernels passes, and the call and the later ones then run the kernel (on the CPU, "cpu" joins the device types
    auto considers, so the interpreter stands for the GPU)."""
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    monkeypatch.setattr(backend, "_RESULTS", {})
    if DEVICE == "cpu":
        monkeypatch.setattr(backend, "TRITON_DEVICE_TYPES", ("cuda", "cpu"))
    launches = []
    for name in ("focal_loss_rows", "focal_smoothed_rows"):
        real = getattr(triton_kernels, name)
        monkeypatch.setattr(triton_kernels, name, lambda *args, real=real: launches.append(1) or real(*args))
    logits, target, upstream = on_device(*batch(rows=24, classes=20, dtype=dtype, seed=7))  # two tiles a row
    cases = [(focal_loss_classes_last, gamma) for gamma in (2.0, torch.linspace(0.0, 5.0, 24, device=DEVICE),
                                               build_loss("flsd-53").policy, lambda p: 1.0 + p)]
    cases.append((lambda x, y, gamma, **kw: focal_label_smoothed_loss_classes_last(x, y, gamma, 0.1, **kw), 2.0))
    for i, (loss, gamma) in enumerate(cases + cases[:1]):
        before = len(launches)
        ours, grad = value_and_grad(lambda x: loss(x, target, gamma, reduction="none", ignore_index=IGNORE),
                                    logits, upstream)
        assert len(launches) - before == (2 if i < len(cases) else 1)  # the check's launch and the call's; once
        ref, ref_grad = value_and_grad(lambda x: loss(x, target, gamma, reduction="none", ignore_index=IGNORE,
                                                      backend="torch"), logits, upstream)
        torch.testing.assert_close(ours, ref, **VALUE_TOL)
        torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=GRAD_TOL["rtol"],
                                   atol=max(GRAD_TOL["atol"], 2 * float(torch.finfo(dtype).eps)))
    results = backend.self_check_results()
    assert [r.kernel for r in results] == ["focal loss, fixed γ", "focal loss, per-sample γ",
                                           "focal loss, threshold-table γ", "focal loss, γ policy callable",
                                           "label-smoothed focal loss, fixed γ"]
    assert all(r.passed and r.dtype == str(dtype) for r in results), results
