"""The fused, chunked LM head + cross-entropy against the unfused computation in float64: loss and gradients of
the hidden states and the head weight, with ignored rows, uneven chunks, tied weights, bf16 and autocast."""

import math

import pytest
import torch
import torch.nn.functional as F

from andromeda.errors import ConfigError, UnsupportedError
from andromeda.model import Andromeda, from_name
from andromeda.train.fused_ce import fused_lm_loss, linear_cross_entropy, next_token_labels

IGNORE = -100


def _inputs(t=37, d=16, v=50, seed=0, ignore_every=5):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(t, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * 0.5
    y = torch.randint(0, v, (t,), generator=g)
    if ignore_every:
        y[::ignore_every] = IGNORE
    return h, w, y


def _next_token_ce64(logits, tokens):
    """float64 next-token cross-entropy (lm_loss's definition without its float32 cast)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def _reference(h, w, y):
    """float64: full logits, F.cross_entropy; (loss, grad h, grad w)."""
    h64 = h.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    loss = F.cross_entropy(h64 @ w64.T, y, ignore_index=IGNORE)
    loss.backward()
    return loss.detach(), h64.grad, w64.grad


def _fused(h, w, y, **kw):
    h = h.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    loss = linear_cross_entropy(h, w, y, ignore_index=IGNORE, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_rows", [1, 8, 10, 37, 4096])  # one row, uneven (37 = 3 x 10 + 7), one chunk
def test_float64_equals_the_unfused_float64_reference(chunk_rows):
    h, w, y = _inputs()
    ref = _reference(h, w, y)
    got = _fused(h, w, y, chunk_rows=chunk_rows)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_float32_inputs_match_float64_to_float32_rounding():
    h, w, y = _inputs(t=64, d=32, v=300)
    ref = _reference(h, w, y)
    got = _fused(h.float(), w.float(), y, chunk_rows=24)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.float32
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-7)


def test_bf16_inputs_match_the_unfused_bf16_step():
    """bf16: the logits are rounded to bf16 as the unfused head's are, the log-sum-exp is float32; the unfused
    step (F.linear in bf16, .float(), F.cross_entropy) is the reference here, float64 a looser one."""
    h, w, y = _inputs(t=96, d=64, v=500, seed=1)
    hb, wb = h.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()
    ref_loss = F.cross_entropy(F.linear(hb, wb).float(), y, ignore_index=IGNORE)
    ref_loss.backward()
    loss, gh, gw = _fused(h.bfloat16(), w.bfloat16(), y, chunk_rows=40)
    assert loss.dtype == torch.float32 and gh.dtype == gw.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh.float(), hb.grad.float(), rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(gw.float(), wb.grad.float(), rtol=2e-2, atol=1e-4)
    loss64, gh64, gw64 = _reference(h.bfloat16(), w.bfloat16(), y)  # the bf16 values, in float64
    assert abs(loss.item() - loss64.item()) < 2e-2 * abs(loss64.item())
    assert (gh.double() - gh64).norm() < 2e-2 * gh64.norm() and (gw.double() - gw64).norm() < 2e-2 * gw64.norm()


def test_tied_weights_add_both_gradients():
    """The head weight is the embedding table: the hidden states come from it, so its gradient is the head's
    plus the embedding's, as in the unfused float64 computation."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(40, 8, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 40, (3, 11), generator=g)
    mix = torch.randn(8, 8, generator=g, dtype=torch.float64)
    labels = next_token_labels(tokens, IGNORE)

    def run(fused: bool):
        w = table.clone().requires_grad_()
        hidden = torch.tanh(F.embedding(tokens, w) @ mix)  # (B, N, dim)
        if fused:
            loss = linear_cross_entropy(hidden, w, labels, ignore_index=IGNORE, chunk_rows=7)
        else:
            loss = F.cross_entropy((hidden @ w.T).flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        loss.backward()
        return loss.detach(), w.grad

    (a, ga), (b, gb) = run(True), run(False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)


def test_autocast_casts_like_nn_linear():
    h, w, y = _inputs(t=48, d=32, v=200, seed=4)
    h32, w32 = h.float().requires_grad_(), w.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h32, w32, y, ignore_index=IGNORE, chunk_rows=16)
    loss.backward()
    assert h32.grad.dtype == w32.grad.dtype == torch.float32  # through the casts, as autocast's linear
    loss_ref, gh, gw = _fused(h.bfloat16(), w.bfloat16(), y, chunk_rows=16)
    torch.testing.assert_close(loss.detach(), loss_ref)
    torch.testing.assert_close(h32.grad, gh.float())
    torch.testing.assert_close(w32.grad, gw.float())


def test_every_row_ignored_is_nan_like_f_cross_entropy_with_zero_gradients():
    h, w, y = _inputs(t=6)
    y[:] = IGNORE
    loss, gh, gw = _fused(h, w, y, chunk_rows=4)
    assert math.isnan(loss.item()) and math.isnan(F.cross_entropy(h @ w.T, y, ignore_index=IGNORE).item())
    assert not gh.any() and not gw.any()


def test_no_grad_forward_and_scaled_backward():
    h, w, y = _inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, y, ignore_index=IGNORE, chunk_rows=9)
    ref = _reference(h, w, y)
    torch.testing.assert_close(loss, ref[0], rtol=1e-12, atol=0)
    hh = h.clone().requires_grad_()
    (3.0 * linear_cross_entropy(hh, w, y, ignore_index=IGNORE, chunk_rows=9)).backward()  # grad_output 3
    torch.testing.assert_close(hh.grad, 3.0 * ref[1], rtol=1e-12, atol=1e-15)


def test_compiled_chunks_trace_and_agree():
    """torch.compile traces the per-chunk work (aot_eager: the traced graph, run by torch's kernels)."""
    h, w, y = _inputs(t=40, d=16, v=64)
    ref = _fused(h.float(), w.float(), y, chunk_rows=16)
    got = _fused(h.float(), w.float(), y, chunk_rows=16, compiled=True, backend="aot_eager")
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_shapes_are_checked():
    h, w, y = _inputs()
    with pytest.raises(ConfigError, match="do not fit"):
        linear_cross_entropy(h, w[:, :3], y)
    with pytest.raises(ConfigError, match="chunk_rows"):
        linear_cross_entropy(h, w, y, chunk_rows=0)


@pytest.mark.parametrize("tie", [False, True])
def test_fused_lm_loss_of_andromeda_equals_lm_loss(tie):
    torch.manual_seed(0)
    model = Andromeda(from_name("tiny", tie_embeddings=tie)).double()
    tokens = torch.randint(0, 320, (2, 13))
    ref = _next_token_ce64(model(tokens), tokens)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = fused_lm_loss(model, tokens, chunk_rows=5)
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-9, atol=1e-13, msg=n)


def test_fused_lm_loss_of_a_transformers_llama_equals_its_loss():
    pytest.importorskip("transformers")
    from andromeda.sources.models import build

    model = build("hf:matched:tiny?max_seq_len=32", torch.device("cpu"), torch.float64).model
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    ref = _next_token_ce64(model(input_ids=tokens, use_cache=False).logits, tokens)
    torch.testing.assert_close(fused_lm_loss(model, tokens, chunk_rows=4), ref, rtol=1e-12, atol=0)


def test_a_head_with_a_bias_is_refused():
    model = Andromeda(from_name("tiny"))
    model.head = torch.nn.Linear(64, 320, bias=True)
    with pytest.raises(UnsupportedError, match="bias"):
        fused_lm_loss(model, torch.randint(0, 320, (1, 4)))
