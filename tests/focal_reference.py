"""Shared by the kernel tests (tests/triton_kernel_cases.py and its launchers tests/test_focal_triton.py and
tests/test_cuda.py): a batch with ignored rows and a different upstream gradient per row, a loss's value and gradient,
the naive formula (§4) through autograd, and the launcher of the kernel cases in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

IGNORE = -100
IGNORED_ROWS = (3, 17, 36)


def batch(rows=37, classes=50, *, scale=4.0, seed=0, dtype=torch.float32):
    """Logits [rows, classes], targets with IGNORED_ROWS ignored, and per-row weights dL/dL_i in [0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(rows, classes, generator=gen)).to(dtype)
    target = torch.randint(0, classes, (rows,), generator=gen)
    target[[i for i in IGNORED_ROWS if i < rows]] = IGNORE
    upstream = torch.rand(rows, generator=gen) + 0.5  # exercises the kernels' upstream-gradient stride
    return logits, target, upstream


def value_and_grad(fn, logits, upstream):
    x = logits.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    return out.detach(), grad


def naive_focal(logits, target, gamma):
    """-(1 - p_y)^γ log p_y per sample through autograd (§4), 0 at ignored rows."""
    valid = target != IGNORE
    log_p = F.log_softmax(logits, -1).gather(1, torch.where(valid, target, 0)[:, None]).squeeze(1)
    return torch.where(valid, -(1 - log_p.exp()) ** gamma * log_p, torch.zeros_like(log_p))


KERNEL_CASES = Path(__file__).with_name("triton_kernel_cases.py")


def run_kernel_cases(**env_changes) -> subprocess.CompletedProcess:
    """pytest on tests/triton_kernel_cases.py in a fresh process (TRITON_INTERPRET must be decided before triton is
    first imported); env_changes set variables, or remove them when None."""
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(KERNEL_CASES)],
                          cwd=KERNEL_CASES.parent.parent, env=env, capture_output=True, text=True, timeout=900)


def assert_cases_passed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout, result.stdout[-2000:]
