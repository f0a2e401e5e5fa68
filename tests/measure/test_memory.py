"""measure.memory: peak RSS catches a 256 MiB allocation; module_bytes counts tied weights once; the CPU tensor
peak counts torch's allocations and frees; the memory scenario's CPU numbers are tensor memory, not RSS."""

import time

import pytest
import torch
from torch import nn

from andromeda.measure.memory import MIB, module_bytes, tensor_bytes, track_memory

SIZE_MIB = 256


def _clear_refs_permitted() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _touch_and_free(hold_s: float = 0.0) -> None:
    t = torch.empty(SIZE_MIB * MIB, dtype=torch.uint8)
    t.fill_(1)  # touch every page so it is resident
    time.sleep(hold_s)
    del t


@pytest.mark.skipif(not _clear_refs_permitted(), reason="/proc/self/clear_refs not writable here")
def test_clear_refs_peak_catches_freed_allocation():
    with track_memory("cpu", rss_method="clear_refs") as mem:
        _touch_and_free()  # freed before exit: only a peak can see it
    assert mem.rss_method == "clear_refs"
    assert mem.rss_peak_mib - mem.rss_start_mib >= SIZE_MIB - 16
    assert mem.rss_delta_mib == pytest.approx(mem.rss_peak_mib - mem.rss_start_mib)
    assert mem.peak_allocated_mib is None  # no CUDA allocator on CPU


def test_sampling_peak_catches_held_allocation():
    with track_memory("cpu", rss_method="sampling") as mem:
        _touch_and_free(hold_s=0.05)
    assert mem.rss_method == "sampling"
    assert mem.rss_peak_mib - mem.rss_start_mib >= SIZE_MIB - 16


def test_auto_and_nesting_keep_outer_peak():
    with track_memory("cpu") as outer:
        _touch_and_free(hold_s=0.02)
        with track_memory("cpu") as inner:  # must not reset the outer tracker's peak
            time.sleep(0.01)
    assert outer.rss_method in ("clear_refs", "sampling")
    assert inner.rss_method == "sampling" or outer.rss_method == "sampling"
    assert outer.rss_peak_mib - outer.rss_start_mib >= SIZE_MIB - 16
    assert inner.rss_delta_mib < SIZE_MIB / 2


def test_no_allocation_small_delta():
    with track_memory("cpu") as mem:
        x = sum(range(1000))
    assert x == 499500
    assert mem.rss_delta_mib < 32


def test_tensor_and_module_bytes():
    t = torch.zeros(3, 5, dtype=torch.float16)
    assert tensor_bytes(t) == 3 * 5 * 2

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.lin = nn.Linear(16, 8)
            self.head = nn.Linear(16, 100, bias=False)
            self.head.weight = self.emb.weight  # tied
            self.register_buffer("buf", torch.zeros(7, dtype=torch.float64))

    m = M()
    expected = (100 * 16 + 16 * 8 + 8) * 4 + 7 * 8
    assert module_bytes(m) == expected
    m.half()
    assert module_bytes(m) == (100 * 16 + 16 * 8 + 8) * 2 + 7 * 2  # .half() casts float buffers too


def test_module_bytes_dedupes_distinct_parameters_on_same_memory():
    base = torch.randn(10, 4)
    m = nn.Module()
    m.a = nn.Parameter(base)
    m.b = nn.Parameter(base)  # a different Parameter object viewing the same storage
    assert m.a is not m.b
    assert module_bytes(m) == 10 * 4 * 4


def test_module_bytes_of_andromeda_with_tied_embeddings():
    from andromeda.model import Andromeda, from_name

    model = Andromeda(from_name("tiny", tie_embeddings=True))
    direct = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    direct += sum(b.numel() * b.element_size() for b in model.buffers())
    assert module_bytes(model) == direct
    # the tied head adds nothing on top of the embedding
    untied = Andromeda(from_name("tiny"))
    assert module_bytes(untied) - module_bytes(model) == 320 * 64 * 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_allocated():
    keep = torch.empty(32 * MIB, dtype=torch.uint8, device="cuda")
    with track_memory("cuda") as mem:
        t = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
        t.fill_(1)
        del t
    assert mem.start_allocated_mib >= 32
    assert mem.delta_peak_allocated_mib == pytest.approx(64, abs=1)
    assert mem.peak_allocated_mib == pytest.approx(mem.start_allocated_mib + 64, abs=1)
    assert mem.peak_reserved_mib >= mem.peak_allocated_mib
    del keep


# ---- torch's CPU tensors (the memory scenario's CPU numbers) ---------------------------------------
def test_cpu_tensor_peak_counts_allocations_and_frees_in_order():
    from andromeda.measure.memory import track_cpu_tensors

    kept = torch.empty(10)  # allocated before: not counted
    with track_cpu_tensors() as t:
        a = torch.empty(1_000_000, dtype=torch.float32)  # 4,000,000 bytes
        b = torch.empty(250_000, dtype=torch.float64)  # 2,000,000 bytes: 6,000,000 at once
        del a
        c = torch.empty(3_000_000, dtype=torch.uint8)  # 2,000,000 + 3,000,000 < the earlier 6,000,000
        del kept
    if t.reason is not None:
        pytest.skip(t.reason)
    assert t.peak_mib * MIB == pytest.approx(6_000_000, abs=4096)
    assert t.end_mib * MIB == pytest.approx(5_000_000 - 40, abs=4096)  # b and c remain; `kept` was freed
    del b, c


def test_memory_scenario_on_cpu_reports_tensor_memory_not_process_rss(tmp_path):
    from andromeda.model import Andromeda, from_name
    from andromeda.records import RecordStore
    from andromeda.runs.manifest import validate
    from andromeda.runs.runner import run

    m = validate({"models": ["andromeda:tiny"], "device": "cpu", "report": {"formats": ["csv"]},
                  "scenarios": [{"scenario": "memory", "mode": ["inference", "train"], "batch": [1, 4],
                                 "seq_len": [64], "kv_cache": False}]})
    run(m, tmp_path / "run")
    recs = {(r.params["mode"], r.params["batch"]): r for r in RecordStore(tmp_path / "run" / "results.jsonl")}
    cfg = from_name("tiny")
    params = sum(p.numel() for p in Andromeda(cfg).parameters())
    for (mode, batch), r in recs.items():
        x = r.metrics
        logits = batch * 64 * cfg.num_tokens * 4  # the output alone, float32
        assert x["activations_mib"] * MIB >= logits  # every pass allocates at least its logits
        if mode == "train":  # and a training step its gradients
            assert x["activations_mib"] * MIB >= logits + 4 * params
        assert x["peak_mib"] == pytest.approx(x["weights_mib"] + x["activations_mib"])
        assert x["peak_mib"] < x["rss_peak_mib"] / 10  # not the whole process (the issue: 526.7 MiB)
        assert "not process RSS" in r.info["peak_mib"]
    for mode in ("inference", "train"):  # four sequences need more than one
        assert recs[(mode, 4)].metrics["activations_mib"] > 2 * recs[(mode, 1)].metrics["activations_mib"]
