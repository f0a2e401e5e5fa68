"""Where a training step's device time goes, by category: the part of train_speed.py's --profile that is not the
training, kept here so that it is small, pure and tested (tests/benchmarks/test_profile_split.py).

categorize(name, scope) puts one kernel (CUDA: a kernel, memcpy or memset event of torch.profiler; CPU: an op,
timed by its self time) into one of CATEGORIES:

  matmul            GEMMs: cuBLAS/cuBLASLt/CUTLASS kernels (`*gemm*`, `nvjet_*`, `*xmma*`, `cutlass*`), inductor's
                    mm templates (`triton_tem_fused_mm_*`), aten::mm / addmm / bmm on a CPU
  attention         our Triton kernels (flash_fwd, flash_bwd_dq, flash_bwd_dkdv, flash_fwd_sm90,
                    alibi_first_block), FlashAttention / cuDNN SDPA / memory-efficient kernels, inductor's
                    non-mm templates (FlexAttention), and everything inside an attention op
  elementwise_norm  inductor's fused kernels (`triton_poi_` / `triton_red_` / `triton_per_`), eager elementwise and
                    reduction kernels, layer / RMS norm, softmax
  loss_head         the LM head + loss: everything inside our fused linear cross-entropy (its GEMMs too), liger's
                    and cut-cross-entropy's kernels, cross_entropy / nll_loss / log_softmax
  optimizer         multi_tensor_apply kernels (fused AdamW, foreach: gradient norms, clipping, the float32
                    masters' copies), bitsandbytes' optimizer kernels, everything inside Optimizer.step
  copy_memset       Memcpy / Memset, copy and fill kernels, `contiguous`, inductor kernels that only copy or cast
  communication     NCCL kernels, c10d ops
  other             the rest (embedding gathers, index kernels, host-side ops' overhead on a CPU, ...)

`scope` is the category the enclosing CPU ops imply (scope_category of the nearest op that implies one): a kernel
launched inside the fused loss, an attention op or Optimizer.step belongs to that, whatever its name. The
communication kernels stay communication everywhere.

split(prof, steps, device) reads a finished torch.profiler.profile: per step, the milliseconds and share of each
category, the same by phase (backward: under the autograd engine, activation checkpointing's recomputed forward
included; optimizer: the optimizer category; forward: the rest, the micro-batches' forward and the data), the top
kernels by time (per name and category) with their counts, and on CUDA the time some kernel ran (the union of
their intervals: `busy_ms`; `kernel_ms` sums them, overlaps counted twice). A device event's launching op is the
one its linked_correlation_id names (recent torch), else the parent of the runtime call (cudaLaunchKernel, ...)
that shares its correlation id; `without_launching_op` counts those with neither, categorized by name alone, and
`device_events` the events by kind (GPU copies of record_function ranges are not counted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CATEGORIES = ("matmul", "attention", "elementwise_norm", "loss_head", "optimizer", "copy_memset", "communication",
              "other")
PHASES = ("forward", "backward", "optimizer")
NAME_CHARS = 200  # the longest kernel name kept in the top list (templated names run to a thousand characters)

_COMM = ("nccl", "c10d::", "record_param_comms")
_LOSS = ("linearcrossentropy", "linear_cross_entropy", "cross_entropy", "crossentropy", "nll_loss", "log_softmax",
         "logsoftmax", "liger", "_cce_")
_OPT = ("multi_tensor_apply", "fusedadam", "fused_adam", "_foreach_", "optimizer", "lpnorm_cleanup")
_ATTN = ("flash", "fmha", "sdpa", "scaled_dot_product", "scaleddotproduct", "attention", "alibi_first_block")
_MATMUL = ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitkreduce", "gemv")
_COPY = ("memcpy", "memset", "copy_kernel", "direct_copy", "catarraybatchedcopy", "fillfunctor", "contiguous")
_ELEMENTWISE = ("elementwise_kernel", "reduce_kernel", "layer_norm", "layernorm", "rms_norm", "rmsnorm", "softmax",
                "norm_kernel")
_ATEN_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "_addmm_activation", "_scaled_mm",
                "mkldnn_linear"}
_ATEN_COPY = {"copy", "_to_copy", "to", "clone", "contiguous", "cat", "stack", "fill", "zero", "zeros", "zeros_like",
              "ones", "ones_like", "full", "new_zeros", "constant_pad_nd"}
_ATEN_ELEMENTWISE = {"add", "sub", "rsub", "mul", "div", "neg", "exp", "exp2", "log", "log2", "pow", "sqrt", "rsqrt",
                     "reciprocal", "abs", "sign", "clamp", "clamp_min", "clamp_max", "maximum", "minimum", "where",
                     "masked_fill", "silu", "gelu", "relu", "sigmoid", "tanh", "sin", "cos", "square", "addcmul",
                     "addcdiv", "lerp", "mean", "sum", "amax", "amin", "max", "min", "norm", "linalg_vector_norm",
                     "logsumexp", "eq", "ne", "lt", "le", "gt", "ge", "native_layer_norm", "layer_norm", "rms_norm",
                     "_fused_rms_norm", "_softmax", "softmax", "_softmax_backward_data", "native_dropout",
                     "var_mean", "cumsum", "erf", "floor", "round"}
# op names inductor puts into a kernel's name that move or cast data and compute nothing
_INDUCTOR_COPY = ("_to_copy", "clone", "copy", "cat", "stack", "view", "_unsafe_view", "reshape", "permute",
                  "transpose", "expand", "slice", "select", "unsqueeze", "squeeze", "split_with_sizes", "split",
                  "zeros", "full", "fill", "new_zeros", "constant_pad_nd", "t")
_INDUCTOR = re.compile(r"^triton_(poi|red|per|tem|for|mix)_(?:fused_)?(.*?)(?:_\d+)?$")


def _has(low: str, keys: Iterable[str]) -> bool:
    return any(k in low for k in keys)


def _aten(low: str) -> str | None:
    """The op's base name without aten::, a trailing in-place `_` or `_backward` (None: not an aten op)."""
    if not low.startswith("aten::"):
        return None
    base = low[6:].rstrip("_")
    return base[:-9] if base.endswith("_backward") else base


