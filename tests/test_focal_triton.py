"""The Triton kernels' correctness cases (tests/triton_interpreter_cases.py) in Triton's interpreter on the CPU.

They need TRITON_INTERPRET=1 before triton is first imported, so they run in a fresh process: setting it in this one
would turn every later triton import into the interpreter (and the CUDA tests with it).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CASES = Path(__file__).with_name("triton_interpreter_cases.py")


def test_triton_kernels_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
                            cwd=CASES.parent.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
