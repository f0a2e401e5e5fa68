"""Context-parallel prefill (model/context_parallel.py) over 2 and 3 gloo processes on the CPU: each rank's
logits, and the KV cache and token-shift state every rank ends with, equal the single-process forward's, with
ALiBi, xPos over several anchor blocks (scale base 2: 64 positions a block), token shift across chunk edges,
QK-norm and MQA, on splits that are uneven; decoding then continues from the filled cache."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from interp_child import run_interpreter_cases

from andromeda.errors import ConfigError
from andromeda.model import Andromeda, from_name
from andromeda.model.context_parallel import layout


def _model():
    torch.manual_seed(0)
    m = Andromeda(from_name("tiny", xpos_scale_base=2, max_seq_len=4096, attn_backend="sdpa")).eval()
    with torch.no_grad():  # gains away from 1, so QK-norm's dim scale counts
        for blk in m.blocks:
            blk.attn.q_norm.gain.uniform_(0.5, 1.5)
            blk.attn.k_norm.gain.uniform_(0.5, 1.5)
    return m


def _worker(rank, world, path, n, out):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    from andromeda.model.context_parallel import prefill

    torch.set_num_threads(1)
    m = _model()
    tokens = torch.randint(0, 256, (2, n), generator=torch.Generator().manual_seed(1))
    cache = m.new_cache(2, n + 1)
    pieces = prefill(m, tokens, cache=cache, logits="all")
    step = m(tokens[:, :1], cache=cache)  # one decode step after the prefill
    torch.save({"pieces": pieces, "k": cache.k, "v": cache.v, "step": step,
                "shift": {key: cache.shift_state(*key) for key in [(0, "attn"), (1, "ff")]}},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _close(got, want, tol=1e-5):
    """Within tol of the largest |want| (anchored keys span many orders of magnitude at scale base 2)."""
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= tol * want.abs().max().item()


@pytest.mark.parametrize("world,n", [(2, 101), (3, 130)])
def test_sharded_prefill_equals_the_single_process_forward(tmp_path, world, n):
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), n, str(tmp_path)), nprocs=world, join=True)
    m = _model()
    tokens = torch.randint(0, 256, (2, n), generator=torch.Generator().manual_seed(1))
    cache = m.new_cache(2, n + 1)
    with torch.no_grad():
        want = m(tokens, cache=cache)
        step = m(tokens[:, :1], cache=cache)
    covered = 0
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        for a, b, logits in got["pieces"]:
            _close(logits, want[:, a:b])
            covered += b - a
        for layer in range(m.cfg.depth):
            _close(got["k"][layer], cache.k[layer])
            _close(got["v"][layer], cache.v[layer])
        for key, rows in got["shift"].items():
            _close(rows, cache.shift_state(*key))
        _close(got["step"], step)
    assert covered == n


def test_layout_balances_causal_work_and_refuses_too_few_tokens():
    pieces = layout(130, 3)
    assert [p for r in pieces for p in r] != [] and sorted(p for r in pieces for p in r) == [
        (0, 22), (22, 43), (43, 65), (65, 87), (87, 108), (108, 130)]
    # each rank's causal pairs (sum over its positions of position + 1) within 10% of the mean
    work = [sum(sum(range(a + 1, b + 1)) for a, b in r) for r in pieces]
    assert max(work) / min(work) < 1.1
    with pytest.raises(ConfigError, match="2 x 4 chunks"):
        layout(7, 4)


def test_both_chunks_in_one_call_with_our_kernels_in_interpreter():
    """Both chunks of a rank in one block call, through our Triton kernels' skipping path (interp_cp_cases.py)."""
    run_interpreter_cases("interp_cp_cases.py", 1)
