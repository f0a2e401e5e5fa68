"""Synthetic but realistic records for every scenario the report knows, plus one it does not.

Values follow simple physical models (latency ~ a + bN + cN^2, KV cache = 2 * layers * kv_heads *
head_dim * bytes per token) so the charts look like real runs. Includes an oom, an error and a
skipped record, a noisy measurement (cv > 0.1), a flagged record and a null metric.
"""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from andromeda.records import Record, RecordStore

ENV = {
    "device": "NVIDIA H100 80GB HBM3",
    "device_count": 1,
    "torch": "2.11.0+cu128",
    "cuda": "12.8",
    "python": "3.11.7",
    "platform": "Linux-6.8.0-x86_64",
    "gpu": {"capability": "9.0", "memory_gib": 79.6},
}
MANIFEST = "name: smoke\nsources: [andromeda:tiny, hf:gpt2]\nscenarios: [latency, throughput]\n"
COMMON = {"dtype": "bf16", "device": "cuda"}


def _rec(scenario: str, source: str, params: dict, status: str = "ok", **kw) -> Record:
    key = json.dumps([scenario, source, params], sort_keys=True)
    case_id = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Record(
        case_id=case_id, scenario=scenario, source=source, params=params, status=status, env=dict(ENV), **kw
    )


def _stats(prefix: str, samples: list[float]) -> dict[str, float]:
    """What measure.stats reports for a timed metric: median and its CI, spread, percentiles, n."""
    x = np.asarray(samples)
    med = float(np.median(x))
    q = {
        k: float(np.percentile(x, v))
        for k, v in (("p5", 5), ("p25", 25), ("p75", 75), ("p95", 95), ("p99", 99))
    }
    out = {
        prefix: med,
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)),
        "min": float(x.min()),
        "max": float(x.max()),
        "p5": q["p5"],
        "p50": med,
        "p95": q["p95"],
        "p99": q["p99"],
        "iqr": q["p75"] - q["p25"],
        "cv": float(x.std(ddof=1) / x.mean()),
        "ci_low": float(np.percentile(x, 35)),
        "ci_high": float(np.percentile(x, 65)),
        "n": float(len(x)),
    }
    return {(k if k == prefix else f"{prefix}_{k}"): v for k, v in out.items()}


def _latency(rng: random.Random) -> list[Record]:
    out = []
    for source, scale in (("andromeda:tiny", 1.0), ("hf:gpt2", 2.3)):
        for mode in ("forward", "fwd_bwd"):
            for batch in (1, 8):
                if source == "hf:gpt2" and (mode, batch) != ("forward", 1):
                    continue
                for n in (128, 256, 512, 1024, 2048):
                    ms = (
                        scale
                        * (0.9 + 0.0011 * batch * n + 1.6e-7 * batch * n * n)
                        * (3 if mode == "fwd_bwd" else 1)
                    )
                    noisy = (source, mode, batch, n) == ("andromeda:tiny", "forward", 1, 128)
                    samples = [ms * (1 + rng.gauss(0, 0.17 if noisy else 0.02)) for _ in range(20)]
                    metrics = {**_stats("latency_ms", samples), "tokens_per_s": batch * n / ms * 1e3}
                    out.append(
                        _rec(
                            "latency",
                            source,
                            {"mode": mode, "batch": batch, "seq_len": n, **COMMON},
                            metrics=metrics,
                            samples={"latency_ms": samples},
                            info={"backend": "sdpa"},
                        )
                    )
    out.append(
        _rec(
            "latency",
            "hf:gpt2",
            {"mode": "fwd_bwd", "batch": 8, "seq_len": 2048, **COMMON},
            status="error",
            message="RuntimeError: expected scalar type BFloat16 but found Float",
        )
    )
    out.append(
        _rec(
            "latency",
            "andromeda:tiny",
            {"mode": "inference", "batch": 1, "seq_len": 128, **COMMON},
            status="skipped",
            message="backend 'flex' does not support ALiBi slopes on this device",
        )
    )
    return out


def _throughput() -> list[Record]:
    out = []
    for b in (1, 2, 4, 8, 16, 32):
        tok = 21000.0 * b / (1 + b / 9)
        out.append(
            _rec(
                "throughput",
                "andromeda:tiny",
                {"batch": b, "seq_len": 512, **COMMON},
                metrics={"tokens_per_s": tok, "sequences_per_s": tok / 512},
            )
        )
    out.append(
        _rec(
            "throughput",
            "andromeda:tiny",
            {"batch": 64, "seq_len": 512, **COMMON},
            status="oom",
            message="CUDA out of memory. Tried to allocate 4.00 GiB (GPU 0; 79.19 GiB total)",
        )
    )
    return out


