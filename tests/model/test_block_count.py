"""The attention kernels' tile counts (benchmarks' actual FLOPs): interpreter cases in a child process."""

import pytest
import torch
from interp_child import run_interpreter_cases

from andromeda.model.backends.block_count import BlockCount, count_blocks

pytest.importorskip("triton")


def test_block_counts_in_interpreter():
    run_interpreter_cases("interp_block_count_cases.py", 6)


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
