"""Run by tests/model/test_triton.py in a child pytest with TRITON_INTERPRET=1 (not collected directly)."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from test_triton import CASES, check  # noqa: E402  (same directory: pytest puts it on sys.path)


@pytest.mark.parametrize("case", CASES)
def test_case(case):
    check(case, "cpu", torch.float32, 1e-5)
