"""The latency and throughput scenarios charge attention's backward per kernel: 2x forward where the kernel
saved the probabilities (eager), 2.5x where it recomputes them (SDPA's fused CPU kernel, FlexAttention).
Expected FLOPs are worked out by hand from the model's shape."""

import pytest
import torch

from andromeda.measure.timing import TimingConfig
from andromeda.runs.context import Case, RunContext
from andromeda.sources.models import build

B, N = 2, 16
# tiny-sized, non-causal (every pair counts), no ALiBi/xPos so eager, sdpa and flex all run it
SOURCE = ("andromeda:tiny?causal=false&alibi_pos_bias=false&alibi_num_heads=null&rotary_xpos=false"
          "&attn_backend={}")


def _hand() -> tuple[int, int]:
    """(weight matmuls, attention) forward FLOPs of the tiny preset on B x N tokens, logits everywhere."""
    t = B * N
    d, h, hkv, hd, f, v, L = 64, 4, 1, 16, 256, 320, 2
    weights = L * (2 * t * d * (2 * h * hd + 2 * hkv * hd) + 2 * 2 * t * d * f) + 2 * t * d * v
    attn = L * 2 * (2 * B * h * N * N * hd)
    return weights, attn


def _run(scenario: str, backend: str, params: dict) -> float:
    from andromeda.scenarios.latency import Latency
    from andromeda.scenarios.throughput import Throughput

    bundle = build(SOURCE.format(backend), torch.device("cpu"), torch.float32)
    ctx = RunContext(device=torch.device("cpu"), dtype=torch.float32, env={},
                     timing=TimingConfig(warmup=0, min_runs=1, max_runs=1, budget_s=10.0, target_rel_ci=None),
                     case=Case(case_id="c", source="s", scenario=scenario, params=params))
    cls = {"latency": Latency, "throughput": Throughput}[scenario]
    (rec,) = cls().run(bundle, params, ctx)
    return rec.metrics["flops"]


@pytest.mark.parametrize("backend,factor", [("eager", 2.0), ("sdpa", 2.5), ("flex", 2.5)])
def test_latency_backward_flops_per_kernel(backend, factor):
    weights, attn = _hand()
    fwd_bwd = _run("latency", backend, {"mode": "fwd_bwd", "batch": B, "seq_len": N})
    assert fwd_bwd == 3 * weights + (1 + factor) * attn
    bwd = _run("latency", backend, {"mode": "backward", "batch": B, "seq_len": N})
    assert bwd == 2 * weights + factor * attn


@pytest.mark.parametrize("backend,factor", [("eager", 2.0), ("sdpa", 2.5)])
def test_throughput_train_flops_per_kernel(backend, factor):
    weights, attn = _hand()
    assert _run("throughput", backend, {"mode": "train", "batch": B, "seq_len": N}) == 3 * weights + (1 + factor) * attn
