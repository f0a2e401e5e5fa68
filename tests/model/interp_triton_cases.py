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


def test_launch_falls_back_when_a_setting_runs_out_of_shared_memory(monkeypatch):
    """A GPU with less shared memory refuses big tiles at launch; the next candidate must run, and be remembered."""
    from triton.runtime.errors import OutOfResources

    real, tried = triton_flash._kernels(), []

    class RefusesBigTiles:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                tried.append((self.name, kwargs["BLOCK_M"]))
                if kwargs["BLOCK_M"] == 32:
                    raise OutOfResources(300_000, 232_448, "shared memory")
                return self.kernel[grid](*args, **kwargs)

            return launch

    def candidates(device, kernel, dtype=torch.bfloat16):
        extra = {"WS": False} if kernel == "fwd" else {}
        return [dict(BLOCK_M=32, BLOCK_N=32, TMA=True, **extra), dict(BLOCK_M=16, BLOCK_N=16, TMA=True, **extra)]

    monkeypatch.setattr(triton_flash, "_kernels",
                        lambda: tuple(RefusesBigTiles(n, k) for n, k in zip(("fwd", "bwd", "dq"), real, strict=True)))
    monkeypatch.setattr(triton_flash, "_candidates", candidates)
    monkeypatch.setattr(triton_flash, "_CHOSEN", {})
    check(CASES[0], "cpu", torch.float32, 1e-5)  # correct results from the fallback blocks
    # ALiBi on 2 of 4 heads: a launch for those and one for the others, each kernel; a refusal stops the first
    # (the dQ kernel runs before dK/dV: it writes the rows' rowsum(dO * O) that dK/dV reads)
    assert tried == [("fwd", 32), ("fwd", 16), ("fwd", 16), ("dq", 32), ("dq", 16), ("dq", 16),
                     ("bwd", 32), ("bwd", 16), ("bwd", 16)]
    d = CASES[0][6]
    assert triton_flash._CHOSEN == {(k, None, torch.float32, d): 1 for k in ("fwd", "bwd", "dq")}
    tried.clear()
    check(CASES[0], "cpu", torch.float32, 1e-5)  # the second call starts at the setting that fitted
    assert tried == [("fwd", 16), ("fwd", 16), ("dq", 16), ("dq", 16), ("bwd", 16), ("bwd", 16)]
