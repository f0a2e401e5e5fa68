"""Run by tests/model/test_triton.py in a child pytest with TRITON_INTERPRET=1 (not collected directly)."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start of the process", allow_module_level=True)

from test_triton import CASES, INTERP_CONFIGS, check  # noqa: E402  (same directory: on sys.path)

from andromeda.model.backends import TritonTuning, triton_flash  # noqa: E402


@pytest.mark.parametrize("cfg", INTERP_CONFIGS, ids=lambda c: f"{c['BLOCK_M']}x{c['BLOCK_N']}-tma{int(c['TMA'])}")
@pytest.mark.parametrize("case", CASES)
def test_case(case, cfg, tune):
    # the same blocks forward and backward; BLOCK_M != BLOCK_N moves the masked/unmasked span boundaries
    tune(TritonTuning(config_override={"fwd": cfg, "bwd": cfg}))
    check(case, "cpu", torch.float32, 1e-5)


def _skip_at_any_length(tune):
    """Skipping from the first key on, 16 x 16 blocks forward and backward."""
    tune(TritonTuning(skip_min_keys=0, config_override={"fwd": INTERP_CONFIGS[0], "bwd": INTERP_CONFIGS[0]}))


def _unit_norm_case(seed, n=256, d=16):
    """2 query heads, 1 KV head of unit-norm queries and keys (logits within +-1.5 base 2), slope 4 on both."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.nn.functional.normalize(torch.randn(1, h, n, d, generator=g), dim=-1).requires_grad_()
            for h in (2, 1))
    v = torch.randn(1, 1, n, d, generator=g).requires_grad_()
    return q, k, v, torch.tensor([4.0, 4.0]), g


