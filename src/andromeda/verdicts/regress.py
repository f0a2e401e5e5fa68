"""Matching records and gating on them.

- compare_records(): the sources of one run against a baseline source, case by case (same scenario
  and params); refuses models of different shapes unless allow_mismatch. compare_sources() packages it as
  a comparison of models (faster / slower, never a failure) or, with gate=True, as a gate.
- compare_runs(): an OLD and a NEW run, case by case: by case id (same manifest), else by
  (source, scenario, params). Regressions and improvements come with the statistics of comparison.py
  and a multiple-comparison correction across every comparison; `exit_code` is the gate:
  1 on a significant regression beyond the threshold and the noise floor, or on a case that ran in
  OLD and failed (oom/error) in NEW; 0 otherwise. A difference within either side's A/A noise floor,
  or of a case either side measured on a busy machine, is "inconclusive (noisy)" (verdicts/noise.py).

No torch at import (model facts for the shape check are resolved lazily); never prints or writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from andromeda.errors import AndromedaError
from andromeda.records import Record, load_records
from andromeda.verdicts.comparison import (
    Comparison,
    Correction,
    Thresholds,
    compare_samples,
    correct,
)
from andromeda.verdicts.noise import Floors, flag, gate
from andromeda.verdicts.run_comparison import RunComparison, StatusChange
from andromeda.verdicts.work import with_work

if TYPE_CHECKING:
    from andromeda.measure.facts import ModelFacts

SHAPE_FIELDS = ("params", "dim", "layers", "heads")  # facts that must agree unless allow_mismatch
PARAMS_RTOL = 0.01  # parameter counts may differ this much (norm gains, biases: implementation details)
FAILED = ("oom", "error")


# ---- records --------------------------------------------------------------------------------------
def params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def describe_case(scenario: str, params: Mapping[str, Any], source: str | None = None) -> str:
    """'latency andromeda:tiny mode=forward batch=1 seq_len=64'."""
    parts = [scenario] + ([source] if source else [])
    parts += [f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, (list, dict)) else v}"
              for k, v in params.items() if v is not None]
    return " ".join(str(p) for p in parts)


def metric_values(record: Record, metric: str) -> list[float] | None:
    """Raw samples of `metric` in a record, else its single value, else None."""
    s = record.samples.get(metric)
    if s:
        vals = [float(v) for v in s if v is not None and math.isfinite(float(v))]
        if vals:
            return vals
    v = record.metrics.get(metric)
    if v is None or not math.isfinite(float(v)):
        return None
    return [float(v)]


def load_run(path: str | Path) -> list[Record]:
    """Records of a run directory (its results.jsonl) or of a .jsonl file."""
    return load_records(Path(path), allow_file=True)


def _is_fit(r: Record) -> bool:
    return r.params.get("fit") is True  # sweep-level fit records: their samples are not repeats


def _as_list(metric: str | Sequence[str]) -> list[str]:
    metrics = [metric] if isinstance(metric, str) else list(dict.fromkeys(metric))
    if not metrics:
        raise AndromedaError("give at least one metric to compare")
    return metrics


# ---- model shapes ---------------------------------------------------------------------------------
def _source_facts(source: str) -> ModelFacts:
    """A model source's facts without its weights (sources/models.py), imported only when a shape is needed:
    comparisons stay torch-free until then. AndromedaError when the shape cannot be found (torch absent too)."""
    try:
        from andromeda.sources.models import source_facts as facts_of
    except ImportError as e:
        raise AndromedaError(f"cannot tell the shape of '{source}': {type(e).__name__}: {e}") from None
    return facts_of(source)


def shape_differences(base: ModelFacts, cand: ModelFacts, params_rtol: float = PARAMS_RTOL) -> list[str]:
    """['params 1,234 vs 1,000', ...]: the shape fields that differ (candidate first); dim, layers and
    heads exactly, params by more than params_rtol relative to the baseline."""
    out = []
    for f in SHAPE_FIELDS:
        b, c = getattr(base, f), getattr(cand, f)
        differs = abs(c - b) > params_rtol * abs(b) if f == "params" else b != c
        if differs:
            out.append(f"{f} {c:,} vs {b:,}")
    return out


# ---- sources of one run ---------------------------------------------------------------------------
def compare_records(
    records: Iterable[Record],
    baseline_source: str,
    candidates: Sequence[str] | None = None,
    *,
    metric: str | Sequence[str] = "latency_ms",
    thresholds: Thresholds | None = None,
    allow_mismatch: bool = False,
    facts: Mapping[str, ModelFacts | None] | None = None,
    correction: Correction = "holm",
    alpha: float = 0.05,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[Comparison]:
    """Each candidate source against the baseline source, case by case (same scenario and params).

    Uses Record.samples[metric] (raw samples), else the single value Record.metrics[metric]; only
    `ok` records, fit records left out. Model shapes (params, dim, layers, heads; from `facts`, else
    sources.models.source_facts()) must agree unless allow_mismatch. Every comparison carries both sides' parameters
    and FLOPs per token, their ratios and the ratio at equal work (verdicts/work.py); its reason states
    them where they differ by more than 2% or the shapes differ. candidates: default every other
    source. The correction runs across every comparison returned.
    """
    metrics = _as_list(metric)
    by_source: dict[str, dict[tuple[str, str], Record]] = {}
    for r in records:
        if r.status == "ok" and not _is_fit(r):
            by_source.setdefault(r.source, {}).setdefault((r.scenario, params_key(r.params)), r)
    if baseline_source not in by_source:
        raise AndromedaError(f"baseline source '{baseline_source}' has no ok records; sources: "
                             f"{', '.join(by_source) or '(none)'}")
    cands = list(candidates) if candidates is not None else [s for s in by_source if s != baseline_source]
    missing = [s for s in cands if s not in by_source]
    if missing:
        raise AndromedaError(f"candidate source '{missing[0]}' has no ok records; sources: {', '.join(by_source)}")
    if not cands:
        raise AndromedaError(f"no candidate source besides the baseline '{baseline_source}' in these records")
    known: dict[str, ModelFacts | None] = dict(facts or {})

    def get_facts(src: str) -> ModelFacts | None:
        if src not in known:
            try:
                known[src] = _source_facts(src)
            except AndromedaError:
                if not allow_mismatch:
                    raise
                known[src] = None
        return known[src]

    base_facts = get_facts(baseline_source)
    floors = Floors([r for recs in by_source.values() for r in recs.values()], metrics, n_boot=n_boot, seed=seed)
    run_floor = {s: floors.run(recs.values()) for s, recs in by_source.items()}
    out: list[Comparison] = []
    for cand in cands:
        cand_facts = get_facts(cand)
        unknown = base_facts is None or cand_facts is None
        diffs = [] if unknown else shape_differences(base_facts, cand_facts)
        if diffs and not allow_mismatch:
            raise AndromedaError(
                f"'{cand}' and '{baseline_source}' have different shapes ({'; '.join(diffs)}): a ratio "
                "would mix model size with implementation speed; pass allow_mismatch (--allow-mismatch) "
                "to compare them anyway, with parameter and FLOP ratios shown"
            )
        for key, b_rec in by_source[baseline_source].items():
            c_rec = by_source[cand].get(key)
            if c_rec is None:
                continue
            for m in metrics:
                bv, cv = metric_values(b_rec, m), metric_values(c_rec, m)
                if bv is None or cv is None:
                    continue
                comp = compare_samples(
                    bv, cv, m, thresholds=thresholds, alpha=alpha, ci=ci, n_boot=n_boot, seed=seed,
                    dtype=c_rec.info.get("dtype"), label=describe_case(b_rec.scenario, b_rec.params),
                    baseline_label=baseline_source, candidate_label=cand,
                )
                comp = with_work(comp, b_rec, c_rec, base_facts, cand_facts,  # both sides' work, always
                                 tuple(diffs) or (("model shape unknown",) if unknown else ()))
                out.append(gate(comp, [floors.case(b_rec, m), floors.case(c_rec, m), run_floor[baseline_source],
                                       run_floor[cand]], [flag(b_rec, baseline_source), flag(c_rec, cand)]))
    if not out:
        raise AndromedaError(f"no case has {', '.join(metrics)} for both '{baseline_source}' and a candidate "
                             f"({', '.join(cands)}): they ran different scenarios or parameters")
    return correct(out, correction)


# ---- two runs -------------------------------------------------------------------------------------
def match_records(old: Sequence[Record], new: Sequence[Record]) -> tuple[list[tuple[Record, Record, str]],
                                                                      list[Record], list[Record]]:
    """Pairs (old, new, how) with how = "case_id" or "params"; and the unmatched of each side.

    A record pairs by (case_id, params) first (the same manifest), else by (source, scenario,
    params) (ids differ when device, dtype or seed differ). Each old record pairs at most once.
    """
    by_id: dict[tuple[str, str], int] = {}
    by_desc: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(old):
        pk = params_key(r.params)
        by_id.setdefault((r.case_id, pk), i)
        by_desc.setdefault((r.source, r.scenario, pk), i)
    used: set[int] = set()
    pairs: list[tuple[Record, Record, str]] = []
    unmatched_new: list[Record] = []
    for r in new:
        pk = params_key(r.params)
        i = by_id.get((r.case_id, pk))
        how = "case_id"
        if i is None or i in used:
            i, how = by_desc.get((r.source, r.scenario, pk)), "params"
        if i is None or i in used:
            unmatched_new.append(r)
            continue
        used.add(i)
        pairs.append((old[i], r, how))
    return pairs, [r for i, r in enumerate(old) if i not in used], unmatched_new


def compare_runs(
    old: str | Path | Sequence[Record],
    new: str | Path | Sequence[Record],
    *,
    metric: str | Sequence[str] = "latency_ms",
    thresholds: Thresholds | None = None,
    correction: Correction = "holm",
    alpha: float = 0.05,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> RunComparison:
    """OLD (baseline) vs NEW (candidate), case by case, for every metric; corrected across all."""
    metrics = _as_list(metric)
    th = thresholds or Thresholds()
    old_name, new_name = (str(x) if isinstance(x, (str, Path)) else "(records)" for x in (old, new))
    old_recs = load_run(old) if isinstance(old, (str, Path)) else list(old)
    new_recs = load_run(new) if isinstance(new, (str, Path)) else list(new)
    pairs, lost_old, lost_new = match_records([r for r in old_recs if not _is_fit(r)],
                                              [r for r in new_recs if not _is_fit(r)])
    if not pairs:
        raise AndromedaError(f"no case of {new_name} matches one of {old_name} (by case id or by source, "
                             "scenario and params): these runs measured different things")
    present = {m for r in (*old_recs, *new_recs) for m in (*r.metrics, *r.samples)}
    absent = [m for m in metrics if m not in present]
    if absent:
        raise AndromedaError(f"metric '{absent[0]}' is in neither run; metrics there: "
                             f"{', '.join(sorted(present)[:20])}{' ...' if len(present) > 20 else ''}")
    floors = Floors([*old_recs, *new_recs], metrics, n_boot=n_boot, seed=seed)
    floor_old, floor_new = floors.run(old_recs), floors.run(new_recs)
    comps: list[Comparison] = []
    changes: list[StatusChange] = []
    without = 0
    for o, n, _how in pairs:
        label = describe_case(n.scenario, n.params, n.source)
        if o.status != n.status:
            changes.append(StatusChange(label, o.status, n.status, n.message,
                                        regression=o.status == "ok" and n.status in FAILED))
        if o.status != "ok" or n.status != "ok":
            continue
        found = False
        for m in metrics:
            ov, nv = metric_values(o, m), metric_values(n, m)
            if ov is None or nv is None:
                continue
            found = True
            comp = compare_samples(ov, nv, m, thresholds=th, alpha=alpha, ci=ci, n_boot=n_boot, seed=seed,
                                   dtype=n.info.get("dtype"), label=label, baseline_label="OLD", candidate_label="NEW")
            comps.append(gate(comp, [floors.case(o, m), floors.case(n, m), floor_old, floor_new],
                              [flag(o, "OLD"), flag(n, "NEW")]))
        without += not found
    return RunComparison(
        old=old_name, new=new_name, metrics=metrics, comparisons=correct(comps, correction),
        status_changes=changes,
        unmatched_old=[describe_case(r.scenario, r.params, r.source) for r in lost_old],
        unmatched_new=[describe_case(r.scenario, r.params, r.source) for r in lost_new],
        matched_by_id=sum(h == "case_id" for *_, h in pairs),
        matched_by_params=sum(h == "params" for *_, h in pairs),
        without_metric=without, correction=correction, alpha=alpha, thresholds=th,
        noise_floor_old=floor_old, noise_floor_new=floor_new,
    )


def compare_sources(
    run: str | Path | Sequence[Record],
    baseline_source: str,
    candidates: Sequence[str] | None = None,
    *,
    metric: str | Sequence[str] = "latency_ms",
    thresholds: Thresholds | None = None,
    allow_mismatch: bool = False, facts: Mapping[str, ModelFacts | None] | None = None,
    correction: Correction = "holm", alpha: float = 0.05, seed: int = 0, gate: bool = False,
) -> RunComparison:
    """compare_records() over one run, packaged like compare_runs(): a comparison of models (faster / slower,
    exit code 0), or with `gate` a gate like compare_runs()'s."""
    metrics = _as_list(metric)
    th = thresholds or Thresholds()
    recs = load_run(run) if isinstance(run, (str, Path)) else list(run)
    comps = compare_records(recs, baseline_source, candidates, metric=metrics, thresholds=th, facts=facts,
                            allow_mismatch=allow_mismatch, correction=correction, alpha=alpha, seed=seed)
    cands = list(dict.fromkeys(c.candidate_label for c in comps))
    floors = Floors(recs, metrics, seed=seed)
    return RunComparison(
        old=str(run) if isinstance(run, (str, Path)) else "(records)", new=", ".join(cands),
        metrics=metrics, comparisons=comps, matched_by_params=len({(c.label, c.candidate_label) for c in comps}),
        correction=correction, alpha=alpha, thresholds=th,
        noise_floor_old=floors.run(r for r in recs if r.source == baseline_source),
        noise_floor_new=floors.run(r for r in recs if r.source in cands),
        baseline_source=baseline_source, gate=gate,
    )


def compare(
    old: str | Path,
    new: str | Path | None = None,
    *,
    baseline: str | None = None,
    candidates: Sequence[str] | None = None,
    allow_mismatch: bool = False,
    gate: bool = False,
    **kw: Any,
) -> RunComparison:
    """`andromeda compare`: two runs (OLD NEW, a regression gate), or the sources of one run against `baseline`
    (a comparison of models; a gate too with `gate`)."""
    if baseline is not None:
        if new is not None:
            raise AndromedaError("--baseline compares the sources of one run: give one run, not two")
        return compare_sources(old, baseline, candidates or None, allow_mismatch=allow_mismatch, gate=gate, **kw)
    if new is None:
        raise AndromedaError("give two runs (OLD NEW), or one run and --baseline SOURCE")
    if candidates or allow_mismatch or gate:
        raise AndromedaError("--candidate, --allow-mismatch and --gate go with --baseline (the sources of one run; "
                             "two runs are always a gate)")
    return compare_runs(old, new, **kw)


__all__ = [
    "compare", "compare_records", "compare_runs", "compare_sources", "match_records",
    "load_run", "shape_differences", "metric_values", "describe_case", "params_key",
]
