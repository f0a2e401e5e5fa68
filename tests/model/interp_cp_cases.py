"""Run by tests/model/test_context_parallel.py in a child pytest with TRITON_INTERPRET=1 (not collected)."""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from andromeda.model import Andromeda, from_name  # noqa: E402
from andromeda.model.backends import TritonTuning  # noqa: E402
from andromeda.model.backends.block_count import count_blocks  # noqa: E402
from andromeda.model.context_parallel import prefill  # noqa: E402


def test_both_chunks_in_one_call_with_skipping_triton_kernels(tune, tmp_path):
    """One process holds both chunks of a world of 1 (one call a block: two runs of queries, each with its own
    key range, xPos and slices of the q and key norms). With our Triton kernels skipping far ALiBi keys (at any
    length here, on 16-key tiles), the logits and cache equal the forward's through a KV cache in the same two
    chunks, blocks were skipped, and exactly the same ones (the skip bound reads each run's own norms)."""
    cfg = dict(BLOCK_M=16, BLOCK_N=16, TMA=False)
    tune(TritonTuning(skip_min_keys=0, config_override={"fwd": cfg, "bwd": cfg}))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        m = Andromeda(from_name("tiny", xpos_scale_base=2, max_seq_len=1024, attn_backend="triton")).eval()
        with torch.no_grad():
            for blk in m.blocks:  # steep slopes, so that far keys fall under the skip bound at this length
                blk.attn.q_norm.gain.uniform_(0.5, 1.5)
                blk.attn.k_norm.gain.uniform_(0.5, 1.5)
            m.alibi_slopes.mul_(8.0)
        n = 200
        tokens = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(1))
        cache = m.new_cache(1, n)
        with count_blocks() as counted:
            pieces = prefill(m, tokens, cache=cache, logits="all")
        ref_cache = m.new_cache(1, n)
        with torch.no_grad(), count_blocks() as chunked:  # the same two calls a layer, through a KV cache
            want = torch.cat([m(tokens[:, :100], cache=ref_cache), m(tokens[:, 100:], cache=ref_cache)], dim=1)
        tune(TritonTuning(skip_far=False, config_override={"fwd": cfg, "bwd": cfg}))
        with count_blocks() as dense:
            prefill(m, tokens, logits="none")
    finally:
        dist.destroy_process_group()
    assert [(a, b) for a, b, _ in pieces] == [(0, 100), (100, 200)]
    for a, b, logits in pieces:
        torch.testing.assert_close(logits, want[:, a:b], rtol=1e-4, atol=1e-4)
    for layer in range(m.cfg.depth):
        scale = ref_cache.k[layer].abs().max()
        assert (cache.k[layer] - ref_cache.k[layer]).abs().max() <= 1e-5 * scale
        torch.testing.assert_close(cache.v[layer], ref_cache.v[layer], rtol=1e-5, atol=1e-5)
    assert 0 < counted.tiles()["forward"] < dense.tiles()["forward"]  # the ALiBi heads skipped far key blocks
    assert counted.tiles() == chunked.tiles()  # each run's queries took their own norms and keys
