"""The attention kernels' tile counts (benchmarks' actual FLOPs): interpreter cases in a child process."""

import pytest
import torch
from interp_child import run_interpreter_cases

from andromeda.model.backends.block_count import BlockCount, count_blocks

pytest.importorskip("triton")


def pairs_with_work(nq: int, nk: int, rows: int, keys: int, causal: bool, by_keys: bool = False) -> int:
    """(query tile of `rows`, key block of `keys`) pairs holding at least one unmasked (i, j), by brute force.
    Queries are the last nq of nk positions. by_keys: tiles are cut from the key side (the dK/dV kernel's key
    blocks of `keys`, its query blocks of `rows`), which gives the same pairs on a different grid."""
    off = nk - nq
    total = 0
    for t0 in range(0, nq, rows):
        q_pos = [off + i for i in range(t0, min(t0 + rows, nq))]
        for n0 in range(0, nk, keys):
            k_pos = range(n0, min(n0 + keys, nk))
            total += any(j <= i or not causal for i in q_pos for j in k_pos)
    return total


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sm90_forward", [True, False])
def test_forward_tiles_on_cuda_without_skipping(tune, sm90_forward):
    """bf16, head dim 128, 1024 tokens, no ALiBi (nothing skipped): the forward's tiles are the (tile, key block)
    pairs holding causal work, for the Hopper kernel's 128-row x 128-key tiles and the Triton kernel's blocks."""
    from andromeda.model import backends
    from andromeda.model.backends import TritonTuning

    cfg = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
    tune(TritonTuning(sm90_forward=sm90_forward, config_override={"fwd": cfg}))
    q, k, v = (torch.randn(1, h, 1024, 128, device="cuda", dtype=torch.bfloat16) for h in (4, 1, 1))
    with count_blocks() as count:
        backends.get("triton")(q, k, v, causal=True, scale=128**-0.5, alibi_slopes=None)
    hopper = sm90_forward and torch.cuda.get_device_capability()[0] == 9
    rows, keys = (128, 128) if hopper else (128, 64)
    assert count.tiles() == {"forward": 4 * pairs_with_work(1024, 1024, rows, keys, True)}
    assert count.flops()["forward"] == count.tiles()["forward"] * 4 * rows * keys * 128


def test_block_counts_in_interpreter():
    run_interpreter_cases("interp_block_count_cases.py", 7)


def test_flops_per_tile_follow_each_kernels_matrix_products():
    """Forward: q k^T and p v (2 products); dQ: q k^T, dO v^T, dS k (3); dK/dV: q k^T, p^T dO, dO v^T, dS^T q (4);
    each product of a (r x d) by (d x k) tile costs 2 r k d."""
    c = BlockCount()
    c.add("forward", 3, 128, 64, 128)
    c.add("dq", torch.tensor(2), 64, 64, 64)
    c.add("dkdv", 5, 32, 64, 64)
    assert c.tiles() == {"forward": 3, "dq": 2, "dkdv": 5}
    assert c.flops() == {"forward": 3 * 2 * 2 * 128 * 64 * 128,
                         "backward": 2 * 3 * 2 * 64 * 64 * 64 + 5 * 4 * 2 * 32 * 64 * 64}


def test_counting_is_scoped():
    from andromeda.model.backends import block_count

    assert block_count.active() is None
    with count_blocks() as outer:
        with count_blocks() as inner:
            assert block_count.active() is inner
        assert block_count.active() is outer
    assert block_count.active() is None
