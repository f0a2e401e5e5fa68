"""The report's first screen: what the run learned, per model, and the comparison's verdicts.

Headline numbers, one column each when the run measured it, one row per model (source):
  latency      latency_ms of the latency scenario at one point every model ran: mode forward if there,
               the smallest batch, the longest sequence
  throughput   the highest tokens_per_s of the throughput scenario (over its batch sizes)
  decode       decode_tokens_per_s of the generation scenario with the KV cache, at a point all ran
  memory       peak memory of the memory scenario (peak_mib, or peak_allocated_mib on CUDA) at a point all ran:
               inference if there, the smallest batch, the longest sequence
  perplexity   ppl of the perplexity scenario at a point all ran (the longest context), else the final
               validation perplexity of a training run
The best value of each column (lowest time, memory, perplexity; highest throughput) is marked when two or
more models have it. Comparisons come from <run>/compare/**/compare.json (verdicts/compare_run.py). Torch-free.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from andromeda.records import Record
from andromeda.report.format import fmt_number


@dataclass
class HeadlineColumn:
    title: str  # what and where: "forward latency (batch 1, 256 tokens)"
    unit: str
    better: str  # "lower" | "higher"
    values: dict[str, float] = field(default_factory=dict)  # source -> value

    @property
    def best(self) -> str | None:
        if len(self.values) < 2:
            return None
        pick = min if self.better == "lower" else max
        return pick(self.values, key=self.values.__getitem__)

    def cell(self, source: str) -> str:
        v = self.values.get(source)
        return "" if v is None else fmt_number(v, 4)

    def sentence(self) -> str | None:
        """'forward latency (batch 1, 256 tokens): lowest andromeda:tiny, 1.8 ms, 1.52x better than xt:tiny'."""
        best = self.best
        if best is None:
            return None
        rest = sorted((s for s in self.values if s != best), key=self.values.__getitem__,
                      reverse=self.better == "higher")
        nxt = rest[0]
        a, b = self.values[best], self.values[nxt]
        factor = (b / a if self.better == "lower" else a / b) if a > 0 and b > 0 else math.nan
        word = "lowest" if self.better == "lower" else "highest"
        by = f", {factor:.2f}x better than {nxt}" if math.isfinite(factor) else ""
        return f"{self.title}: {word} {best}, {fmt_number(self.values[best], 4)} {self.unit}{by}"


@dataclass
class Headline:
    sources: list[str]
    columns: list[HeadlineColumn]

    @property
    def sentences(self) -> list[str]:
        return [s for c in self.columns if (s := c.sentence())]


def _ok(records: Sequence[Record], scenario: str, metric: str) -> list[Record]:
    return [r for r in records if r.scenario == scenario and r.status == "ok" and not r.params.get("fit")
            and isinstance(r.metrics.get(metric), (int, float)) and math.isfinite(r.metrics[metric])]


def _at_common_point(records: Sequence[Record], metric: str, rank: Callable[[dict], tuple],
                     keys: Sequence[str]) -> tuple[dict[str, float], dict[str, Any]] | None:
    """{source: value} at the point (the params `keys`) every source with this metric ran, the best by rank."""
    by_source: dict[str, dict[tuple, float]] = {}
    points: dict[tuple, dict[str, Any]] = {}
    for r in records:
        point = {k: r.params.get(k) for k in keys}
        key = tuple(json.dumps(point[k], sort_keys=True, default=str) for k in keys)
        by_source.setdefault(r.source, {})[key] = float(r.metrics[metric])
        points[key] = point
    if not by_source:
        return None
    common = set.intersection(*(set(v) for v in by_source.values()))
    if not common:
        return None
    key = min(common, key=lambda k: rank(points[k]))
    return {s: v[key] for s, v in by_source.items()}, points[key]


def _num(x: Any, default: float = 0.0) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else default


def _where(point: dict[str, Any]) -> str:
    parts = []
    if point.get("batch") is not None:
        parts.append(f"batch {point['batch']}")
    for k, what in (("seq_len", "tokens"), ("prompt_len", "prompt tokens")):
        if point.get(k) is not None:
            parts.append(f"{point[k]} {what}")
    return f" ({', '.join(parts)})" if parts else ""


def headline(records: Sequence[Record]) -> Headline:
    cols: list[HeadlineColumn] = []

    lat = _ok(records, "latency", "latency_ms")
    got = _at_common_point(lat, "latency_ms", lambda p: (p.get("mode") != "forward", _num(p.get("batch"), 1e9),
                                                           -_num(p.get("seq_len"))), ("mode", "batch", "seq_len"))
    if got:
        vals, p = got
        cols.append(HeadlineColumn(f"{p.get('mode') or ''} latency{_where(p)}".strip(), "ms", "lower", vals))

    thr: dict[str, float] = {}
    for r in _ok(records, "throughput", "tokens_per_s"):
        thr[r.source] = max(thr.get(r.source, 0.0), float(r.metrics["tokens_per_s"]))
    if thr:
        cols.append(HeadlineColumn("peak throughput (over batch sizes)", "tokens/s", "higher", thr))

    gen = [r for r in _ok(records, "generation", "decode_tokens_per_s") if r.params.get("use_cache", True)]
    got = _at_common_point(gen, "decode_tokens_per_s", lambda p: (-_num(p.get("prompt_len")), _num(p.get("batch"))),
                           ("prompt_len", "gen_len", "batch", "cache"))
    if got:
        vals, p = got
        cols.append(HeadlineColumn(f"decode with KV cache{_where(p)}", "tokens/s", "higher", vals))

    for metric in ("peak_mib", "peak_allocated_mib"):
        mem = _ok(records, "memory", metric)
        got = _at_common_point(mem, metric, lambda p: (p.get("mode") != "inference", _num(p.get("batch"), 1e9),
                                                       -_num(p.get("seq_len"))), ("mode", "batch", "seq_len", "cache"))
        if got:
            vals, p = got
            cols.append(HeadlineColumn(f"peak memory, {p.get('mode')}{_where(p)}", "MiB", "lower", vals))
            break

    ppl = _ok(records, "perplexity", "ppl")
    got = _at_common_point(ppl, "ppl", lambda p: (-_num(p.get("seq_len")),), ("data", "seq_len", "cache"))
    if got:
        vals, p = got
        cols.append(HeadlineColumn(f"perplexity{_where(p)}", "", "lower", vals))
    else:
        final = {r.source: float(r.metrics["val_ppl"]) for r in _ok(records, "training", "val_ppl")
                 if r.params.get("final")}
        if final:
            cols.append(HeadlineColumn("validation perplexity after training", "", "lower", final))

    sources = list(dict.fromkeys(s for c in cols for s in c.values))
    return Headline(sources, cols)


@dataclass
class ComparisonLink:
    href: str  # relative to the run directory
    title: str
    kind: str  # "models" | "gate"
    result: str  # the comparison's headline line
    rows: list[dict[str, Any]]  # per candidate (models) or empty


def comparison_links(run_dir: Path) -> list[ComparisonLink]:
    """Every comparison written under <run>/compare (compare.json beside its compare.html)."""
    out = []
    base = Path(run_dir) / "compare"
    if not base.is_dir():
        return out
    for path in sorted(base.glob("**/compare.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        summary = data.get("summary") or [""]
        html = path.with_name("compare.html")
        href = (html if html.is_file() else path).relative_to(run_dir).as_posix()
        kind = data.get("kind", "gate")
        if data.get("baseline_source"):
            title = f"models against {data['baseline_source']}" + (" (a gate)" if kind == "gate" else "")
        else:
            title = f"regression gate: {data.get('old')} -> {data.get('new')}"
        out.append(ComparisonLink(href, title, kind, summary[-1], list(data.get("by_candidate") or [])))
    return out


__all__ = ["Headline", "HeadlineColumn", "headline", "ComparisonLink", "comparison_links"]