@pytest.mark.parametrize("norms", [False, True])
@pytest.mark.parametrize("nq", [256, 100])
def test_far_key_blocks_skipped_under_steep_alibi(tune, nq, norms):
    """Keys parallel to the queries make the skipping bound nearly tight: logits +-121 against ALiBi's -4 a
    position (base e), so keys up to ~60 positions back matter and the forward skips blocks from ~70 back
    (of 256). The result, forward and backward, must equal eager's; a bound without the key-norm term
    skips keys that count, and fails (checked by editing the kernel). nq = 100: the queries are the last
    100 positions (after a cache; tiles start off the block grid). norms: the bound from given score norms
    (flash_attention's norms=, here |q| and |k| themselves) in the forward and dQ kernels."""
    from andromeda.model import backends

    _skip_at_any_length(tune)
    g = torch.Generator().manual_seed(0)
    n, d = 256, 16
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    q = (11.0 * u + 0.01 * torch.randn(1, 2, nq, d, generator=g)).requires_grad_()
    # runs of 64 keys alternately aligned (+11) and opposed (-11): a row in an opposed run attends mostly to
    # the aligned run before it, up to ~60 positions back
    sign = 1.0 - 2.0 * ((torch.arange(n) // 64) % 2).float()
    k = ((11.0 * sign + 0.01 * torch.randn(n, generator=g)).view(1, 1, n, 1) * u).requires_grad_()
    v = torch.randn(1, 1, n, d, generator=g).requires_grad_()
    slopes = torch.tensor([4.0, 4.0])
    ref = backends.get("eager")(q, k, v, causal=True, scale=1.0, alibi_slopes=slopes)
    kw = dict(norms=(q.norm(dim=-1), k.norm(dim=-1))) if norms else {}
    out = backends.get("triton")(q, k, v, causal=True, scale=1.0, alibi_slopes=slopes, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_far_key_blocks_are_not_read(tune):
    """NaN values in keys 0 .. 15 poison every row that reads them. With unit-norm queries and keys (logits
    within +-1.5 base 2) and slope 4 (5.8 a position, base 2), the threshold 32 + log2(256) = 40 puts the
    cut ~8 keys before each 16-query tile: tiles from query 32 on must skip block 0 and come out finite,
    equal to eager with those values zeroed (their weights are below 2^-40)."""
    from andromeda.model import backends

    _skip_at_any_length(tune)
    q, k, v, slopes, _ = _unit_norm_case(1)
    q, k, v = q.detach(), k.detach(), v.detach()
    poisoned = v.clone()
    poisoned[:, :, :16] = float("nan")
    out = backends.get("triton")(q, k, poisoned, causal=True, scale=1.0, alibi_slopes=slopes)
    assert out[:, :, :16].isnan().all() and out[:, :, 32:].isfinite().all()
    zeroed = v.clone()
    zeroed[:, :, :16] = 0.0
    ref = backends.get("eager")(q, k, zeroed, causal=True, scale=1.0, alibi_slopes=slopes)
    torch.testing.assert_close(out[:, :, 32:], ref[:, :, 32:], rtol=1e-5, atol=1e-6)


def test_far_blocks_are_not_read_in_the_backward(tune):
    """The backward skips as the forward does. NaN output gradients on queries 240 .. 255 poison the dK and
    dV of every key block whose query loop reaches them; with the setup above (probabilities below 2^-40
    from ~8 positions back) key blocks up to 208 must stop short of them and match eager with those rows'
    gradients zeroed. NaN values in keys 0 .. 15 poison dQ of every query tile that reads them: tiles from
    query 32 on must skip them."""
    from andromeda.model import backends

    _skip_at_any_length(tune)
    q, k, v, slopes, g = _unit_norm_case(2)
    grad = torch.randn(1, 2, 256, 16, generator=g)
    poisoned = grad.clone()
    poisoned[:, :, 240:] = float("nan")
    out = backends.get("triton")(q, k, v, causal=True, scale=1.0, alibi_slopes=slopes)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), poisoned)
    vp = v.detach().clone()
    vp[:, :, :16] = float("nan")
    vp.requires_grad_()
    out_p = backends.get("triton")(q, k, vp, causal=True, scale=1.0, alibi_slopes=slopes)
    (dq_p,) = torch.autograd.grad(out_p, (q,), grad)
    assert dk[:, :, :208].isfinite().all() and dv[:, :, :208].isfinite().all()
    assert dk[:, :, 240:].isnan().all() and dq_p[:, :, :16].isnan().all() and dq_p[:, :, 32:].isfinite().all()
    zeroed = grad.clone()
    zeroed[:, :, 240:] = 0.0
    ref = backends.get("eager")(q, k, v, causal=True, scale=1.0, alibi_slopes=slopes)
    _, want_k, want_v = torch.autograd.grad(ref, (q, k, v), zeroed, retain_graph=True)
    torch.testing.assert_close(dk[:, :, :208], want_k[:, :, :208], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dv[:, :, :208], want_v[:, :, :208], rtol=1e-4, atol=1e-5)
    (want_pq,) = torch.autograd.grad(ref, (q,), grad)  # keys 0 .. 15 weigh < 2^-40 for queries 32 on
    torch.testing.assert_close(dq_p[:, :, 32:], want_pq[:, :, 32:], rtol=1e-4, atol=1e-5)


def test_launch_falls_back_when_a_setting_runs_out_of_shared_memory(monkeypatch):
    """A GPU with less shared memory refuses big tiles at launch; the next candidate must run, and be remembered."""
    from triton.runtime.errors import OutOfResources

    real, tried = triton_flash._kernels(), []

    class RefusesBigTiles:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                tried.append((self.name, kwargs["BLOCK_M"]))
                if kwargs["BLOCK_M"] == 32:
                    raise OutOfResources(300_000, 232_448, "shared memory")
                return self.kernel[grid](*args, **kwargs)

            return launch

    def candidates(device, kernel, dtype=torch.bfloat16):
        extra = {"WS": False} if kernel == "fwd" else {}
        return [dict(BLOCK_M=32, BLOCK_N=32, TMA=True, **extra), dict(BLOCK_M=16, BLOCK_N=16, TMA=True, **extra)]

    monkeypatch.setattr(triton_flash, "_kernels",
                        lambda: tuple(RefusesBigTiles(n, k) for n, k in zip(("fwd", "bwd", "dq"), real, strict=True)))
    monkeypatch.setattr(triton_flash, "_candidates", candidates)
    monkeypatch.setattr(triton_flash, "_CHOSEN", {})
    check(CASES[0], "cpu", torch.float32, 1e-5)  # correct results from the fallback blocks
    # ALiBi on 2 of 4 heads: a launch for those and one for the others, each kernel; a refusal stops the first
    # (the dQ kernel runs before dK/dV: it writes the rows' rowsum(dO * O) that dK/dV reads)
    assert tried == [("fwd", 32), ("fwd", 16), ("fwd", 16), ("dq", 32), ("dq", 16), ("dq", 16),
                     ("bwd", 32), ("bwd", 16), ("bwd", 16)]
    d = CASES[0][6]
    assert triton_flash._CHOSEN == {(k, None, torch.float32, d): 1 for k in ("fwd", "bwd", "dq")}
    tried.clear()
    check(CASES[0], "cpu", torch.float32, 1e-5)  # the second call starts at the setting that fitted
    assert tried == [("fwd", 16), ("fwd", 16), ("dq", 16), ("dq", 16), ("bwd", 16), ("bwd", 16)]


def _first_blocks(q, k, slopes, scale, tile, block_n, norms=None):
    """alibi_first_block's LO for every head (all with ALiBi) of q (1, H, NQ, D), the last NQ positions of
    k (1, 1, N, D); `norms`: the (qn (1, H, NQ), kn (1, 1, N)) score norms (flash_attention's), else the kernel
    bounds by |q| and |k|."""
    from andromeda.model.backends import triton_flash_kernels as tk

    h, nq, d, n = q.shape[1], q.shape[2], q.shape[3], k.shape[2]
    tiles = -(-nq // tile)
    knorm = triton_flash._key_norm_prefix_max(k, None if norms is None else norms[1])
    qn = knorm if norms is None else norms[0].float().contiguous()
    lo = torch.full((h, tiles), -1, dtype=torch.int32)
    tk.alibi_first_block[(h, tiles)](
        q, k, slopes, knorm, qn, lo, q.stride(1), q.stride(2), k.stride(1), k.stride(2), h, h, nq, n - nq,
        scale * triton_flash.LOG2E, 0, h, knorm.shape[-1], triton_flash._skip_threshold(n),
        KNB=triton_flash.KNORM_BLOCK, TILE=tile, BLOCK_N=block_n, D=d, HAS_QN=norms is not None)
    return lo


def _skipped_mass(q, k, slopes, scale, lo, tile, block_n):
    """Float64: for each row, the softmax weight of the keys before its tile's first block (causal ALiBi)."""
    qd, kd = q[0].double(), k[0, 0].double()
    n = qd.shape[1]
    i = torch.arange(n)
    dist = (i[:, None] - i[None, :]).double()
    s = (qd @ kd.T) * scale - slopes.double()[:, None, None] * dist
    s = s.masked_fill(dist < 0, float("-inf"))
    w = torch.softmax(s, -1)
    first = lo.long()[:, i // tile] * block_n  # (H, N): each row's first key read
    return (w * (i[None, None, :] < first[:, :, None])).sum(-1)


@pytest.mark.parametrize("n", [256, 250])
def test_alibi_first_block_skips_only_what_does_not_count(n):
    """The Hopper forward's skip bounds (taken before any block runs, from each row's own score): keys before
    a tile's first block weigh under 2^-32 of every row's softmax sum (float64 reference), no tile starts
    past its diagonal blocks, and under steep slopes most far blocks are skipped. Two inputs: unit-norm
    random (the bound is loose: skipping is plentiful) and the aligned/opposed key runs of the test above
    (rows whose own key opposes them score -121: their bound is far below their true maximum). n = 250: the
    last tile has rows past the end."""
    tile, block_n = 32, 16
    q, k, _, slopes, g = _unit_norm_case(1, n=n)
    q, k = q.detach(), k.detach()
    lo = _first_blocks(q, k, slopes, 1.0, tile, block_n)
    assert (lo >= 0).all() and (lo * block_n <= torch.arange(lo.shape[1]) * tile).all()
    assert _skipped_mass(q, k, slopes, 1.0, lo, tile, block_n).max() < 2.0**-32
    assert lo[:, -1].min() * block_n >= n - 64  # slope 4 on logits within +-1.5: ~12 keys back matter

    d = 16
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    q = 11.0 * u + 0.01 * torch.randn(1, 2, n, d, generator=g)
    sign = 1.0 - 2.0 * ((torch.arange(n) // 64) % 2).float()
    k = (11.0 * sign + 0.01 * torch.randn(n, generator=g)).view(1, 1, n, 1) * u
    lo = _first_blocks(q, k, slopes, 1.0, tile, block_n)
    assert _skipped_mass(q, k, slopes, 1.0, lo, tile, block_n).max() < 2.0**-32
    assert (lo > 0).any()


def _bound_holds(q, k, norms, scale):
    """Float64: |s_ij| <= 1.01 c qn_i kn_j for every causal pair (the bound `_reach` states), s from the
    scaled q/k (which give the exact scores)."""
    s = (q[0].double() @ k[0, 0].double().T) * scale  # (H, N, N)
    bound = 1.01 * scale * norms[0][0].double()[:, :, None] * norms[1][0, 0].double()[None, None, :]
    causal = torch.ones(s.shape[1], s.shape[2], dtype=torch.bool).tril()
    return bool(((s.abs() <= bound) | ~causal).all())


def test_skip_bound_from_unscaled_norms_on_the_models_own_q_k():
    """The ALiBi skip bound from the norms of q and k before xPos (model.attention._wants_norms), on the q/k
    of a model with QK-norm (random gains) and xPos (scale base 16: a block of 832 positions, whose scaled
    features span 3.5^(+-26) about its anchor): the stated bound |s_ij| <= c |q_i| |k_j| holds for every
    causal pair of the true scores (float64) and fails if the norms are understated (half of them); the heads
    skip far blocks, where the bound from the scaled vectors skips none; every skipped key's true weight
    (float64) is under 2^-32 of its row's sum."""
    from reference64 import randomize

    from andromeda.model import Andromeda, from_name

    m = randomize(Andromeda(from_name("tiny", xpos_scale_base=16, max_seq_len=4096)), seed=3).eval()
    attn, n, tile, block_n = m.blocks[0].attn, 768, 32, 16
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        q_hat, k_hat, _ = attn._project(torch.randn(1, n, m.cfg.dim, generator=g))
        q, k = attn._rotate(q_hat, k_hat, m.rope(0, n))
    assert m.rope(0, n)[2].period == 832
    norms = (torch.linalg.vector_norm(q_hat, dim=-1), torch.linalg.vector_norm(k_hat, dim=-1))
    scale = m.cfg.attn_scale
    assert _bound_holds(q, k, norms, scale)
    assert not _bound_holds(q, k, (norms[0] * 0.5, norms[1]), scale)
    slopes = torch.full((q.shape[1],), 0.25)
    lo = _first_blocks(q, k, slopes, scale, tile, block_n, norms)
    assert _skipped_mass(q, k, slopes, scale, lo, tile, block_n).max() < 2.0**-32
    assert (lo[:, -1] * block_n >= n // 2).all()  # the last tile skips at least half its keys
    assert (_first_blocks(q, k, slopes, scale, tile, block_n) == 0).all()  # the scaled norms bound nothing


@pytest.mark.parametrize("norms", [False, True])
def test_alibi_first_block_after_earlier_keys_bounds_as_the_whole_sequence(norms):
    """Queries after earlier keys (the Hopper forward with an offset, TritonTuning.sm90_offset): the first
    blocks of the last 160 queries of 256 keys, an offset of three 32-row tiles, are those the same rows get
    as part of the whole sequence: same scores, same bound, tiles shifted by three."""
    tile, block_n, off = 32, 16, 96
    q, k, _, slopes, g = _unit_norm_case(3, n=256)
    q, k = q.detach(), k.detach()
    qn = kn = None
    if norms:
        qn = torch.linalg.vector_norm(q, dim=-1) * 1.5  # loose but valid norms: they bound the scores
        kn = torch.linalg.vector_norm(k, dim=-1)
    whole = _first_blocks(q, k, slopes, 1.0, tile, block_n, None if qn is None else (qn, kn))
    tail = q[:, :, off:].contiguous()
    after = _first_blocks(tail, k, slopes, 1.0, tile, block_n,
                          None if qn is None else (qn[:, :, off:].contiguous(), kn))
    assert torch.equal(after, whole[:, off // tile:])
    assert (whole[:, off // tile:] > 0).any()  # something is skipped, so the comparison bites
