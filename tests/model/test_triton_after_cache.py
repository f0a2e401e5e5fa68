"""Queries after a KV cache through the Triton kernel, at every cache length over whole key-block periods.

Regression for a NaN on the default CUDA path: under causal ALiBi with far-key skipping, the forward ran a
query tile's diagonal blocks first, from the first key block that every row of the tile sees whole. When
the tile's first query position plus one was a multiple of BLOCK_N, that row saw no key there, its running
maximum stayed -inf and -inf - (-inf) made the row NaN: any chunk of 2+ tokens (or a decode step) after a
cache of L keys with (L + 1) % BLOCK_N == 0, once the keys reach the skipping threshold (1024).

The reference is written here from the formula, in float64: softmax(q k^T scale - slope (i - j)) v under a
bottom-right causal mask (the queries are the last positions of the keys), and its autograd gradients.
Under the interpreter (CI) the sweep covers every cache length of one whole period of the interpreter's
16-key blocks and the lengths around 64- and 128-key block edges, with the skipping threshold lowered so
short caches take the same path; a tiny model's chunk after caches of 1007 and 1023 tokens runs at the real
threshold. On CUDA the sweep is L = 1000 .. 1100 at the launch settings the GPU picks, kernel and model.
"""


import pytest
import torch
from interp_child import run_interpreter_cases

pytest.importorskip("triton")

CHUNKS = (1, 2, 17, 100)
SLOPES = (0.5, 0.0)  # one ALiBi head (the skipping launch) and one plain head, sharing one KV head


def reference(q, k, v, slopes, scale):
    """float64 attention of the last q.shape[2] positions over all k.shape[2] keys, causal, ALiBi by head."""
    q, k, v = (t.double() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    nq, nk = q.shape[2], k.shape[2]
    i = torch.arange(nk - nq, nk, device=q.device)[:, None]
    j = torch.arange(nk, device=q.device)[None, :]
    s = q @ k.transpose(-1, -2) * scale - slopes.double().view(-1, 1, 1) * (i - j)
    s = s.masked_fill(j > i, float("-inf"))
    return s.softmax(-1) @ v


def after_cache_inputs(cache_len: int, chunk: int, d: int, device, dtype=torch.float32):
    g = torch.Generator(device=device).manual_seed(cache_len * 7 + chunk)
    n = cache_len + chunk
    q = torch.randn(1, 2, chunk, d, generator=g, device=device)
    k, v = (torch.randn(1, 1, n, d, generator=g, device=device) for _ in range(2))
    grad = torch.randn(1, 2, chunk, d, generator=g, device=device)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)], grad.to(dtype), torch.tensor(SLOPES, device=device)


def check_after_cache(cache_len: int, chunk: int, d: int, device, dtype=torch.float32, atol=1e-5,
                      grad_atol=1e-4, backward: bool = True):
    """Forward (and backward) of `chunk` queries after `cache_len` cached keys against the float64 formula."""
    from andromeda.model import backends

    (q, k, v), grad, slopes = after_cache_inputs(cache_len, chunk, d, device, dtype)
    scale = d**-0.5
    out = backends.get("triton")(q, k, v, causal=True, scale=scale, alibi_slopes=slopes)
    ref = reference(q, k, v, slopes, scale)
    where = f"cache {cache_len}, chunk {chunk}"
    assert out.isfinite().all(), f"{where}: non-finite output"
    torch.testing.assert_close(out.double(), ref, rtol=atol, atol=atol, msg=lambda m: f"{where}, out: {m}")
    if not backward:
        return
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad.double())
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=grad_atol, atol=grad_atol,
                                   msg=lambda m, name=name: f"{where}, d{name}: {m}")


def model_after_cache(cache_len: int, chunk: int, device, dtype=torch.float32):
    """A tiny model (ALiBi on 2 of 4 heads) prefilled with `cache_len` tokens through SDPA, then a `chunk`-token
    chunk through the Triton backend; returns its logits and SDPA's for the same positions without a cache."""
    from andromeda.model import Andromeda, from_name

    torch.manual_seed(0)
    cfg = dict(max_seq_len=cache_len + chunk)
    sdpa = Andromeda(from_name("tiny", attn_backend="sdpa", **cfg)).to(device=device, dtype=dtype).eval()
    tri = Andromeda(from_name("tiny", attn_backend="triton", **cfg)).to(device=device, dtype=dtype).eval()
    tri.load_state_dict(sdpa.state_dict())
    g = torch.Generator().manual_seed(cache_len)
    tokens = torch.randint(0, sdpa.cfg.num_tokens, (1, cache_len + chunk), generator=g).to(device)
    with torch.no_grad():
        want = sdpa(tokens)[:, cache_len:]
        cache = sdpa.new_cache(1, cache_len + chunk, dtype=dtype)
        sdpa(tokens[:, :cache_len], cache=cache)
        got = tri(tokens[:, cache_len:], cache=cache)
    return got, want


def test_after_cache_sweep_in_interpreter():
    run_interpreter_cases("interp_after_cache_cases.py", len(CHUNKS) + 2, timeout=900)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol,grad_atol", [(torch.float32, 2e-5, 2e-4), (torch.bfloat16, 2e-2, 6e-2)])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_after_cache_sweep_on_cuda(chunk, dtype, atol, grad_atol):
    """Every cache length from 1000 to 1100 (across the 1024-key skipping threshold and the 64- and 128-key
    block edges at 1023 and 1087), head dim 128 as in the 1B and 2.5B presets."""
    for cache_len in range(1000, 1101):
        check_after_cache(cache_len, chunk, 128, "cuda", dtype, atol, grad_atol)


@pytest.mark.cuda
def test_model_chunk_after_cache_on_cuda():
    """The audit's reproducer on the GPU: a 20-token chunk after every cache length from 1000 to 1100."""
    for cache_len in range(1000, 1101):
        got, want = model_after_cache(cache_len, 20, "cuda")
        assert got.isfinite().all(), cache_len
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, n=cache_len: f"cache {n}: {m}")
