"""The claims report (`andromeda claims`): claims.md and claims.json from ClaimsResult.to_dict(). Torch-free."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from andromeda.records import json_safe
from andromeda.report.compare_report import _md_esc
from andromeda.report.format import MISSING


# ---- claims ---------------------------------------------------------------------------------------
def _bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def _ms(ms: Any) -> str:
    if ms is None or not math.isfinite(ms):
        return MISSING
    return f"{ms:.3g} ms" if ms < 999.5 else f"{ms / 1e3:.3g} s"


def claims_markdown(data: dict[str, Any]) -> str:
    """claims.md from ClaimsResult.to_dict()."""
    b = data["basis"]
    where = {"datasheet": f"{b['device']} datasheet", "measured": f"measured on {b['device']}"}
    rate = f"{b['peak_tflops']:.4g} TFLOP/s ({where.get(b['peak_source'], b['peak_source'])})"
    out = ["# Andromeda spec claims, checked", "",
           f"Generated {data['generated']} from {data['claims_file']}.", "",
           f"Basis: peak matmul rate {rate}; memory {b['memory_bytes'] / 1e9:.3g} GB.", ""]
    if b.get("note"):
        out += [f"> {b['note']}.", ""]
    out += ["| claim | preset | verdict | why |", "|:---|:---|:---|:---|"]
    out += [f"| {_md_esc(c['text'])} | {c['preset']} | **{c['verdict']}** | {_md_esc(c['reason'])} |"
            for c in data["claims"]]
    out.append("")
    for c in data["claims"]:
        d = c["details"]
        out += [f"## {c['text']}", "", f"Source: {c['where']}. Checked on preset `{c['preset']}`: **{c['verdict']}**.",
                "", c["reason"] + ".", ""]
        if c["kind"] == "latency":
            out += [f"Forward FLOPs (causal, logits at the last position): {d['flops']:.4g}; floor "
                    f"{_ms(d['floor_ms'])} at 100% of peak, i.e. the claim needs {100 * d['required_mfu']:.0f}% "
                    f"of peak. At most {d['max_tokens_at_peak']:,} tokens fit in {_ms(d['max_ms'])} at peak, "
                    f"{d['max_tokens_plausible']:,} at {100 * d['plausible_mfu']:g}% of peak.", "",
                    "| preset | params | floor | needed share of peak | floor meets | meets at "
                    f"{100 * d['plausible_mfu']:g}% of peak | measured |", "|:---|---:|---:|---:|:---|:---|---:|"]
            for s in d["presets"]:
                out.append(f"| {s['preset']} | {s['params']:,} | {_ms(s['floor_ms'])} | "
                           f"{100 * s['required_mfu']:.0f}% | {'yes' if s['meets_floor'] else 'no'} | "
                           f"{'yes' if s['meets_plausible'] else 'no'} | {_ms(s.get('measured_ms'))} |")
            best = [f"largest preset whose floor meets the claim: {d['largest_preset_floor'] or 'none'}",
                    f"at {100 * d['plausible_mfu']:g}% of peak: {d['largest_preset_plausible'] or 'none'}"]
            if "largest_preset_measured" in d:
                best.append(f"measured: {d['largest_preset_measured']}")
            out += ["", "Largest configuration that meets it: " + "; ".join(best) + ".", ""]
        elif c["kind"] == "memory":
            pub = f"{d['reference_published_params']:,.0f}" if d["reference_published_params"] else MISSING
            out += [f"Reference: {d['reference']} ({d['citation']}); shape {d['reference_shape']}, "
                    f"{d['reference_params']:,} parameters from that shape (published: {pub}).", "",
                    "| basis | Andromeda | reference | factor | claim met |", "|:---|---:|---:|---:|:---|"]
            for x in d["bases"]:
                fmt = (lambda v: f"{v:,.0f} B") if x["unit"] == "B/token" else _bytes
                out.append(f"| {x['basis']} | {fmt(x['andromeda'])} | {fmt(x['reference'])} | "
                           f"{x['factor']:.3g}x | {'yes' if x['met'] else 'no'} |")
            cross = d["crossover_tokens"]
            if cross is None:
                reach = f"Weights + KV cache never reach {d['factor']:g}x, at any context length."
            elif cross == 0:
                reach = f"Weights + KV cache are {d['factor']:g}x smaller or more at every context length."
            else:
                reach = f"Weights + KV cache reach {d['factor']:g}x from {cross:,} tokens of context (batch 1)."
            out += ["", reach,
                    f"The KV-cache advantage comes from multi-query attention ({d['andromeda_kv_heads']} KV head): "
                    f"with one KV head per query head it would be {d['andromeda_kv_per_token_if_mha']:,.0f} B/token.",
                    ""]
        elif c["kind"] == "context":
            out += ["| tokens | memory floor | time floor | fits |", "|---:|---:|---:|:---|"]
            out += [f"| {p['tokens']:,} | {_bytes(p['memory_floor_bytes'])} | {_ms(p['floor_ms'])} | "
                    f"{'yes' if p['fits'] else 'no'} |" for p in d["points"]]
            gb = d["device_memory_bytes"] / 1e9
            out += ["", f"Memory floor: the weights, the hidden states and one layer's K/V, the least any "
                        f"forward must hold (a real one needs more). By that floor up to "
                        f"{d['max_tokens_memory_floor']:,} tokens fit in {gb:.3g} GB; "
                        f"the preset was trained for {d['trained_max_seq_len']:,}.", ""]
        for m in d.get("measurements", []):
            out.append(f"- measured {m['preset']} at {m['tokens']:,} tokens x {m['batch']}: {m['status']}"
                       + (f", median {_ms(m['median_ms'])} (CI {_ms(m['ci_low_ms'])} to {_ms(m['ci_high_ms'])})"
                          if m["status"] == "ok" else f" ({m['message']})"))
        if d.get("measurements"):
            out.append("")
    return "\n".join(out)


def write_claims_report(data: dict[str, Any], out_dir: str | Path) -> dict[str, list[Path]]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "claims.md", out / "claims.json"
    md.write_text(claims_markdown(data), encoding="utf-8")
    js.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    return {"md": [md], "json": [js]}


__all__ = ["claims_markdown", "write_claims_report"]
