"""Our Triton flash attention as PyTorch custom operators, so torch.compile traces a call to it as one node of the
graph (no graph break) and activation checkpointing's policies can name its output.

    andromeda::flash_attention_fwd(q, k, v, slopes?, qn?, kn?, causal, scale) -> (out, lse)
    andromeda::flash_attention_bwd(dout, q, k, v, out, lse, slopes?, qn?, kn?, causal, scale) -> (dq, dk, dv)

q (B, H, Nq, D), k and v (B, H_kv, Nk, D); out as q; lse (B, H, Nq) float32, the rows' base-2 log-sum-exp; slopes
(H,) ALiBi slopes or None (no ALiBi); qn (B, H, Nq) and kn (B, H_kv, Nk) the score norms of the skipping bound
(triton_flash.flash_attention's norms=) or None. Outputs are contiguous. This module declares them: schemas, the
shapes under fake tensors (register_fake) and the autograd formula (register_autograd: the forward saves its
inputs, out and lse; the backward op computes dq, dk, dv). The kernels themselves, for CUDA and for CPU (which
runs them only under TRITON_INTERPRET=1), are registered by backends/triton_flash.py, which launches them.

Everything decided from settings or from tensor values is decided inside the ops, when they run, not when a graph
is traced: the launches (head runs, far-key skipping, block sizes, the sm90 forward) follow the active
TritonTuning at each call, and the backward works its launches out again from the same inputs and settings.
`torch.library.custom_op`, not `triton_op` + `wrap_triton`: a wrapped launch must be traceable with fake tensors,
and ours read tensor values and addresses on the host (the ALiBi head prefix, TMA alignment), build TMA
descriptors, launch Gluon and precompiled kernels, and retry smaller tiles when a GPU runs out of shared memory.

Tile counting (block_count.count_blocks): the forward counts into the BlockCount active where it runs; the backward
into the one its forward ran under (autograd may run it on another thread), passed to the backward op through
`backward_count()`. A backward compiled with its forward (torch.compile) counts into the BlockCount active where it
runs.
"""

import contextvars

import torch
from torch import Tensor

from andromeda.model.backends import block_count

_NO_KERNEL = ("{} has kernels for CUDA, and for CPU under TRITON_INTERPRET=1, registered by "
              "andromeda.model.backends.triton_flash; not for {}")


@torch.library.custom_op("andromeda::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(q: Tensor, k: Tensor, v: Tensor, slopes: Tensor | None, qn: Tensor | None,
                        kn: Tensor | None, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """(out, lse): the default for devices without a kernel (triton_flash registers CUDA's and CPU's)."""
    raise NotImplementedError(_NO_KERNEL.format("andromeda::flash_attention_fwd", q.device.type))


@torch.library.custom_op("andromeda::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        slopes: Tensor | None, qn: Tensor | None, kn: Tensor | None, causal: bool,
                        scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv): the default for devices without a kernel (triton_flash registers CUDA's and CPU's)."""
    raise NotImplementedError(_NO_KERNEL.format("andromeda::flash_attention_bwd", q.device.type))


@flash_attention_fwd.register_fake
def _fwd_shapes(q, k, v, slopes, qn, kn, causal, scale):
    b, h, nq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((b, h, nq), dtype=torch.float32)  # (B, H, Nq, D), (B, H, Nq)


@flash_attention_bwd.register_fake
def _bwd_shapes(dout, q, k, v, out, lse, slopes, qn, kn, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_BACKWARD_COUNT: contextvars.ContextVar[block_count.BlockCount | None] = contextvars.ContextVar(
    "andromeda_flash_backward_count", default=None)


def backward_count() -> block_count.BlockCount | None:
    """The BlockCount the running backward op counts into: its forward's (None: the active one, if any)."""
    return _BACKWARD_COUNT.get()


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, slopes, qn, kn, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, slopes, qn, kn)
    ctx.causal, ctx.scale = causal, scale
    ctx.count = block_count.active()  # the backward may run on another thread, outside count_blocks()' context
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, slopes, qn, kn = ctx.saved_tensors
    token = _BACKWARD_COUNT.set(ctx.count)
    # dout usually arrives as the (B, H, N, D) transpose of the output projection's (B, N, H*D) gradient. Made
    # contiguous here, a compiled backward copies it with a generated kernel. Inside the op the eager copy took
    # 10.4 ms of a 2K training step on an H100; the generated copy of the forward's output, the same bytes, 4.0.
    dout = dout.contiguous()
    try:
        dq, dk, dv = flash_attention_bwd(dout, q, k, v, out, lse, slopes, qn, kn, ctx.causal, ctx.scale)
    finally:
        _BACKWARD_COUNT.reset(token)
    return dq, dk, dv, None, None, None, None, None


flash_attention_fwd.register_autograd(_backward, setup_context=_setup_context)

__all__ = ["flash_attention_fwd", "flash_attention_bwd", "backward_count"]
