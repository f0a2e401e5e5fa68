"""Run by tests/model/test_triton_after_cache.py in a child pytest with TRITON_INTERPRET=1 (not collected)."""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

import torch  # noqa: E402
from test_triton_after_cache import CHUNKS, check_after_cache, model_after_cache  # noqa: E402

from andromeda.model.backends import TritonTuning  # noqa: E402

# (key block, cache lengths): one whole period of 16-key blocks, and each side of 64- and 128-key block edges
SWEEP = ((16, range(112, 128)), (64, (62, 63, 64, 126, 127, 128)), (128, (126, 127, 128)))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_queries_after_a_cache_at_every_alignment(tune, chunk):
    for block, lengths in SWEEP:
        cfg = dict(BLOCK_M=block, BLOCK_N=block, TMA=False)
        # the skipping path at these short lengths
        tune(TritonTuning(skip_min_keys=0, config_override={"fwd": cfg, "bwd": cfg}))
        for cache_len in lengths:
            # the forward (where the NaN was) at every length, but the 100-query chunk (seven 16-row tiles, each
            # tile's first row at every alignment already in the 17-query chunk) only either side of a block
            # edge; the backward, the interpreter's slow part, there and at one other length (the period's middle)
            edge = (cache_len + 1) % block in (0, 1)
            if chunk < 100 or edge:
                check_after_cache(cache_len, chunk, 16, "cpu", backward=edge or cache_len == 119)


@pytest.mark.parametrize("cache_len", [1007, 1023])
def test_model_chunk_after_a_cache(cache_len):
    """The audit's reproducer at the real skipping threshold: (1007 + 1) and (1023 + 1) are multiples of the
    interpreter's 16-key blocks, and 1024 of the GPU's 64 and 128."""
    got, want = model_after_cache(cache_len, 20, "cpu")
    assert got.isfinite().all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
