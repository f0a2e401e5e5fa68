"""Floors: the formulas on a stubbed timer, and a real measurement on CUDA."""

from types import SimpleNamespace

import pytest
import torch

from andromeda.bench import floors


def test_formulas_on_a_stubbed_timer(monkeypatch):
    monkeypatch.setattr(floors, "time_fn", lambda fn, dev, cfg: (fn(), SimpleNamespace(median_ms=2.0))[1])
    assert floors.matmul_tflops("cpu", n=64) == pytest.approx(2 * 64**3 / 2e-3 / 1e12)
    assert floors.copy_gb_per_s("cpu", nbytes=4096) == pytest.approx(2 * 4096 / 2e-3 / 1e9)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measured_floors_are_physical():
    f = floors.measure("cuda")
    assert 1 < f["matmul_bf16_tflops"] < 2500  # below any GPU's dense bf16 peak
    assert 10 < f["copy_gb_per_s"] < 10_000
