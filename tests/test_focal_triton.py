"""The Triton kernels' correctness cases (tests/triton_kernel_cases.py) in Triton's interpreter on CPU tensors.

They need TRITON_INTERPRET=1 before triton is first imported, so they run in a fresh process: setting it in this one
would turn every later triton import into the interpreter (and the CUDA tests with it).
"""

import pytest

from focal_reference import assert_cases_passed, run_kernel_cases

pytest.importorskip("triton")


def test_triton_kernels_in_the_interpreter():
    assert_cases_passed(run_kernel_cases(TRITON_INTERPRET="1", FOCAL_KERNEL_DEVICE="cpu"))
