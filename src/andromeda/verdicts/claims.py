"""The spec's claims, checked: physical floors from FLOPs and memory, measurements on a CUDA GPU.

A claims file (claims_file.py; built-in: verdicts/claims.yml) lists claims of three kinds:
  latency  N tokens in < T ms: floor = forward FLOPs / peak matmul rate; measured on CUDA.
  memory   F x less memory than a reference model: KV-cache bytes per token, weight bytes, and
           both at a context length, from the published shapes (fp16 by default).
  context  sequences of min..max tokens: the memory floor of one forward against the device's
           memory; measured on CUDA.
Verdicts: met / not met / impossible (the physical floor is above the claim) / partly met
(memory: met on some bases only) / not measured (no CUDA GPU here; the floors are then given for
an H100 SXM at its datasheet rate, and labelled so).

check_claims() returns data (ClaimsResult); report/claims_report.py writes claims.md and claims.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from andromeda.errors import ConfigError
from andromeda.measure.facts import ModelFacts, facts_from_config, kv_cache_bytes_per_token
from andromeda.measure.flops import PEAK_TFLOPS, device_peak_tflops, forward_flops
from andromeda.model.config import PRESETS, ModelConfig, from_name
from andromeda.verdicts.claims_file import ContextClaim, LatencyClaim, MemoryClaim, Reference, load_claims

DATASHEET_DEVICE = "H100 SXM"
DATASHEET_MEMORY_BYTES = 80e9  # H100 SXM: 80 GB HBM3
GB = 1e9


# ---- physics --------------------------------------------------------------------------------------
def preset_facts(preset: str) -> ModelFacts:
    return facts_from_config(from_name(preset))


def presets_by_size(max_preset: str | None = None) -> list[str]:
    """Preset names, smallest first; only those no larger than max_preset (by parameters)."""
    sizes = {p: preset_facts(p).params for p in PRESETS}
    if max_preset is not None and max_preset not in PRESETS:
        raise ConfigError(f"--max-preset: preset '{max_preset}' is unknown; available: {', '.join(PRESETS)}")
    cap = sizes[max_preset] if max_preset else math.inf
    return sorted((p for p in PRESETS if sizes[p] <= cap), key=lambda p: sizes[p])


def prefill_flops(facts: ModelFacts, batch: int, tokens: int) -> float:
    """The least work of processing `tokens` tokens: a causal forward, logits at the last position only."""
    return forward_flops(facts, batch, tokens, lm_head="last").total


def floor_ms(flops: float, peak_tflops: float) -> float:
    """Time at 100% of the peak rate: flops / (peak * 1e12) seconds, in ms."""
    return flops / (peak_tflops * 1e12) * 1e3


def max_tokens_within(facts: ModelFacts, batch: int, budget_ms: float, peak_tflops: float,
                      mfu: float = 1.0, limit: int = 1 << 30) -> int:
    """Largest N whose prefill floor at `mfu` of peak fits in budget_ms (0 if not even one token)."""
    def fits(n: int) -> bool:
        return floor_ms(prefill_flops(facts, batch, n), peak_tflops * mfu) <= budget_ms

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi < limit and fits(hi):
        lo, hi = hi, hi * 2
    if hi >= limit and fits(limit):
        return limit
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def forward_memory_floor(facts: ModelFacts, batch: int, tokens: int, bytes_per_elem: float) -> float:
    """Bytes any forward over `tokens` tokens must hold at once: the weights, the hidden states of
    every token, and one layer's keys and values."""
    weights = facts.params * bytes_per_elem
    hidden = batch * tokens * facts.dim * bytes_per_elem
    kv_one_layer = 2 * batch * tokens * facts.kv_heads * facts.head_dim * bytes_per_elem
    return weights + hidden + kv_one_layer


def impossible(floor: float, limit: float) -> bool:
    """The verdict logic's physics test: a floor above the claimed limit cannot be beaten."""
    return floor > limit


