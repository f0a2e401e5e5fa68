"""GPU-only checks of the fast training step (skipped without CUDA): the fused LM head + loss in bf16 against
the unfused step, the fast step (bf16 weights, fused AdamW, compiled blocks over our attention kernel, fused
loss, selective checkpointing) against float32, and no host synchronization inside a queued step."""

import pytest
import torch
import torch.nn.functional as F

from andromeda.model import Andromeda, from_name
from andromeda.train import TrainConfig, Trainer
from andromeda.train.fused_ce import linear_cross_entropy

pytestmark = pytest.mark.cuda


def test_fused_loss_in_bf16_on_cuda_matches_the_unfused_step():
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(3000, 256, device="cuda", generator=g).bfloat16().requires_grad_()
    w = (torch.randn(5000, 256, device="cuda", generator=g) * 0.05).bfloat16().requires_grad_()
    y = torch.randint(0, 5000, (3000,), device="cuda", generator=g)
    y[::7] = -100
    ref = F.cross_entropy(F.linear(h, w).float(), y)
    gh, gw = torch.autograd.grad(ref, (h, w))
    loss = linear_cross_entropy(h, w, y, chunk_rows=1024)
    fh, fw = torch.autograd.grad(loss, (h, w))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert ((fh.float() - gh.float()).norm() / gh.float().norm()).item() < 1e-2
    assert ((fw.float() - gw.float()).norm() / gw.float().norm()).item() < 1e-2


def _pool(n=4):
    g = torch.Generator(device="cuda").manual_seed(1)
    return [torch.randint(0, 320, (4, 128), device="cuda", generator=g) for _ in range(n)]


def _run(pool, **kw):
    torch.manual_seed(0)
    model = Andromeda(from_name("tiny")).cuda()
    cfg = TrainConfig(steps=6, batch=4, seq_len=128, warmup_steps=2, lr=1e-3, log_every=3, eval_every=0, **kw)
    return Trainer(model, cfg, lambda pos: pool[pos % len(pool)], device="cuda").run()


@pytest.mark.parametrize("checkpointing", ["none", "selective", "full"])
def test_the_fast_step_tracks_float32_on_cuda(checkpointing):
    pool = _pool()
    ref = _run(pool)
    fast = _run(pool, precision="bf16-master", fused_adamw=True, compile="blocks", fused_ce=True,
                checkpointing=checkpointing, health_every=2)
    a, b = [h["loss"] for h in ref.history], [h["loss"] for h in fast.history]
    assert all(abs(x - y) < 2e-2 * x for x, y in zip(a, b, strict=True)), (a, b)
    assert all(h["step_ms"] > 0 and h["peak_allocated_mib"] > 0 for h in fast.history)


def test_a_queued_step_does_not_synchronize_the_gpu():
    pool = _pool()
    torch.manual_seed(0)
    model = Andromeda(from_name("tiny")).cuda()
    cfg = TrainConfig(steps=8, batch=4, seq_len=128, precision="bf16-master", fused_adamw=True, fused_ce=True,
                      health_every=1, eval_every=0)
    t = Trainer(model, cfg, lambda pos: pool[pos % len(pool)], device="cuda")
    with t.wrapped():
        t.run_step()  # first calls: kernel selection and compilation may synchronize
        t.collect()
        torch.cuda.set_sync_debug_mode("error")
        try:
            t.run_step()
            t.run_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    recs = t.collect()
    assert [r["step"] for r in recs] == [2, 3] and "activations" in recs[0]
