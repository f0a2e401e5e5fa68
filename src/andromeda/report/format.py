"""Numbers, units and labels: how a value or a column name is shown to a reader.

Pure functions, no pandas. Raw values are never altered here; only their text is.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MISSING = "—"  # shown for None / NaN / a metric a record did not measure
SIG_DIGITS = 4

# Qualifiers that may end a metric name after its unit: latency_ms_p95, latency_ms_cv.
_QUALIFIERS = {
    "p50": "p50",
    "p90": "p90",
    "p95": "p95",
    "p99": "p99",
    "mean": "mean",
    "median": "median",
    "std": "std",
    "min": "min",
    "max": "max",
    "iqr": "IQR",
    "ci_low": "CI low",
    "ci_high": "CI high",
    "cv": "CV",
}
# Unit suffixes, longest first: (suffix of the name without qualifier, unit shown).
_UNITS = [
    ("_ms_per_token2", "ms/tok²"),
    ("ms_per_sequence", "ms/seq"),
    ("_ms_per_token", "ms/tok"),
    ("tokens_per_s", "tok/s"),
    ("sequences_per_s", "seq/s"),
    ("samples_per_s", "samples/s"),
    ("_per_s", "/s"),
    ("_ms", "ms"),
    ("_us", "µs"),
    ("_s", "s"),
    ("_mib", "MiB"),
    ("_gib", "GiB"),
    ("_bytes", "B"),
    ("_pct", "%"),
    ("tflops", "TFLOP/s"),
]
# Metrics whose name alone would mislead (a name, or the end of one after "_": prefill_8192_mfu), longest
# first: (stem, label, unit). MFU has two denominators; effective rates count FLOPs the kernel skipped.
_LABELS = [
    ("mfu_measured_peak", "MFU (measured matmul peak)", ""),
    ("hfu_measured_peak", "HFU (measured matmul peak)", ""),
    ("effective_tflops", "effective TFLOP/s (dense causal FLOPs / time)", "TFLOP/s"),
    ("mfu", "MFU (datasheet peak)", ""),
    ("hfu", "HFU", ""),
]
_WORDS = {
    "ttft": "TTFT",
    "tpot": "TPOT",
    "mfu": "MFU",
    "kv": "KV",
    "rss": "RSS",
    "e2e": "E2E",
    "r2": "R²",
    "oom": "OOM",
    "cv": "CV",
    "tflops": "TFLOP/s",
    "flops": "FLOPs",
}


def is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def fmt_number(x: Any, sig: int = SIG_DIGITS) -> str:
    """`sig` significant digits; values >= 10**sig shown whole, values < 1e-4 in e-notation."""
    if is_missing(x):
        return MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if not isinstance(x, float):
        try:
            x = float(x)
        except (TypeError, ValueError):
            return str(x)
        if not math.isfinite(x):
            return MISSING
    if x == 0:
        return "0"
    if abs(x) >= 10**sig:
        return f"{x:.0f}"  # more digits than `sig`, never e-notation for a large count
    return f"{x:.{sig}g}"


def fmt_ci(median: Any, low: Any, high: Any) -> str:
    """'12.3 [12.1, 12.6]': the median and its confidence interval."""
    if is_missing(low) and is_missing(high):
        return fmt_number(median)
    return f"{fmt_number(median)} [{fmt_number(low)}, {fmt_number(high)}]"


def fmt_value(x: Any) -> str:
    """A parameter or info value: numbers as numbers, containers as compact JSON."""
    if isinstance(x, (dict, list, tuple)):
        return json.dumps(x, separators=(",", ":"), default=str)
    if isinstance(x, str):
        return x
    return fmt_number(x)


def _words(stem: str) -> str:
    return " ".join(_WORDS.get(w, w) for w in stem.split("_") if w)


def split_metric(name: str) -> tuple[str, str, str]:
    """metric name -> (label, qualifier, unit): 'latency_ms_p95' -> ('latency', 'p95', 'ms')."""
    stem, qual = name, ""
    for q in sorted(_QUALIFIERS, key=len, reverse=True):
        if stem.endswith("_" + q) and len(stem) > len(q) + 1:
            stem, qual = stem[: -len(q) - 1], _QUALIFIERS[q]
            break
    for key, label, unit in _LABELS:
        if stem == key or stem.endswith("_" + key):
            return f"{_words(stem[: -len(key)])} {label}".strip(), qual, unit
    if "_bytes_per_token" in stem:
        return _words(stem.replace("_bytes_per_token", "")), qual, "B/tok"
    for suffix, unit in _UNITS:
        if stem.endswith(suffix) or stem == suffix.lstrip("_"):
            rest = stem[: -len(suffix)] if stem.endswith(suffix) else ""
            fallback = {"TFLOP/s": "compute", "ms/seq": "time"}.get(unit)
            fallback = fallback or ("throughput" if "/s" in unit else stem)
            label = _words(rest) or fallback
            return label, qual, unit
    return _words(stem), qual, ""


def metric_header(name: str, with_ci: bool = False) -> str:
    """Column header with units: 'latency p95 (ms)'; a CV has no unit: 'latency CV'."""
    label, qual, unit = split_metric(name)
    text = f"{label} {qual}".strip()
    if unit and qual != "CV" and unit not in label:  # "effective TFLOP/s (...)" names its unit already
        text += f" ({unit})"
    if with_ci:
        text += " [CI]"
    return text


def param_header(name: str) -> str:
    return _words(name)


def unit_of(name: str) -> str:
    label, qual, unit = split_metric(name)
    return "" if qual == "CV" else unit


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "²": r"\textsuperscript{2}",
    "µ": r"$\mu$",
    "—": "---",
    "–": "--",
}
_E_NOTATION = re.compile(r"(-?\d+(?:\.\d+)?)e([+-])0*(\d+)")


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def latex_number(text: str) -> str:
    """Escape a formatted value and write e-notation as a power of ten: 1.2e-05 -> $1.2\\times10^{-5}$."""
    out = latex_escape(text)
    return _E_NOTATION.sub(
        lambda m: f"${m.group(1)}\\times10^{{{'-' if m.group(2) == '-' else ''}{m.group(3)}}}$", out
    )
