"""On the CPU, a latency record's peak_mib is the model's memory (weights + the call's peak torch tensor
allocations), not the whole-process RSS, which stays under rss_peak_mib. Sizes by hand from the tiny preset."""

from __future__ import annotations

import pytest
import torch

from andromeda.measure.timing import TimingConfig
from andromeda.runs.context import Case, RunContext
from andromeda.sources.models import build

MIB = 2**20
VOCAB = 320  # the tiny preset's


def _latency(bundle, mode: str, batch: int, seq: int):
    from andromeda.scenarios.latency import Latency

    params = {"mode": mode, "batch": batch, "seq_len": seq}
    ctx = RunContext(device=torch.device("cpu"), dtype=torch.float32, env={},
                     timing=TimingConfig(warmup=0, min_runs=1, max_runs=1, budget_s=10.0, target_rel_ci=None),
                     case=Case(case_id="c", source="s", scenario="latency", params=params))
    (rec,) = Latency().run(bundle, params, ctx)
    return rec


@pytest.mark.parametrize("mode", ["forward", "fwd_bwd"])
def test_latency_peak_is_tensor_memory_and_grows_with_batch(mode):
    bundle = build("andromeda:tiny", torch.device("cpu"), torch.float32)
    weights = sum(p.numel() * 4 for p in bundle.model.parameters()) / MIB  # float32, no tied weights in tiny
    seq, recs = 64, {}
    for batch in (1, 8):
        rec = _latency(bundle, mode, batch, seq)
        m = recs[batch] = rec.metrics
        logits = batch * seq * VOCAB * 4 / MIB  # the forward's (B, N, V) float32 logits exist at the peak
        assert m["activations_mib"] >= logits
        assert m["peak_mib"] >= weights + m["activations_mib"]
        assert m["peak_mib"] == pytest.approx(weights + m["activations_mib"], abs=0.01)  # + buffers (tiny: none big)
        assert m["peak_mib"] < m["rss_peak_mib"] / 20  # RSS: interpreter, torch's libraries, reused heap pages
        assert "not process RSS" in rec.info["peak_mib"]
    # 8x the tokens: the activations grow at least by the 7 extra sequences' logits
    assert recs[8]["activations_mib"] - recs[1]["activations_mib"] >= 7 * seq * VOCAB * 4 / MIB
    assert recs[8]["peak_mib"] > recs[1]["peak_mib"]
