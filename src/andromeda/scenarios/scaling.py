"""scaling: latency over sequence length or batch size, a fit a + b*N + c*N^2, and the OOM edge.

Each sweep point is a case. After the sweep, finalize() fits latency = a + b*N + c*N^2 by least
squares (non-negative coefficients) and reports the linear and quadratic shares of the time at the
largest N, then finds the OOM boundary by bisection between the largest size that ran and the
smallest that ran out of memory (when the sweep reached one).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from scipy.optimize import nnls

from andromeda.measure.memory import is_oom
from andromeda.scenarios import register
from andromeda.scenarios.common import check_length, random_tokens
from andromeda.scenarios.config.scaling import ScalingConfig


def fit_quadratic(n: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """Non-negative least squares t = a + b n + c n^2; shares of b n and c n^2 at the largest n."""
    A = np.stack([np.ones_like(n), n, n**2], axis=1).astype(float)
    coef, _ = nnls(A, t.astype(float))
    a, b, c = coef
    pred = A @ coef
    ss_res, ss_tot = float(((t - pred) ** 2).sum()), float(((t - t.mean()) ** 2).sum())
    nmax = float(n.max())
    total = a + b * nmax + c * nmax**2
    return {
        "fit_a_ms": float(a), "fit_b_ms_per_token": float(b), "fit_c_ms_per_token2": float(c),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "linear_share": float(b * nmax / total) if total > 0 else 0.0,
        "quadratic_share": float(c * nmax**2 / total) if total > 0 else 0.0,
        "n_max": nmax,
    }


@register("scaling")
class Scaling:
    Config = ScalingConfig

    def _shape(self, p, size):
        return (p["batch"], size) if p["axis"] == "seq_len" else (size, p["seq_len"])

    def _forward(self, bundle, ctx, batch, seq):
        tokens = random_tokens(bundle, batch, seq, ctx.device, ctx.seed)
        return lambda: _infer(bundle, tokens)

    def run(self, bundle, p, ctx):
        batch, seq = self._shape(p, p["size"])
        if (reason := check_length(bundle, seq)) is not None:
            return ctx.skip(reason)
        timing = ctx.time(self._forward(bundle, ctx, batch, seq))
        metrics = {**timing.summary.to_metrics("latency_ms"), "tokens_per_s": batch * seq / (timing.median_ms / 1e3)}
        return [ctx.record(metrics, samples={"latency_ms": timing.samples_ms},
                           params={"batch": batch, "seq_len": seq})]

    def finalize(self, bundle, records, ctx):
        ok = [r for r in records if r.status == "ok" and "latency_ms" in r.metrics]
        if len(ok) < 3:
            return []
        p = records[0].params
        n = np.array([r.params["size"] for r in ok], dtype=float)
        t = np.array([r.metrics["latency_ms"] for r in ok], dtype=float)
        metrics = fit_quadratic(n, t)
        ooms = sorted(r.params["size"] for r in records if r.status == "oom")
        if ooms and p.get("bisect_oom", True) and bundle is not None:
            lo, hi = int(n.max()), ooms[0]
            for _ in range(p.get("bisect_steps", 6)):
                if hi - lo <= max(1, lo // 64):
                    break
                mid = (lo + hi) // 2
                try:
                    self._forward(bundle, ctx, *self._shape(p, mid))()
                    lo = mid
                except Exception as e:  # noqa: BLE001 - only OOM is expected here
                    if not is_oom(e):
                        raise
                    hi = mid
                finally:
                    if ctx.device.type == "cuda":
                        torch.cuda.empty_cache()
            metrics["oom_boundary_ok"] = float(lo)
            metrics["oom_boundary_fail"] = float(hi)
        fixed = {k: v for k, v in p.items() if k != "size"}
        fit_id = hashlib.sha1(f"{records[0].source}|scaling-fit|{sorted(fixed.items())}".encode()).hexdigest()[:16]
        rec = ctx.record(metrics, params={**fixed, "fit": True, "size": None},
                         samples={"size": n.tolist(), "latency_ms": t.tolist()})
        rec.case_id = fit_id
        return [rec]


def _infer(bundle, tokens):
    with torch.inference_mode():
        return bundle.logits(tokens)
