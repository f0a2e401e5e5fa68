"""Run by tests/model/test_triton.py in a child pytest with TRITON_INTERPRET=1 (not collected directly)."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from test_triton import CASES, INTERP_CONFIGS, check  # noqa: E402  (same directory: on sys.path)

from andromeda.model.backends import triton_flash  # noqa: E402


@pytest.mark.parametrize("cfg", INTERP_CONFIGS, ids=lambda c: f"{c['BLOCK_M']}x{c['BLOCK_N']}-tma{int(c['TMA'])}")
@pytest.mark.parametrize("case", CASES)
def test_case(case, cfg, monkeypatch):
    # the same blocks forward and backward; BLOCK_M != BLOCK_N moves the masked/unmasked span boundaries
    monkeypatch.setattr(triton_flash, "CONFIG_OVERRIDE", {"fwd": cfg, "bwd": cfg})
    check(case, "cpu", torch.float32, 1e-5)
