"""Which implementation computes a fused focal loss: the PyTorch path or the Triton kernels."""

from __future__ import annotations

import functools
import importlib.util

import torch

__all__ = ["BACKENDS", "TRITON_DTYPES", "triton_available", "resolve_backend"]


BACKENDS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the triton package can be imported (it ships with CUDA builds of torch); imports nothing."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, logits: torch.Tensor) -> str:
    """``"auto"``: the fused Triton kernel for CUDA float32 / float16 / bfloat16 logits when triton is importable,
    the PyTorch path otherwise. ``"torch"`` / ``"triton"``: that one (triton must be importable)."""
    if backend == "auto":
        use_triton = logits.is_cuda and logits.dtype in TRITON_DTYPES and triton_available()
        return "triton" if use_triton else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and not triton_available():
        raise ValueError("backend='triton' needs the triton package (pip install triton), which is not installed")
    return backend