def _generation(rng: random.Random) -> list[Record]:
    out = []
    prompt, gen = 128, 32
    for cache in (True, False):
        steps = [(6.1 + 0.0015 * (prompt + i)) if cache else (5.8 + 0.055 * (prompt + i)) for i in range(gen)]
        steps = [s * (1 + rng.uniform(-0.03, 0.03)) for s in steps]
        prefill = 9.4
        tpot = sum(steps[1:]) / (gen - 1)
        metrics = {
            "prefill_ms": prefill,
            "ttft_ms": prefill + steps[0],
            "tpot_ms": tpot,
            "decode_tokens_per_s": 1e3 / tpot,
            "e2e_tokens_per_s": gen * 1e3 / (prefill + sum(steps)),
        }
        out.append(
            _rec(
                "generation",
                "andromeda:tiny",
                {"prompt_len": prompt, "gen_len": gen, "batch": 1, "use_cache": cache, **COMMON},
                metrics=metrics,
                samples={"decode_step_ms": steps},
            )
        )
    return out


def _memory() -> list[Record]:
    out = []
    kv_per_token = 2 * 6 * 2 * 64 * 2  # 2 (k, v) * layers * kv heads * head dim * bytes (bf16)
    for mode in ("inference", "fwd_bwd"):
        for n in (256, 512, 1024, 2048, 4096):
            act = (0.031 if mode == "inference" else 0.42) * n
            kv = kv_per_token * n / 2**20 if mode == "inference" else 0.0
            metrics = {
                "peak_allocated_mib": 482.5 + act + kv,
                "peak_reserved_mib": 512.0 + act + kv,
                "start_allocated_mib": 482.5,
                "weights_mib": 482.5,
                "activations_mib": act,
                "kv_cache_mib": kv,
                "kv_bytes_per_token_measured": kv_per_token * 1.02,
                "kv_bytes_per_token_analytic": kv_per_token,
            }
            out.append(
                _rec(
                    "memory",
                    "andromeda:tiny",
                    {"batch": 1, "seq_len": n, "mode": mode, **COMMON},
                    metrics=metrics,
                )
            )
    out.append(
        _rec(
            "memory",
            "andromeda:tiny",
            {"batch": 1, "seq_len": 8192, "mode": "fwd_bwd", **COMMON},
            status="oom",
            message="CUDA out of memory. Tried to allocate 8.00 GiB",
        )
    )
    return out


def _scaling(rng: random.Random) -> list[Record]:
    out = []
    for axis, points, (a, b, c) in (
        ("seq_len", [128, 256, 512, 1024, 2048, 4096], (0.9, 0.0021, 2.1e-7)),
        ("batch", [1, 2, 4, 8, 16, 32], (0.8, 0.41, 0.0009)),
    ):
        for x in points:
            params = {
                "axis": axis,
                "seq_len": x if axis == "seq_len" else 512,
                "batch": x if axis == "batch" else 1,
            }
            ms = (a + b * x + c * x * x) * (1 + rng.uniform(-0.015, 0.015))
            out.append(_rec("scaling", "andromeda:tiny", params, metrics={"latency_ms": ms}))
        top = points[-1]
        lin, quad = b * top, c * top * top
        fit = {
            "fit_a_ms": a * 1.01,
            "fit_b_ms_per_token": b * 0.99,
            "fit_c_ms_per_token2": c * 1.005,
            "linear_share": lin / (lin + quad),
            "quadratic_share": quad / (lin + quad),
            "r2": 0.9987,
        }
        if axis == "seq_len":
            fit["oom_boundary"] = 16384
        out.append(_rec("scaling", "andromeda:tiny", {"axis": axis, "fit": True}, metrics=fit))
    return out


def _unknown() -> list[Record]:
    out = []
    for backend in ("eager", "sdpa", "flex"):
        for n in (1024, 4096):
            ms = {"eager": 1.9, "sdpa": 0.61, "flex": 0.74}[backend] * (n / 1024) ** 2
            flops = 4 * 8 * 12 * n * n * 64 / 2
            metrics = {
                "latency_ms": ms,
                "tflops": flops / (ms * 1e-3) / 1e12,
                "mfu": None if backend == "flex" else flops / (ms * 1e-3) / 989e12,
            }
            info = {"backend": backend}
            if (backend, n) == ("eager", 4096):
                info["warnings"] = ["GPU clock throttled during measurement"]
            out.append(
                _rec(
                    "attention_kernels",
                    "andromeda:tiny",
                    {"backend": backend, "seq_len": n},
                    metrics=metrics,
                    info=info,
                )
            )
    return out


def make_records() -> list[Record]:
    rng = random.Random(0)
    recs = _latency(rng) + _throughput() + _generation(rng) + _memory() + _scaling(rng) + _unknown()
    assert len({r.case_id for r in recs}) == len(recs)
    return recs


@pytest.fixture(scope="session")
def records() -> list[Record]:
    return make_records()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, records):
    d = tmp_path_factory.mktemp("run")
    RecordStore(d / "results.jsonl").append(records)
    (d / "manifest.yml").write_text(MANIFEST)
    return d


@pytest.fixture(scope="session")
def built(run_dir):
    from andromeda.report import build_report

    return run_dir, build_report(run_dir)