def _copy_only(ops: str) -> bool:
    """Whether an inductor kernel's op list ("_to_copy_clone") holds copy/cast/view ops and nothing else."""
    seen = False
    while ops:
        for op in sorted(_INDUCTOR_COPY, key=len, reverse=True):
            if ops == op or ops.startswith(op + "_"):
                ops, seen = ops[len(op) + 1:], True
                break
        else:
            return False
    return seen


def scope_category(op: str) -> str | None:
    """The category a CPU op implies for everything launched inside it (None: it implies none)."""
    low = op.lower()
    if _has(low, _COMM):
        return "communication"
    if _has(low, ("linearcrossentropy", "linear_cross_entropy", "cross_entropy", "nll_loss", "liger")):
        return "loss_head"
    if _has(low, ("scaled_dot_product", "scaleddotproduct", "flash_attention", "flashattention", "flex_attention",
                  "flexattention", "efficient_attention", "cudnn_attention", "andromeda::flash")):
        return "attention"
    if low.startswith("optimizer.") or _has(low, ("_foreach_", "_fused_adam", "_amp_foreach")):
        return "optimizer"
    return None


def categorize(name: str, scope: str | None = None) -> str:
    """One of CATEGORIES for a kernel (or, on a CPU, an op) called `name` inside ops implying `scope`."""
    low = name.lower()
    if _has(low, _COMM):
        return "communication"
    if scope is not None:
        return scope
    if _has(low, _LOSS):
        return "loss_head"
    if _has(low, _OPT):
        return "optimizer"
    if _has(low, _ATTN):
        return "attention"
    if m := _INDUCTOR.match(low):
        kind, ops = m.groups()
        if kind == "tem":  # inductor's templates: matmuls, or FlexAttention
            return "matmul" if re.search(r"(^|_)(add|b|baddb)?mm(_|$)", ops) else "attention"
        return "copy_memset" if _copy_only(ops) else "elementwise_norm"
    base = _aten(low)
    if _has(low, _MATMUL) or base in _ATEN_MATMUL:
        return "matmul"
    if _has(low, _COPY) or base in _ATEN_COPY:
        return "copy_memset"
    if _has(low, _ELEMENTWISE) or base in _ATEN_ELEMENTWISE:
        return "elementwise_norm"
    return "other"


