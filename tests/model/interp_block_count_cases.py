"""Run by tests/model/test_block_count.py in a child pytest with TRITON_INTERPRET=1 (not collected directly).

The tile counts our kernels report (block_count.count_blocks) against a count written from the causal
geometry: a (query tile, key block) pair holds work when some query i of the tile and key j of the block
have j <= i (every pair without a causal mask), and each kernel computes exactly those pairs unless it skips.
"""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from test_block_count import pairs_with_work  # noqa: E402  (same directory: on sys.path)

from andromeda.model import backends  # noqa: E402
from andromeda.model.backends import TritonTuning  # noqa: E402
from andromeda.model.backends.block_count import count_blocks  # noqa: E402

CASES = [  # heads, nq, nk, causal, forward blocks, backward (dK/dV) blocks
    (2, 40, 40, True, (16, 16), (16, 16)),
    (2, 33, 50, True, (16, 32), (32, 16)),  # queries after a cache, unequal blocks
    (3, 20, 20, False, (16, 16), (16, 32)),
]


@pytest.mark.parametrize("case", CASES)
def test_tiles_without_skipping_are_the_pairs_with_work(case, tune):
    h, nq, nk, causal, (fm, fn), (bm, bn) = case
    cfg = {"fwd": dict(BLOCK_M=fm, BLOCK_N=fn, TMA=False), "bwd": dict(BLOCK_M=bm, BLOCK_N=bn, TMA=False)}
    tune(TritonTuning(config_override=cfg))
    g = torch.Generator().manual_seed(nq)
    q = torch.randn(1, h, nq, 16, generator=g).requires_grad_()
    k, v = (torch.randn(1, 1, nk, 16, generator=g).requires_grad_() for _ in range(2))
    with count_blocks() as count:
        out = backends.get("triton")(q, k, v, causal=causal, scale=0.25, alibi_slopes=None)
        out.backward(torch.randn_like(out))
    tiles = count.tiles()
    assert tiles["forward"] == h * pairs_with_work(nq, nk, fm, fn, causal)
    assert tiles["dq"] == h * pairs_with_work(nq, nk, bn, bm, causal)  # the dQ kernel: the dK/dV blocks swapped
    assert tiles["dkdv"] == h * pairs_with_work(nq, nk, bm, bn, causal)
    flops = count.flops()
    assert flops["forward"] == tiles["forward"] * 4 * fm * fn * 16
    assert flops["backward"] == (tiles["dq"] * 6 + tiles["dkdv"] * 8) * bm * bn * 16


def test_counting_changes_no_result(tune):
    tune(TritonTuning(config_override={"fwd": dict(BLOCK_M=16, BLOCK_N=16, TMA=True)}))
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 48, 16, generator=g)
    k, v = torch.randn(1, 1, 48, 16, generator=g), torch.randn(1, 1, 48, 16, generator=g)
    slopes = torch.tensor([0.5, 0.0])
    plain = backends.get("triton")(q, k, v, causal=True, scale=0.25, alibi_slopes=slopes)
    with count_blocks():
        counted = backends.get("triton")(q, k, v, causal=True, scale=0.25, alibi_slopes=slopes)
    assert torch.equal(plain, counted)


def test_skipping_counts_fewer_tiles_but_every_tile_that_matters(tune):
    """Steep ALiBi (slope 4 a position) on unit-norm q and k: a row's weights fall below 2^-40 of its sum
    ~8 keys back. The kernels must report fewer tiles than the causal pairs, and no fewer than the tiles
    holding a weight of 2^-32 of its row's sum or more, found here in float64 from the softmax itself."""
    cfg = dict(BLOCK_M=16, BLOCK_N=16, TMA=False)
    tune(TritonTuning(skip_min_keys=0, config_override={"fwd": cfg, "bwd": cfg}))
    n, d = 256, 16
    g = torch.Generator().manual_seed(5)
    q, k = (torch.nn.functional.normalize(torch.randn(1, h, n, d, generator=g), dim=-1).requires_grad_()
            for h in (2, 1))
    v = torch.randn(1, 1, n, d, generator=g).requires_grad_()
    slopes = torch.tensor([4.0, 4.0])
    with count_blocks() as count:
        out = backends.get("triton")(q, k, v, causal=True, scale=1.0, alibi_slopes=slopes)
        out.backward(torch.randn_like(out))
    tiles = count.tiles()

    pos = torch.arange(n, dtype=torch.float64)
    s = q.detach().double()[0] @ k.detach().double()[0, 0].T  # (2, n, n)
    s = s - 4.0 * (pos[:, None] - pos[None, :])
    s = s.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
    w = torch.softmax(s, dim=-1)
    needed = int((w >= 2.0**-32).view(2, n // 16, 16, n // 16, 16).any(dim=(2, 4)).sum())
    causal = 2 * pairs_with_work(n, n, 16, 16, True)
    for kernel in ("forward", "dq", "dkdv"):
        assert needed <= tiles[kernel] < causal, (kernel, needed, tiles[kernel], causal)


def test_attention_scenario_records_the_tiles_our_kernel_computed():
    """The attention scenario's triton records: computed_flops from the kernel's tiles (no ALiBi here, so no
    skipping: the pairs with work, 16 x 16 interpreter tiles) and actual_tflops over the same median time."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))
    from test_attention_scenario import run_points

    fwd, both = run_points(impl=["triton"], pattern=["dense"], seq_len=[40], causal=[True], batch=2,
                           **{"pass": ["forward", "fwd_bwd"]})
    assert fwd.status == both.status == "ok", (fwd.error, both.error)
    tiles = 2 * 4 * pairs_with_work(40, 40, 16, 16, True)  # batch x heads x pairs, every kernel 16 x 16 here
    per = 2 * 16 * 16 * 16
    assert fwd.metrics["computed_flops"] == tiles * 2 * per
    assert both.metrics["computed_flops"] == tiles * (2 + 3 + 4) * per
    for r in (fwd, both):
        want = r.metrics["computed_flops"] / (r.metrics["latency_ms"] / 1e3) / 1e12
        assert abs(r.metrics["actual_tflops"] - want) <= 1e-9 * want


def test_a_backward_on_another_thread_counts_into_its_forwards_count(tune):
    """On CUDA autograd runs the backward on its own thread, where count_blocks()'s context is not set: the
    backward's tiles must still land in the BlockCount its forward ran under (they did not: an H100 run
    reported 19% of dense causal work for forward+backward, the forward's tiles alone)."""
    import threading

    cfg = dict(BLOCK_M=16, BLOCK_N=16, TMA=False)
    tune(TritonTuning(config_override={"fwd": cfg, "bwd": cfg}))
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 2, 32, 16, generator=g).requires_grad_()
    k, v = (torch.randn(1, 1, 32, 16, generator=g).requires_grad_() for _ in range(2))
    with count_blocks() as count:
        out = backends.get("triton")(q, k, v, causal=True, scale=0.25, alibi_slopes=None)
    worker = threading.Thread(target=lambda: out.backward(torch.ones_like(out)))
    worker.start()
    worker.join()
    pairs = 2 * pairs_with_work(32, 32, 16, 16, True)
    assert count.tiles() == {"forward": pairs, "dq": pairs, "dkdv": pairs}