# ---- the device -----------------------------------------------------------------------------------
@dataclass
class Basis:
    """The peak matmul rate and memory the floors use, and where they come from."""

    device: str  # what the numbers describe, e.g. "NVIDIA H100 80GB HBM3" or "H100 SXM (datasheet)"
    peak_tflops: float
    peak_source: str  # "measured", "datasheet" or "given"
    memory_bytes: float
    measured_here: bool  # a CUDA GPU is present: claims are also measured
    datasheet_tflops: float | None = None  # the table's value for this device, when known
    note: str = ""

    @property
    def rate_label(self) -> str:
        """'989.5 TFLOP/s (H100 SXM datasheet)', '702 TFLOP/s (measured on NVIDIA H100 ...)', '500 TFLOP/s (given)'."""
        where = {"datasheet": f"{self.device} datasheet", "measured": f"measured on {self.device}"}
        return f"{self.peak_tflops:.4g} TFLOP/s ({where.get(self.peak_source, self.peak_source)})"


def measure_matmul_tflops(device: torch.device, n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """Best achieved rate of an n x n x n matmul over a few timed runs, in TFLOP/s: the peak a floor uses."""
    from andromeda.measure.floors import matmul_tflops
    from andromeda.measure.timing import TimingConfig

    cfg = TimingConfig(warmup=3, min_runs=10, max_runs=30, budget_s=1.0, target_rel_ci=None)
    return matmul_tflops(device, n, dtype, timing=cfg, best=True)


def device_basis(device: str = "auto", peak_tflops: float | None = None) -> Basis:
    from andromeda.devices import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        table = device_peak_tflops(name, "bf16")
        mem = float(torch.cuda.get_device_properties(dev).total_memory)
        if peak_tflops is not None:
            return Basis(name, float(peak_tflops), "given", mem, True, table, "peak rate given by --peak-tflops")
        try:
            measured = measure_matmul_tflops(dev)
        except Exception as e:  # noqa: BLE001 - e.g. no bf16 on an old GPU: fall back to the table
            if table is None:
                raise ConfigError(f"could not measure the peak bf16 matmul rate of {name} ({type(e).__name__}: "
                                  f"{e}) and it is not in the device table: pass --peak-tflops") from None
            return Basis(name, table, "datasheet", mem, True, table, f"measuring the peak failed ({e}): datasheet rate")
        note = "peak rate measured here: best of an 8192^3 bf16 matmul"
        return Basis(name, measured, "measured", mem, True, table, note)
    table = PEAK_TFLOPS[DATASHEET_DEVICE]["bf16"]
    where = f"this machine ({dev.type}) has no CUDA GPU: the claims cannot be measured here"
    if peak_tflops is not None:
        return Basis("given device", float(peak_tflops), "given",
                     DATASHEET_MEMORY_BYTES, False, None,
                     f"{where}; floors at the given rate, memory of an {DATASHEET_DEVICE} (80 GB)")
    return Basis(DATASHEET_DEVICE, table, "datasheet", DATASHEET_MEMORY_BYTES, False, table,
                 f"{where}; floors are for an {DATASHEET_DEVICE} at its datasheet dense bf16 rate "
                 f"({table:g} TFLOP/s) and 80 GB")


# ---- measurement (CUDA) ---------------------------------------------------------------------------
# Few runs: a 100K-token forward of the largest preset takes seconds; the CI says how stable it was.
MEASURE_TIMING = dict(warmup=1, min_runs=3, max_runs=10, budget_s=3.0, target_rel_ci=0.05)

def measure_forward(preset: str, tokens: int, batch: int, device: torch.device,
                    dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Time a forward (logits at the last position) of `preset` over batch x tokens tokens.

    dtype: default bf16 on CUDA (the rate the floors use), float32 elsewhere (CPUs are slow in bf16).
    """
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    from andromeda.measure.memory import free_memory, is_oom
    from andromeda.measure.timing import TimingConfig, time_fn
    from andromeda.model import Andromeda

    cfg = from_name(preset, max_seq_len=max(PRESETS[preset]["max_seq_len"], tokens))
    held: dict[str, Any] = {}  # model and input, dropped before the memory is freed
    try:
        torch.manual_seed(0)
        held["model"] = Andromeda(cfg).to(device=device, dtype=dtype).eval()
        held["x"] = torch.randint(0, min(cfg.num_tokens, 256), (batch, tokens), device=device)

        def fn():
            with torch.inference_mode():
                return held["model"](held["x"], logits="last")

        t = time_fn(fn, device, TimingConfig(**MEASURE_TIMING))
        s = t.summary
        return {"preset": preset, "tokens": tokens, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
                "status": "ok", "median_ms": s.median,
                "ci_low_ms": s.ci_low, "ci_high_ms": s.ci_high, "samples_ms": t.samples_ms, "message": None}
    except Exception as e:  # noqa: BLE001 - a failed measurement is a result
        status = "oom" if is_oom(e) else "error"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return {"preset": preset, "tokens": tokens, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
                "status": status, "median_ms": None,
                "ci_low_ms": None, "ci_high_ms": None, "samples_ms": [], "message": msg}
    finally:
        held.clear()
        free_memory(device)


# ---- checks ---------------------------------------------------------------------------------------
@dataclass
class ClaimResult:
    id: str
    text: str
    kind: str
    preset: str
    verdict: str  # met | not met | impossible | partly met | not measured
    reason: str
    where: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms" if ms < 999.5 else f"{ms / 1e3:.3g} s"


def check_latency(c: LatencyClaim, basis: Basis, presets: list[str], plausible_mfu: float,
                  device: torch.device | None) -> ClaimResult:
    facts = preset_facts(c.preset)
    flops = prefill_flops(facts, c.batch, c.tokens)
    fl = floor_ms(flops, basis.peak_tflops)
    required = fl / c.max_ms
    search = []
    for p in presets:
        f = preset_facts(p)
        pf = floor_ms(prefill_flops(f, c.batch, c.tokens), basis.peak_tflops)
        search.append({"preset": p, "params": f.params, "floor_ms": pf, "required_mfu": pf / c.max_ms,
                       "meets_floor": pf <= c.max_ms, "meets_plausible": pf / plausible_mfu <= c.max_ms})
    details: dict[str, Any] = {
        "tokens": c.tokens, "batch": c.batch, "max_ms": c.max_ms, "flops": flops, "floor_ms": fl,
        "required_mfu": required, "plausible_mfu": plausible_mfu, "params": facts.params,
        "max_tokens_at_peak": max_tokens_within(facts, c.batch, c.max_ms, basis.peak_tflops),
        "max_tokens_plausible": max_tokens_within(facts, c.batch, c.max_ms, basis.peak_tflops, plausible_mfu),
        "presets": search,
        "largest_preset_floor": next((s["preset"] for s in reversed(search) if s["meets_floor"]), None),
        "largest_preset_plausible": next((s["preset"] for s in reversed(search) if s["meets_plausible"]), None),
        "measurements": [],
    }
    physics = (f"{flops / 1e12:.4g} TFLOP for {c.tokens:,} tokens; floor {_fmt_ms(fl)} at {basis.rate_label}: "
               f"needs {100 * required:.0f}% of peak")
    doomed = impossible(fl, c.max_ms)
    if device is not None:
        # measured search: the largest preset (within --max-preset) whose floor allows the claim
        for s in reversed(search):
            if not s["meets_floor"]:
                continue
            m = measure_forward(s["preset"], c.tokens, c.batch, device)
            details["measurements"].append(m)
            s["measured_ms"] = m["median_ms"]
            if m["status"] == "ok" and m["median_ms"] < c.max_ms:
                details["largest_preset_measured"] = s["preset"]
                break
    own = next((m for m in details["measurements"] if m["preset"] == c.preset), None)
    if doomed:
        verdict, reason = "impossible", f"{physics}, more than the claimed {_fmt_ms(c.max_ms)}"
    elif own is not None and own["status"] == "ok":
        ok = own["median_ms"] < c.max_ms
        verdict = "met" if ok else "not met"
        reason = f"measured {_fmt_ms(own['median_ms'])} {'<' if ok else '>='} {_fmt_ms(c.max_ms)}; {physics}"
    elif own is not None:
        verdict, reason = "not met", f"the forward failed ({own['status']}: {own['message']}); {physics}"
    elif device is not None and c.preset not in presets:
        first = details["measurements"][0] if details["measurements"] else None
        if first is not None and (first["status"] != "ok" or first["median_ms"] >= c.max_ms):
            got = _fmt_ms(first["median_ms"]) if first["status"] == "ok" else first["status"]
            verdict = "not met"
            reason = (f"not run on {c.preset} (above --max-preset), but the smaller {first['preset']} already "
                      f"takes {got} for {c.tokens:,} tokens; {physics}")
        else:
            verdict, reason = "not measured", f"preset {c.preset} is above --max-preset; {physics}"
    elif basis.measured_here:
        verdict, reason = "not measured", f"{physics}; measurement off (--no-measure)"
    else:
        verdict, reason = "not measured", f"{physics}; {basis.note}"
    return ClaimResult(c.id, c.text, c.kind, c.preset, verdict, reason, c.where, details)


def check_memory(c: MemoryClaim, ref: Reference) -> ClaimResult:
    a = preset_facts(c.preset)
    r = facts_from_config(ModelConfig.from_dict(ref.config))
    e = c.bytes_per_elem
    a_kv, r_kv = kv_cache_bytes_per_token(a, e), kv_cache_bytes_per_token(r, e)
    a_w, r_w = a.params * e, r.params * e
    a_t, r_t = a_w + a_kv * c.context, r_w + r_kv * c.context
    bases = [
        {"basis": "KV cache per token", "unit": "B/token", "andromeda": a_kv, "reference": r_kv},
        {"basis": "weights", "unit": "B", "andromeda": a_w, "reference": r_w},
        {"basis": f"weights + KV cache at {c.context:,} tokens", "unit": "B", "andromeda": a_t, "reference": r_t},
    ]
    for b in bases:
        b["factor"] = b["reference"] / b["andromeda"]
        b["met"] = b["factor"] >= c.factor
    # context length from which weights + KV cache meet the factor (batch 1)
    crossover = None
    if r_kv > c.factor * a_kv:
        crossover = max(0, math.ceil((c.factor * a_w - r_w) / (r_kv - c.factor * a_kv)))
    met = [b["met"] for b in bases]
    verdict = "met" if all(met) else "not met" if not any(met) else "partly met"
    parts = [f"{b['basis']} {b['factor']:.3g}x" for b in bases]
    reason = (f"{ref.name} vs {c.preset} at {8 * e:g}-bit: " + ", ".join(parts) + f" (claim: {c.factor:g}x)")
    mha = kv_cache_bytes_per_token(replace(a, kv_heads=a.heads), e)
    details = {
        "reference": ref.name, "citation": ref.citation, "factor": c.factor, "bytes_per_elem": e,
        "context": c.context, "bases": bases, "crossover_tokens": crossover,
        "andromeda_params": a.params, "reference_params": r.params, "reference_published_params": ref.published_params,
        "andromeda_kv_heads": a.kv_heads, "andromeda_kv_per_token_if_mha": mha,
        "reference_shape": {"layers": r.layers, "heads": r.heads, "kv_heads": r.kv_heads, "head_dim": r.head_dim,
                            "dim": r.dim},
    }
    return ClaimResult(c.id, c.text, c.kind, c.preset, verdict, reason, c.where, details)


def check_context(c: ContextClaim, basis: Basis, device: torch.device | None) -> ClaimResult:
    facts = preset_facts(c.preset)
    e = c.bytes_per_elem
    points = []
    for n in sorted({c.min_tokens, c.max_tokens}):
        mem = forward_memory_floor(facts, 1, n, e)
        points.append({"tokens": n, "memory_floor_bytes": mem, "fits": not impossible(mem, basis.memory_bytes),
                       "floor_ms": floor_ms(prefill_flops(facts, 1, n), basis.peak_tflops)})
    per_token = forward_memory_floor(facts, 1, 1, e) - facts.params * e
    max_fit = max(0, int((basis.memory_bytes - facts.params * e) // per_token))
    details: dict[str, Any] = {"points": points, "max_tokens_memory_floor": max_fit,
                               "trained_max_seq_len": facts.max_seq_len, "device_memory_bytes": basis.memory_bytes,
                               "measurements": []}
    extrap = ""
    if c.max_tokens > facts.max_seq_len:
        extrap = (f"; past the preset's max_seq_len {facts.max_seq_len:,} positions rely on ALiBi/xPos "
                  "extrapolation: output quality there is not checked by this command")
    mem_txt = ", ".join(f"{p['tokens']:,} tokens: memory floor {p['memory_floor_bytes'] / GB:.3g} GB, "
                        f"time floor {_fmt_ms(p['floor_ms'])}" for p in points)
    if not all(p["fits"] for p in points):
        return ClaimResult(c.id, c.text, c.kind, c.preset, "impossible",
                           f"{mem_txt}; more than the {basis.memory_bytes / GB:.3g} GB of {basis.device}{extrap}",
                           c.where, details)
    if device is None:
        why = (basis.note if not basis.measured_here
               else "not measured (--no-measure, or the preset is above --max-preset)")
        return ClaimResult(c.id, c.text, c.kind, c.preset, "not measured",
                           f"{mem_txt}; fits in the {basis.memory_bytes / GB:.3g} GB of {basis.device}; "
                           f"{why}{extrap}", c.where, details)
    ms = [measure_forward(c.preset, p["tokens"], 1, device) for p in points]
    details["measurements"] = ms
    failed = [m for m in ms if m["status"] != "ok"]
    ran = ", ".join(f"{m['tokens']:,} tokens {m['status']}"
                    + (f" in {_fmt_ms(m['median_ms'])}" if m["median_ms"] is not None else f" ({m['message']})")
                    for m in ms)
    verdict = "not met" if failed else "met"
    return ClaimResult(c.id, c.text, c.kind, c.preset, verdict,
                       f"measured: {ran}; {mem_txt}{extrap}", c.where, details)


@dataclass
class ClaimsResult:
    generated: str
    source: str  # the claims file
    basis: Basis
    max_preset: str | None
    results: list[ClaimResult]

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": 1, "generated": self.generated, "claims_file": self.source,
                "basis": asdict(self.basis), "max_preset": self.max_preset,
                "claims": [asdict(r) for r in self.results]}

    def summary_lines(self) -> list[str]:
        b = self.basis
        lines = [f"basis: {b.rate_label}, {b.memory_bytes / GB:.3g} GB" + (f"; {b.note}" if b.note else "")]
        lines += [f"[{r.verdict}] {r.text} ({r.preset}): {r.reason}" for r in self.results]
        return lines


def check_claims(path: str | Path | None = None, *, device: str = "auto", peak_tflops: float | None = None,
                 max_preset: str | None = None, measure: bool = True) -> ClaimsResult:
    """Every claim of the file: floors always, measurements when a CUDA GPU is used and measure=True."""
    cf = load_claims(path)
    if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise ConfigError(f"--peak-tflops: must be > 0, got {peak_tflops}")
    basis = device_basis(device, peak_tflops)
    presets = presets_by_size(max_preset)
    dev = None
    if basis.measured_here and measure:
        from andromeda.devices import resolve_device

        dev = resolve_device(device)
    results = []
    for c in cf.claims:
        if isinstance(c, LatencyClaim):
            results.append(check_latency(c, basis, presets, cf.plausible_mfu, dev))
        elif isinstance(c, MemoryClaim):
            results.append(check_memory(c, cf.references[c.reference]))
        else:
            in_reach = c.preset in presets
            results.append(check_context(c, basis, dev if in_reach else None))
    return ClaimsResult(
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=str(path) if path else "built-in claims.yml", basis=basis, max_preset=max_preset, results=results,
    )


__all__ = [
    "Basis", "ClaimResult",
    "ClaimsResult", "check_claims", "check_latency", "check_memory", "check_context",
    "prefill_flops", "floor_ms", "max_tokens_within", "forward_memory_floor", "impossible", "device_basis",
    "measure_matmul_tflops", "measure_forward", "presets_by_size", "preset_facts",
]
