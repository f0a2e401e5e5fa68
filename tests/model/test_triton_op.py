"""Our Triton attention as the custom ops andromeda::flash_attention_fwd / _bwd (backends/triton_op.py).

The kernels run under the Triton interpreter on CPU in a child pytest started with TRITON_INTERPRET=1
(tests/model/interp_triton_op_cases.py): opcheck, float64 parity of forward and gradients, torch.compile without a
graph break, a block compiled with selective checkpointing. On CUDA, when present: a compiled block (inductor, one
graph) against the eager block.
"""

import pytest
import torch
from interp_child import run_interpreter_cases

from andromeda.model.backends import triton_op

pytest.importorskip("triton")


def test_the_op_in_the_interpreter():
    run_interpreter_cases("interp_triton_op_cases.py", 11)


def test_schemas_take_flat_arguments_and_optional_tensors():
    fwd = str(torch.ops.andromeda.flash_attention_fwd.default._schema)
    bwd = str(torch.ops.andromeda.flash_attention_bwd.default._schema)
    assert fwd == ("andromeda::flash_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? slopes, Tensor? qn, "
                   "Tensor? kn, bool causal, float scale) -> (Tensor, Tensor)")
    assert bwd == ("andromeda::flash_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
                   "Tensor? slopes, Tensor? qn, Tensor? kn, bool causal, float scale) -> (Tensor, Tensor, Tensor)")


def test_fake_shapes_without_running_a_kernel():
    """Under fake tensors (what torch.compile traces with) the ops give their outputs' shapes, contiguous, from
    non-contiguous inputs; nothing launches."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 5, 4, 16).transpose(1, 2)  # (B, H, N, D) = (2, 4, 5, 16), not contiguous
        k = v = torch.empty(2, 1, 7, 16)
        out, lse = triton_op.flash_attention_fwd(q, k, v, None, None, None, True, 0.25)
        assert out.shape == q.shape and out.is_contiguous() and lse.shape == (2, 4, 5) and lse.dtype == torch.float32
        dq, dk, dv = triton_op.flash_attention_bwd(out, q, k, v, out, lse, None, None, None, True, 0.25)
        assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape) and dq.is_contiguous()


def test_selective_checkpointing_saves_the_ops_output():
    from torch.utils.checkpoint import CheckpointPolicy

    from andromeda.train import regional

    assert regional._policy(None, torch.ops.andromeda.flash_attention_fwd.default) is CheckpointPolicy.MUST_SAVE
    assert regional._policy(None, torch.ops.aten.gelu.default) is CheckpointPolicy.PREFER_RECOMPUTE
    assert "triton" in regional.ATTENTION_SAVED_BY_POLICY and "triton" in regional.TRACEABLE_ATTENTION


@pytest.mark.cuda
@pytest.mark.parametrize("checkpointing", ["none", "selective"])
def test_compiled_block_on_cuda_is_one_graph_and_matches_eager(checkpointing):
    """bf16 andromeda:tiny-shaped blocks (head dim 64) at 512 tokens with inductor: one graph per block shape,
    no refusal of selective checkpointing, the loss and gradients of the eager blocks (bf16 rounding), and the
    forward kernel's tiles counted once (selective checkpointing keeps its output)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from andromeda.model import Andromeda, from_name, lm_loss
    from andromeda.model.backends.block_count import count_blocks
    from andromeda.train.regional import BlockWrappers

    def model():
        torch.manual_seed(0)
        cfg = from_name("tiny", attn_backend="triton", dim=256, heads=4, dim_head=64, depth=2, max_seq_len=512)
        return Andromeda(cfg).to("cuda", torch.bfloat16)

    def step(m):
        tokens = torch.randint(0, 320, (2, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        with count_blocks() as count:
            loss = lm_loss(m(tokens), tokens)
            loss.backward()
        return loss.float(), {n: p.grad.float() for n, p in m.named_parameters()}, count.tiles()

    loss0, grads0, tiles0 = step(model())
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    m = model()
    w = BlockWrappers(m, compile=True, checkpointing=checkpointing, backend=counter)
    loss, grads, tiles = step(m)
    assert w.info["fullgraph"] is True and counter.frame_count == 1  # both blocks: one graph, no break
    assert tiles["forward"] == tiles0["forward"]  # not recomputed under selective checkpointing
    torch.testing.assert_close(loss, loss0, rtol=2e-2, atol=2e-2)
    for name, g in grads.items():
        rel = ((g - grads0[name]).norm() / grads0[name].norm().clamp_min(1e-6)).item()
        assert rel < 5e-2, (name, rel)


@pytest.mark.cuda
def test_opcheck_on_cuda():
    q = torch.randn(1, 4, 256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, 1, 256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    slopes = torch.tensor([0.5, 0.25, 0.0, 0.0], device="cuda")
    torch.library.opcheck(triton_op.flash_attention_fwd, (q, k, v, slopes, None, None, True, 0.125))
