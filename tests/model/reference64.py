"""A float64 Andromeda written from the formulas, for model-level parity tests.

It imports nothing of andromeda: it reads a model's configuration as plain values (`cfg.to_dict()`)
and its weights as plain tensors (`state_dict()`), and computes everything else itself, in float64,
over the whole sequence at once (no cache): ALiBi slopes (Press et al.), rotary angles, xPos decay,
token shift, QK-norm, the masks and the block wiring. A model is right when its logits, however it
computes them (any attention backend, a KV cache filled in chunks, a static decode step, fused
kernels), equal these at every position: a causal model's logits at position t depend on tokens <= t
only, so the logits of one full pass are the truth for every cached position too.

The formulas, with p the position divided by pos_interpolation_factor:
  ALiBi      score(i, j) -= m_h * (i - j) / factor on the first alibi_num_heads heads (|i - j| when not
             causal); m_h = 2^(-8h/n), h = 1..n for n a power of two, else the slopes of the largest power
             of two m < n, then every other slope of 2m.
  rotary     pair (x_k, x_{k + r/2}) of the first r features turned by the angle p * theta^(-2k/r).
  xPos       the rotated part of q_i . k_j weighted by zeta_k^((p_i - p_j) / scale_base) per pair k,
             zeta_k = (2k + 0.4 r) / (1.4 r), computed from each pair's distance (the model's centres cancel).
  QK-norm    q / |q| (times per-head gains with dim scale), logit scale qk_norm_scale instead of D^-1/2.
  shift      features split into s + 1 chunks of dim // (s + 1); chunk c comes from position t - c (zeros
             before the start), features past the chunks stay.
  blocks     pre-norm x + f(LN(x)); parallel x + attn(h) + ff(h), h = shift(LN(x)); DeepNorm
             LN(a x + f(x)) with a = (2 depth)^(1/4) and no final norm.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def alibi_slopes(n: int) -> list[float]:
    """Press et al.'s slopes for n heads, from the paper's recipe."""

    def geometric(m: int) -> list[float]:
        return [2.0 ** (-8.0 * h / m) for h in range(1, m + 1)]

    m = 1
    while m * 2 <= n:
        m *= 2
    if m == n:
        return geometric(n)
    return geometric(m) + geometric(2 * m)[0::2][: n - m]


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights that make every feature count: matrices N(0, 1/fan_in), embeddings N(0, 1), norm weights and
    QK-norm gains in [1, 1.5), biases N(0, 0.1^2). (A fresh model's 0.02 init leaves attention near uniform,
    where a wrong mask or position shows less.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gain") or ("norm" in name and name.endswith("weight")):
                r = 1.0 + 0.5 * torch.rand(p.shape, generator=g, dtype=F64)
            elif name.endswith("bias"):
                r = 0.1 * torch.randn(p.shape, generator=g, dtype=F64)
            elif name.startswith("embed."):
                r = torch.randn(p.shape, generator=g, dtype=F64)
            else:
                r = torch.randn(p.shape, generator=g, dtype=F64) / p.shape[-1] ** 0.5
            p.copy_(r)
    return model


class Reference64:
    """logits = Reference64(cfg.to_dict(), model.state_dict())(tokens): (B, N) -> (B, N, V) float64."""

    def __init__(self, config: dict, state: dict[str, torch.Tensor], *, grad: bool = False):
        """grad: the float64 weights require grad, so a loss of the logits gives the reference gradients
        (in .w[name].grad; tied embeddings gather both uses on embed.token.weight)."""
        self.c = dict(config)
        self.w = {k: v.detach().to("cpu", F64).requires_grad_(grad) for k, v in state.items()}

    # ---- pieces -----------------------------------------------------------------------------
    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w[f"{name}.weight"].T
        bias = self.w.get(f"{name}.bias")
        return y if bias is None else y + bias

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        eps, weight = self.c["norm_eps"], self.w[f"{name}.weight"]
        if self.c["norm"] == "rmsnorm":
            return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * weight + self.w[f"{name}.bias"]

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        s = self.c["shift_tokens"]
        if not s:
            return x
        n, dim = x.shape[1], x.shape[2]
        size = dim // (s + 1)
        out = x.clone()
        for c in range(1, s + 1):
            lo, hi = c * size, (c + 1) * size
            out[:, :, lo:hi] = 0.0
            if n > c:
                out[:, c:, lo:hi] = x[:, : n - c, lo:hi]
        return out

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.c["ff_activation"]
        if kind == "gelu":
            return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
        if kind == "silu":
            return x / (1.0 + torch.exp(-x))
        return x.clamp_min(0.0)

    def feed_forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.linear(f"{name}.w_in", x))
        if self.c["ff_glu"]:
            h = h * self.linear(f"{name}.w_gate", x)
        return self.linear(f"{name}.w_out", h)

    def head_slopes(self) -> torch.Tensor:
        c = self.c
        slopes = torch.zeros(c["heads"], dtype=F64)
        if c["alibi_pos_bias"]:
            n = c["alibi_num_heads"] or c["heads"]
            slopes[:n] = torch.tensor(alibi_slopes(n), dtype=F64)
        return slopes

    def rotate(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Turn pairs (k, k + r/2) of the first r features of x (B, H, N, D) by p_n * theta^(-2k/r)."""
        r = self.rot_dim
        half = r // 2
        freq = torch.tensor([self.c["rotary_theta"] ** (-2.0 * k / r) for k in range(half)], dtype=F64)
        ang = p[:, None] * freq[None, :]  # (N, r/2)
        cos, sin = torch.cos(ang), torch.sin(ang)
        x1, x2 = x[..., :half], x[..., half:r]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., r:]], dim=-1)

    @property
    def rot_dim(self) -> int:
        c = self.c
        if not (c["rotary_pos_emb"] or c["rotary_xpos"]):
            return 0
        return c["rotary_dim"] or c["dim_head"] // 2

    def attention(self, name: str, x: torch.Tensor) -> torch.Tensor:
        c = self.c
        b, n, _ = x.shape
        h, d = c["heads"], c["dim_head"]
        hkv = c["kv_heads"] or h
        q = self.linear(f"{name}.to_q", x).view(b, n, h, d).transpose(1, 2)  # (B, H, N, D)
        k = self.linear(f"{name}.to_k", x).view(b, n, hkv, d).transpose(1, 2)  # (B, H_kv, N, D)
        v = self.linear(f"{name}.to_v", x).view(b, n, hkv, d).transpose(1, 2)
        if c["qk_norm"]:
            q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            if c["qk_norm_dim_scale"]:
                q = q * self.w[f"{name}.q_norm.gain"]  # (H, 1, D)
                k = k * self.w[f"{name}.k_norm.gain"]  # (H_kv, 1, D)
            scale = c["qk_norm_scale"]
        else:
            scale = d**-0.5
        group = h // hkv  # query head i reads KV head i // group
        k = k.repeat_interleave(group, dim=1)  # (B, H, N, D)
        v = v.repeat_interleave(group, dim=1)
        pos = torch.arange(n, dtype=F64) + self.start
        p = pos / c["pos_interpolation_factor"]
        r = self.rot_dim
        if r:
            q, k = self.rotate(q, p), self.rotate(k, p)
        if r and c["rotary_xpos"]:
            # feature k of q_i . k_j (pairs share zeta) weighted by zeta_k^((p_i - p_j) / base), computed per
            # (i, j) from the distance itself, so positions far from 0 cost nothing in range
            zeta = torch.tensor([(2 * kk + 0.4 * r) / (1.4 * r) for kk in range(r // 2)] * 2, dtype=F64)
            rel = (p[:, None] - p[None, :]) / c["xpos_scale_base"]  # (N, N)
            scores = q[..., r:] @ k[..., r:].transpose(-1, -2)
            for f in range(r):
                scores = scores + (q[..., f, None] * k[..., f, None].transpose(-1, -2)) * zeta[f] ** rel
            scores = scores * scale
        else:
            scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, N, N)
        dist = pos[:, None] - pos[None, :]  # i - j
        if not c["causal"]:
            dist = dist.abs()
        scores = scores - self.head_slopes()[:, None, None] * (dist / c["pos_interpolation_factor"])
        if c["causal"]:
            scores = scores.masked_fill(dist < 0, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(b, n, h * d)
        return self.linear(f"{name}.to_out", out)

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        c, p = self.c, f"blocks.{i}"
        if c["parallel_block"]:
            h = self.shift(self.norm(f"{p}.norm", x))
            return x + self.attention(f"{p}.attn", h) + self.feed_forward(f"{p}.ff", h)
        if c["deepnorm"]:
            a = (2 * c["depth"]) ** 0.25
            x = self.norm(f"{p}.attn_norm", a * x + self.attention(f"{p}.attn", self.shift(x)))
            return self.norm(f"{p}.ff_norm", a * x + self.feed_forward(f"{p}.ff", self.shift(x)))
        x = x + self.attention(f"{p}.attn", self.shift(self.norm(f"{p}.attn_norm", x)))
        return x + self.feed_forward(f"{p}.ff", self.shift(self.norm(f"{p}.ff_norm", x)))

    # ---- the model ----------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.w["embed.token.weight"][tokens]  # (B, N, dim)
        if self.c["use_abs_pos_emb"]:
            x = x + self.w["embed.pos.weight"][self.start: self.start + tokens.shape[1]][None]
        return x

    def __call__(self, tokens: torch.Tensor, embedded: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        """tokens (B, N) at positions start .. start + N - 1 -> logits (B, N, V); `embedded` (B, N, dim)
        replaces the token embedding."""
        self.start = start
        tokens = tokens.cpu()
        x = self.embed(tokens) if embedded is None else embedded.to("cpu", F64)
        for i in range(self.c["depth"]):
            x = self.block(i, x)
        if not self.c["deepnorm"]:
            x = self.norm("final_norm", x)
        head = self.w["embed.token.weight"] if self.c["tie_embeddings"] else self.w["head.weight"]
        return x @ head.T
