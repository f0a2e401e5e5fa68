"""Floors: the formulas on a stubbed timer, and a real measurement on CUDA."""

from types import SimpleNamespace

import pytest
import torch

from andromeda.measure import floors


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


def test_datasheet_and_floor_ms():
    d = floors.datasheet("NVIDIA H100 80GB HBM3")
    assert d == {"device": "NVIDIA H100 80GB HBM3", "datasheet_bf16_tflops": 989.5, "datasheet_gb_per_s": 3350.0}
    assert floors.datasheet("cpu") == {"device": "cpu", "datasheet_bf16_tflops": None, "datasheet_gb_per_s": None}
    # 5 GB at 2,500 GB/s (1e9 bytes/s) is 2 ms; an unknown bandwidth gives no floor
    assert floors.floor_ms(5e9, 2500.0) == pytest.approx(2.0)
    assert floors.floor_ms(5e9, None) is None


def test_provenance_leads_with_commit_device_versions_floors():
    env = {"git_commit": "a" * 40, "gpu_names": ["NVIDIA H100 80GB HBM3"], "torch": "2.11.0", "cuda": "12.8",
           "triton": "3.5.0", "transformers": "4.57.0", "python": "3.12.3", "andromeda": "0.1.0", "hostname": "h"}
    fl = {"matmul_bf16_tflops": 750.0, "copy_gb_per_s": 3000.0, **floors.datasheet("NVIDIA H100 80GB HBM3")}
    head = floors.provenance(env, fl)
    assert head["git_commit"] == "a" * 40 and head["git_dirty"] in (True, False, None)
    assert head["device"] == "NVIDIA H100 80GB HBM3"
    assert head["versions"] == {"andromeda": "0.1.0", "torch": "2.11.0", "cuda": "12.8", "triton": "3.5.0",
                                "transformers": "4.57.0", "python": "3.12.3"}
    assert head["floors"] is fl and head["env"] is env
