"""The work a comparison's two sides do: both sides' parameters and FLOPs per token, and the ratio at
equal work (ARCHITECTURE.md, Floors: a baseline does the same work within 2%, or the difference is
stated beside the number).

  flops_per_token(rec, facts, metric)  FLOPs per token of the work the metric measures:
      the record's `flops` metric over its batch x seq_len tokens where it has one (e.g. a forward and
      backward step); else analytic (flops.py): a decode metric (tpot_*, decode_*) the FLOPs of one
      generated token after prompt_len cached ones (decode_flops); otherwise the forward FLOPs per
      token of a sequence of seq_len (or prompt_len) tokens, or of one token when the case has neither.
  work_ratio(kind, ratio, flops_ratio) the ratio per unit of work, same direction as the ratio:
      time: ratio / flops_ratio (the candidate's time per FLOP over the baseline's); throughput:
      ratio x flops_ratio (FLOP/s over FLOP/s); None for memory, accuracy and other metrics.
      E.g. a candidate at 0.70x the baseline's time doing 49.3 / 63.0 of its FLOPs per token runs at
      0.70 / 0.7825 = 0.89x the baseline's time per FLOP.
  with_work(comp, ...)                 the Comparison with those fields, its verdict re-decided.

Torch-free at import: the analytic FLOPs need torch (through the model config); without it only the
records' own FLOPs count.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from andromeda.verdicts.comparison import Comparison, Kind, decide

if TYPE_CHECKING:
    from andromeda.measure.facts import ModelFacts
    from andromeda.records import Record

DECODE_PREFIXES = ("tpot", "decode")  # metrics of one generated token after a prompt


def _int(params: dict[str, Any], key: str) -> int | None:
    v = params.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def flops_per_token(rec: Record, facts: ModelFacts | None, metric: str) -> float | None:
    """FLOPs per token of the work `metric` measures in `rec` (see the module docstring); None if unknown."""
    p = rec.params
    batch, seq, prompt = _int(p, "batch") or 1, _int(p, "seq_len"), _int(p, "prompt_len")
    recorded = rec.metrics.get("flops")
    if recorded is not None and math.isfinite(float(recorded)) and recorded > 0 and seq is not None:
        return float(recorded) / (batch * seq)
    if facts is None:
        return None
    try:
        from andromeda.measure.flops import decode_flops, forward_flops
    except ImportError:
        return None
    if metric.lower().startswith(DECODE_PREFIXES) and prompt is not None:
        return decode_flops(facts, 1, prompt).total
    n = seq or prompt or 1
    return forward_flops(facts, 1, n).total / n


def work_ratio(kind: Kind, ratio: float, flops_ratio: float | None) -> float | None:
    """The ratio at equal work (module docstring); None where it has no meaning or is unknown."""
    if flops_ratio is None or not (math.isfinite(ratio) and math.isfinite(flops_ratio)) or flops_ratio <= 0:
        return None
    if kind == "time":
        return ratio / flops_ratio
    if kind == "throughput":
        return ratio * flops_ratio
    return None


def with_work(comp: Comparison, b_rec: Record, c_rec: Record, base: ModelFacts | None, cand: ModelFacts | None,
              notes: tuple[str, ...] = ()) -> Comparison:
    """comp with both sides' parameters and FLOPs per token, their ratios (candidate / baseline), the
    ratio at equal work and `notes`; its verdict re-decided (the reason states the work beside the
    number when a ratio is beyond WORK_RTOL)."""
    fb, fc = flops_per_token(b_rec, base, comp.metric), flops_per_token(c_rec, cand, comp.metric)
    pb, pc = (base.params if base else None), (cand.params if cand else None)
    fr = fc / fb if (fb and fc) else None
    return decide(replace(
        comp, baseline_params=pb, candidate_params=pc, baseline_flops_per_token=fb, candidate_flops_per_token=fc,
        params_ratio=pc / pb if (pb and pc) else None, flops_ratio=fr, work_ratio=work_ratio(comp.kind, comp.ratio, fr),
        notes=tuple(notes)))


__all__ = ["flops_per_token", "work_ratio", "with_work", "DECODE_PREFIXES"]