def busy_us(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals."""
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total, end = total + (e - s), e
        elif e > end:
            total, end = total + (e - end), e
    return total


def aggregate(events: Iterable[tuple[str, float, str, str]], steps: int, top: int = 15) -> dict:
    """Per step: ms, share and count of each category (every one of CATEGORIES, zeros included), ms by phase and
    category, and the `top` kernels by total time. events: (name, microseconds, category, phase)."""
    cats = {c: {"ms": 0.0, "share": 0.0, "count": 0.0} for c in CATEGORIES}
    phases = {p: dict.fromkeys(CATEGORIES, 0.0) for p in PHASES}
    names: dict[tuple[str, str], list] = {}  # a kernel in two categories (a GEMM in the loss and in a block): two
    for name, us, cat, phase in events:
        ms = us / 1e3 / steps
        cats[cat]["ms"] += ms
        cats[cat]["count"] += 1 / steps
        phases[phase][cat] += ms
        k = names.setdefault((name, cat), [0.0, 0.0])
        k[0] += ms
        k[1] += 1 / steps
    total = sum(c["ms"] for c in cats.values())
    for c in cats.values():
        c["share"] = c["ms"] / total if total > 0 else 0.0
    best = sorted(names.items(), key=lambda kv: -kv[1][0])[:top]
    return {"steps": steps, "total_ms": total, "categories": cats,
            "by_phase": {p: {**v, "total": sum(v.values())} for p, v in phases.items()},
            "top": [{"name": n[:NAME_CHARS], "category": c, "ms": ms, "share": ms / total if total > 0 else 0.0,
                     "count": cnt} for (n, c), (ms, cnt) in best]}


def split(prof, steps: int, device: str, top: int = 15) -> dict:
    """The breakdown of a finished torch.profiler.profile over `steps` steps. device "cuda": the device events
    (kernels, memcpy, memset), each in the scope of the CPU op that launched it; else the CPU ops' self time."""
    from torch.autograd import DeviceType

    evs = prof.events()
    memo: dict[int, tuple[str | None, bool]] = {}

    def scope(e) -> tuple[str | None, bool]:  # (the innermost implied category, under the autograd engine)
        chain = []
        while e is not None and id(e) not in memo:
            chain.append(e)
            e = e.cpu_parent
        cat, bwd = memo[id(e)] if e is not None else (None, False)
        for x in reversed(chain):
            cat = scope_category(x.name) or cat
            bwd = bwd or x.name.startswith("autograd::engine::evaluate_function")
            memo[id(x)] = (cat, bwd)
        return cat, bwd

    def row(name, us, sc) -> tuple[str, float, str, str]:
        cat = categorize(name, sc[0])
        return name, us, cat, "optimizer" if cat == "optimizer" else "backward" if sc[1] else "forward"

    out, spans, kinds, orphans = [], [], {}, 0
    if device == "cuda":
        # The op that launched a device event: the op its linked_correlation_id names (FunctionEvent has it in
        # recent torch), else the runtime/driver call (cudaLaunchKernel, cuLaunchKernel, cudaMemcpyAsync, ...) of
        # the same CUPTI correlation id, a CPU event on the launching thread: its parents are the ops around it.
        ops, calls = {}, {}
        for e in evs:
            if e.device_type == DeviceType.CPU and not e.is_async:
                if getattr(e, "linked_correlation_id", 0) > 0 or e.name.startswith("cu"):
                    calls[e.id] = e
                else:
                    ops[e.id] = e
        for e in evs:
            if e.device_type != DeviceType.CUDA:
                continue
            kind = str(getattr(e, "activity_type", None) or ("gpu_user_annotation" if getattr(
                e, "is_user_annotation", False) else e.name.split(" ")[0].lower() if e.name.startswith("Mem")
                else "kernel"))
            skip = bool(getattr(e, "is_user_annotation", False)) or "annotation" in kind or "sync" in kind
            kind += " (not counted)" if skip else ""
            kinds[kind] = kinds.get(kind, 0) + 1
            if skip:  # a record_function range mirrored on the GPU's timeline, or a wait: not a kernel's time
                continue
            link = getattr(e, "linked_correlation_id", 0)
            op = ops.get(link) if link > 0 else None
            op = op if op is not None else calls.get(e.id)
            orphans += op is None
            tr = e.time_range
            out.append(row(e.name, tr.end - tr.start, scope(op) if op is not None else (None, False)))
            spans.append((tr.start, tr.end))
    else:
        for e in evs:
            if e.device_type == DeviceType.CPU and not e.is_async:
                out.append(row(e.name, max(0.0, e.self_cpu_time_total), scope(e)))
    res = aggregate(out, steps, top)
    res["source"] = "CUDA kernels, memcpy and memset" if device == "cuda" else "CPU ops, self time"
    res["kernel_ms"] = res["total_ms"]
    res["busy_ms"] = busy_us(spans) / 1e3 / steps if device == "cuda" else None
    if device == "cuda":
        res["device_events"] = kinds  # by the profiler's activity type, over all the steps
        res["without_launching_op"] = orphans  # categorized by their name alone
    return res


def brief(p: dict) -> str:
    """One line for a row's profile as the row ends: the categories' shares, the kernel, busy and step times."""
    if p.get("status") != "ok":
        return f"{'':7s}profile {p.get('status')}: {p.get('message', '')}"
    cats = ", ".join(f"{c} {100 * v['share']:.1f}%" for c, v in p["categories"].items() if v["ms"] > 0)
    busy = f", busy {p['busy_ms']:.1f}" if p.get("busy_ms") is not None else ""
    return f"{'':7s}profile: {cats}; {p['total_ms']:.1f} ms{busy} of a {p.get('step_ms') or 0:.1f} ms step"


def table(rows: list[dict]) -> list[str]:
    """Side by side, one column per profiled row (its "profile" key): ms per step and share of each category; at
    each seq, later columns also say their ms minus the first column's."""
    cols = [r for r in rows if isinstance(r.get("profile"), dict) and "categories" in r["profile"]]
    if not cols:
        return []
    first = {}
    for r in cols:
        first.setdefault(r["seq"], r)
    w = 30
    sub = f"{'ms':>9s} {'share':>6s}{'vs first':>9s}".rjust(w)
    lines = [f"{'':17s}" + "".join(f"{(str(r['seq']) + ' ' + r['variant'])[:w]:>{w}s}" for r in cols),
             f"{'ms/step, share':17s}" + sub * len(cols)]

    def cell(r, ms, share=None, ref=None) -> str:
        s = f"{ms:9.1f} " + (f"{100 * share:5.1f}%" if share is not None else " " * 6)
        s += f" {ms - ref:+8.1f}" if ref is not None and first[r["seq"]] is not r else " " * 9
        return f"{s:>{w}s}"

    for c in CATEGORIES:
        lines.append(f"{c:17s}" + "".join(cell(r, r["profile"]["categories"][c]["ms"],
                                               r["profile"]["categories"][c]["share"],
                                               first[r["seq"]]["profile"]["categories"][c]["ms"]) for r in cols))
    lines.append(f"{'total':17s}" + "".join(cell(r, r["profile"]["total_ms"], None, first[r["seq"]]["profile"]
                                                 ["total_ms"]) for r in cols))
    for p in PHASES:
        lines.append(f"{'  ' + p:17s}" + "".join(cell(r, r["profile"]["by_phase"][p]["total"], None,
                                                      first[r["seq"]]["profile"]["by_phase"][p]["total"])
                                                 for r in cols))
    if all(r["profile"].get("busy_ms") is not None for r in cols):
        lines.append(f"{'busy (union)':17s}" + "".join(cell(r, r["profile"]["busy_ms"], None, first[r["seq"]]
                                                            ["profile"]["busy_ms"]) for r in cols))
    if all(r["profile"].get("step_ms") for r in cols):
        lines.append(f"{'step wall':17s}" + "".join(cell(r, r["profile"]["step_ms"], None, first[r["seq"]]
                                                         ["profile"]["step_ms"]) for r in cols))
    return lines
