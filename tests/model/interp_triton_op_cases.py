"""Run by tests/model/test_triton_op.py in a child pytest with TRITON_INTERPRET=1 (not collected directly).

The custom ops andromeda::flash_attention_fwd / _bwd (backends/triton_op.py): torch.library.opcheck, forward and
gradients against float64 attention written from the formula, torch.compile without a graph break, and a block
compiled with selective checkpointing (the attention output saved, not recomputed).
"""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from interp_child import KeepGraphs  # noqa: E402
from reference64 import alibi_slopes  # noqa: E402  (same directory: on sys.path)
from test_block_count import pairs_with_work  # noqa: E402

from andromeda.model import Andromeda, backends, from_name, lm_loss  # noqa: E402
from andromeda.model.backends import TritonTuning, triton_op  # noqa: E402
from andromeda.model.backends.block_count import count_blocks  # noqa: E402

F64 = torch.float64
TILES16 = dict(BLOCK_M=16, BLOCK_N=16, TMA=False)


def attention64(q, k, v, slopes, causal: bool, scale: float) -> torch.Tensor:
    """softmax(scale q k^T - slope_h * dist(i, j), masked) v in float64, from the formula: queries are the last Nq
    of Nk positions; dist = i - j (|i - j| when not causal); causal masks j > i; KV head i // (H / H_kv)."""
    q, k, v = (t.to(F64) for t in (q, k, v))
    h, nq, nk = q.shape[1], q.shape[2], k.shape[2]
    k, v = (t.repeat_interleave(h // t.shape[1], dim=1) for t in (k, v))  # (B, H, Nk, D)
    i = torch.arange(nk - nq, nk, dtype=F64)[:, None]
    j = torch.arange(nk, dtype=F64)[None, :]
    s = scale * q @ k.transpose(-1, -2)  # (B, H, Nq, Nk)
    if slopes is not None:
        s = s - slopes.to(F64)[:, None, None] * ((i - j) if causal else (i - j).abs())
    if causal:
        s = s.masked_fill(j > i, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def _inputs(h, hkv, nq, nk, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, h, nq, d, generator=g, dtype=dtype)
    k, v = (torch.randn(2, hkv, nk, d, generator=g, dtype=dtype) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, v)]


def _slopes(h: int, alibi_heads: int) -> torch.Tensor | None:
    """Press et al.'s slopes on the first alibi_heads heads (the model's layout), zeros on the rest."""
    if not alibi_heads:
        return None
    return torch.tensor(alibi_slopes(alibi_heads) + [0.0] * (h - alibi_heads), dtype=torch.float32)


CASES = [  # heads, kv heads, nq, nk, head dim, causal, ALiBi heads (the first ones)
    (4, 2, 24, 24, 16, True, 2),  # GQA, ALiBi on half the heads: two launches a kernel
    (2, 1, 9, 30, 16, True, 2),  # queries after a cache (bottom-right causal), MQA
    (2, 2, 20, 20, 32, False, 1),  # non-causal: symmetric ALiBi
    (2, 1, 17, 17, 16, True, 0),  # no ALiBi (slopes None)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "h{}kv{}-{}x{}-d{}-{}-alibi{}".format(*c))
def test_forward_and_gradients_equal_float64_attention(case, tune):
    h, hkv, nq, nk, d, causal, na = case
    tune(TritonTuning(config_override={"fwd": TILES16, "bwd": TILES16}))
    q, k, v = _inputs(h, hkv, nq, nk, d, seed=nq + nk)
    slopes, scale = _slopes(h, na), d**-0.5
    out, lse = triton_op.flash_attention_fwd(q, k, v, slopes, None, None, causal, scale)
    q64, k64, v64 = (t.detach().to(F64).requires_grad_() for t in (q, k, v))
    ref = attention64(q64, k64, v64, slopes, causal, scale)
    assert out.shape == q.shape and out.dtype == torch.float32 and lse.shape == (2, h, nq) and not lse.requires_grad
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    got = torch.autograd.grad(out, (q, k, v), grad.float())
    want = torch.autograd.grad(ref, (q64, k64, v64), grad)
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")


def test_the_log_sum_exp_is_base_2_of_the_scores():
    q, k, v = _inputs(2, 1, 16, 16, 16, seed=3)
    slopes = _slopes(2, 1)
    _, lse = triton_op.flash_attention_fwd(q, k, v, slopes, None, None, True, 0.25)
    pos = torch.arange(16, dtype=F64)
    s = 0.25 * q.double() @ k.double().transpose(-1, -2) - slopes.double()[:, None, None] * (pos[:, None] - pos)
    s = s.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1) / torch.log(torch.tensor(2.0, dtype=F64)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_norms", [False, True])
def test_opcheck(with_norms, tune):
    """Schema, fake-tensor shapes, the autograd registration and AOT dispatch (torch.library.opcheck); with
    score norms and far-key skipping on (skip_min_keys=0), the Tensor? arguments all given."""
    tune(TritonTuning(skip_min_keys=0, config_override={"fwd": TILES16, "bwd": TILES16}))
    q, k, v = _inputs(2, 1, 16, 16, 16, seed=5)
    slopes = _slopes(2, 2)
    qn, kn = (q.detach().norm(dim=-1), k.detach().norm(dim=-1)) if with_norms else (None, None)
    torch.library.opcheck(triton_op.flash_attention_fwd, (q, k, v, slopes, qn, kn, True, 0.25))
    out, lse = triton_op.flash_attention_fwd(q, k, v, slopes, qn, kn, True, 0.25)
    dout = torch.randn_like(out)
    args = (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, slopes, qn, kn, True, 0.25)
    torch.library.opcheck(triton_op.flash_attention_bwd, args)


def test_compiled_call_is_one_graph_and_gives_the_eager_result(tune):
    """fullgraph=True raises on a graph break; the graph holds the op as one node, and forward and gradients
    equal the eager call's."""
    tune(TritonTuning(config_override={"fwd": TILES16, "bwd": TILES16}))
    q, k, v = _inputs(4, 1, 20, 20, 16, seed=7)
    slopes = _slopes(4, 2)
    attn = backends.get("triton")

    def f(q, k, v, slopes):  # non-contiguous inputs, and work around the call for the graph to hold
        q = q.transpose(1, 2).contiguous().transpose(1, 2) * 1.5
        norms = (q.norm(dim=-1), k.norm(dim=-1))
        return attn(q, k, v, causal=True, scale=0.25, alibi_slopes=slopes, norms=norms).sin()

    torch._dynamo.reset()
    backend = KeepGraphs()
    compiled = torch.compile(f, backend=backend, fullgraph=True)
    got = compiled(q, k, v, slopes)
    want = f(q, k, v, slopes)
    assert len(backend.graphs) == 1
    targets = [n.target for n in backend.graphs[0].graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.andromeda.flash_attention_fwd.default) == 1, targets
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _model(seed=0):
    """andromeda:tiny (MQA, ALiBi on 2 of 4 heads, xPos with score norms, QK-norm), one block, on the kernel."""
    torch.manual_seed(seed)
    return Andromeda(from_name("tiny", attn_backend="triton", depth=1))


def _step(model, tokens):
    """Forward + backward; (loss, parameter gradients, the kernels' tile counts)."""
    model.zero_grad(set_to_none=True)
    with count_blocks() as count:
        loss = lm_loss(model(tokens), tokens)
        loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, count.tiles()


@pytest.mark.parametrize("compile", [True, False])
def test_selective_checkpointing_keeps_the_attention_output(compile, tune):
    """A block compiled whole (fullgraph, no refusal) with selective checkpointing: gradients equal the
    uncompiled block's up to float32 rounding, and the forward kernel runs once per block (its output saved:
    the policy recomputes no attention), where full checkpointing runs it twice. Eager blocks the same."""
    from andromeda.train.regional import BlockWrappers

    tune(TritonTuning(config_override={"fwd": TILES16, "bwd": TILES16}))
    tokens = torch.randint(0, 320, (1, 24), generator=torch.Generator().manual_seed(0))
    model = _model()
    loss0, grads0, _ = _step(model, tokens)
    pairs = 4 * pairs_with_work(24, 24, 16, 16, True)  # heads x (query tile, key block) pairs with work
    torch._dynamo.reset()
    for mode, forwards in (("selective", 1), ("full", 2)):
        w = BlockWrappers(model, compile=compile, checkpointing=mode, backend="aot_eager")
        assert w.info.get("fullgraph", True) is True
        loss, grads, tiles = _step(model, tokens)
        w.undo()
        assert tiles == {"forward": forwards * pairs, "dq": pairs, "dkdv": pairs}, mode
        torch.testing.assert_close(loss, loss0, rtol=1e-6, atol=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(g, grads0[name], rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")


def test_selective_checkpointing_adds_no_hardware_flops_with_the_kernel():
    from andromeda.measure.facts import facts_from_config
    from andromeda.train import TrainConfig, Trainer

    model = _model()
    cfg = TrainConfig(steps=1, batch=1, seq_len=24, warmup_steps=0, checkpointing="selective")
    t = Trainer(model, cfg, lambda pos: torch.zeros(1, 24, dtype=torch.long), facts=facts_from_config(model.cfg))
    assert t.hardware_flops_per_step == t.flops_per_step
