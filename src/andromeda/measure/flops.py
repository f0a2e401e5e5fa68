"""Analytic FLOPs of a decoder transformer, achieved TFLOP/s and MFU. Pure Python.

Conventions (ARCHITECTURE.md):
- a matmul (M x K) @ (K x N) is 2*M*N*K FLOPs; only matmuls are counted (norms, softmax,
  activations, rotary and embedding look-ups are not), as in the usual MFU accounting;
- attention scores (q @ k^T) and p @ v are 2*B*H*pairs*D each, where pairs is the number of
  (query, key) pairs actually computed: Nq*Nk without a mask, and for causal attention only
  the pairs at or before each query (N*(N+1)/2 for a full prefill, n+1 for one new token
  after n cached ones); all H query heads count, whatever the number of KV heads;
- MQA/GQA shrink only the K and V projections (kv_heads * head_dim outputs);
- backward = 2x forward for matmuls; attention 2.5x forward where the kernel recomputes the
  probabilities in backward (FlashAttention style: scores again, then dP, dV, dQ, dK), 2x where
  forward saved them (eager attention, SDPA's math kernel): see attention_recomputes();
- activation checkpointing re-runs the blocks' forward in backward: hardware FLOPs (HFU) add it,
  model FLOPs (MFU) do not (recomputed_forward_flops).

MFU is against the device's datasheet peak (PEAK_TFLOPS); DATASHEET_GB_PER_S holds the memory
bandwidth the decode floor is also held against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from andromeda.measure.facts import ModelFacts

LmHead = Literal["all", "last", "none"]


@dataclass(frozen=True)
class FlopBreakdown:
    projections: float  # q, k, v, out projections, all layers
    attention: float  # q @ k^T and p @ v, all layers
    ff: float  # feed-forward matmuls, all layers
    lm_head: float  # dim -> vocab projection
    total: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", self.projections + self.attention + self.ff + self.lm_head)

    @property
    def matmul_nonattention(self) -> float:
        """Everything but attention scores/PV: the FLOPs of the model's weight matmuls."""
        return self.projections + self.ff + self.lm_head

    def __add__(self, other: FlopBreakdown) -> FlopBreakdown:
        return FlopBreakdown(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in _PARTS})

    def scaled(self, factor: float) -> FlopBreakdown:
        return FlopBreakdown(**{f.name: getattr(self, f.name) * factor for f in _PARTS})

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_PARTS = [f for f in fields(FlopBreakdown) if f.init]


def attention_pairs(n_new: int, past: int = 0, *, causal: bool) -> int:
    """(query, key) pairs per sequence and head: n_new queries attend to past + n_new keys."""
    if causal:
        # query i (1-based among the new ones) sees past + i keys
        return n_new * past + n_new * (n_new + 1) // 2
    return n_new * (past + n_new)


def forward_flops(
    facts: ModelFacts,
    batch: int,
    seq: int,
    *,
    causal: bool | None = None,
    lm_head: LmHead = "all",
    past_len: int = 0,
) -> FlopBreakdown:
    """Forward FLOPs for `batch` sequences of `seq` new tokens (after `past_len` cached ones).

    causal: None = the model's own setting. lm_head: logits for all positions, the last one
    of each sequence (generation), or none (hidden states only).
    """
    if batch < 0 or seq < 0 or past_len < 0:
        raise ValueError(f"batch, seq and past_len must be >= 0, got {batch}, {seq}, {past_len}")
    if lm_head not in ("all", "last", "none"):
        raise ValueError(f"lm_head must be 'all', 'last' or 'none', got {lm_head!r}")
    causal = facts.causal if causal is None else causal
    tokens = batch * seq
    d, h, hkv, hd, L = facts.dim, facts.heads, facts.kv_heads, facts.head_dim, facts.layers

    # per layer: q and out are dim <-> H*D; k and v are dim -> H_kv*D
    proj = 2 * tokens * d * (2 * h * hd + 2 * hkv * hd)
    attn = 2 * (2 * batch * h * attention_pairs(seq, past_len, causal=causal) * hd)  # scores + PV
    ff = 2 * tokens * d * facts.ff_hidden * (3 if facts.ff_glu else 2)
    head_positions = {"all": tokens, "last": batch if seq > 0 else 0, "none": 0}[lm_head]
    head = 2 * head_positions * d * facts.vocab if facts.lm_head else 0
    return FlopBreakdown(projections=float(L * proj), attention=float(L * attn), ff=float(L * ff),
                         lm_head=float(head))


def backward_flops(forward: FlopBreakdown, *, attention_recompute: bool = True) -> FlopBreakdown:
    """Backward FLOPs from forward ones.

    2x for weight matmuls (grad input + grad weight). Attention: 2.5x with attention_recompute (the
    kernel recomputes q @ k^T, then dP = dO @ v^T, dV, dQ, dK: five matmuls for forward's two), 2x
    without (probabilities saved by forward: dP, dV, dQ, dK). attention_recomputes() says which a
    kernel does.
    """
    return FlopBreakdown(
        projections=2.0 * forward.projections,
        attention=(2.5 if attention_recompute else 2.0) * forward.attention,
        ff=2.0 * forward.ff,
        lm_head=2.0 * forward.lm_head,
    )


def train_step_flops(facts: ModelFacts, batch: int, seq: int, *, causal: bool | None = None,
                     attention_recompute: bool = True) -> FlopBreakdown:
    """Forward + backward of one training step on batch x seq tokens, logits at every position."""
    fwd = forward_flops(facts, batch, seq, causal=causal, lm_head="all")
    return fwd + backward_flops(fwd, attention_recompute=attention_recompute)


def recomputed_forward_flops(facts: ModelFacts, batch: int, seq: int, *, causal: bool | None = None,
                             early_stop: bool = False) -> FlopBreakdown:
    """What activation checkpointing of every block adds to a training step on batch x seq tokens: the
    blocks' forward once more (projections, attention, feed-forward; the LM head is outside the blocks).

    early_stop: torch's non-reentrant checkpoint (with its default early stop) ends the recompute once
    every tensor backward needs is back, so a block ending in `x + W_out(h)` (pre-norm blocks without
    dropout: Andromeda's sequential and parallel blocks, Llama's decoder layer) never re-runs its FFN
    output projection; with DeepNorm's closing LayerNorm or a residual dropout it does.

    Hardware FLOPs of a checkpointed step = train step + this; HFU is those over time and peak.
    """
    fwd = forward_flops(facts, batch, seq, causal=causal, lm_head="none")
    n_mats = 3 if facts.ff_glu else 2  # FFN matrices of the same size; the output one is skipped
    ff = fwd.ff * (n_mats - 1) / n_mats if early_stop else fwd.ff
    return FlopBreakdown(projections=fwd.projections, attention=fwd.attention, ff=ff, lm_head=0.0)


# Attention kernels by name (our backends, the attention scenario's impls, HF attn_implementation):
# does backward recompute the probabilities from q, k and the saved log-sum-exp?
_RECOMPUTES = {
    "triton": True, "flex": True, "flex_attention": True,  # ours / FlexAttention (fused and dense fallback)
    "sdpa_flash": True, "sdpa_efficient": True, "sdpa_cudnn": True,
    "flash_attn": True, "flash_attention_2": True, "flash_attention_3": True, "xformers": True,
    "eager": False, "sdpa_math": False,
}


def attention_recomputes(impl: str, device_type: str = "cuda", dtype: Any = None) -> bool:
    """Whether attention `impl` recomputes the probabilities in backward (2.5x forward) or saved them (2x).

    impl: an Andromeda backend (eager, sdpa, flex, triton), an attention-scenario impl (sdpa_flash,
    sdpa_efficient, sdpa_cudnn, sdpa_math, flash_attn, xformers) or a transformers attn_implementation
    (eager, sdpa, flash_attention_2/3, flex_attention; a Hub kernel whose name says flash).

    Plain `sdpa` is the kernel torch picks:
    - CUDA: flash, memory-efficient or cuDNN for float16/bfloat16/float32 (memory-efficient takes
      Andromeda's float and bool masks and GQA), all recomputing; float64 runs only the math kernel
      (no recompute). Not seen from here: bfloat16 on GPUs before sm80 (V100, T4), which falls back
      to math; pass impl="sdpa_math" where that is known.
    - CPU: recompute. torch (2.x, checked on 2.11 and 2.13) runs every float dtype, with or without
      a mask or GQA, through `_scaled_dot_product_flash_attention_for_cpu`, a fused kernel that saves
      only the output and the log-sum-exp, so its backward recomputes q @ k^T like FlashAttention.
    Other devices (mps, xpu) are treated like CUDA.

    ValueError for a name this table does not know.
    """
    key = impl.lower()
    if key == "sdpa":
        float64 = str(dtype).lower().removeprefix("torch.") in ("float64", "double", "fp64")
        return not (device_type == "cuda" and float64)
    if key in _RECOMPUTES:
        return _RECOMPUTES[key]
    if "flash" in key:  # e.g. a Hub kernel "kernels-community/flash-attn3"
        return True
    raise ValueError(f"attention impl {impl!r}: unknown whether its backward recomputes; "
                     f"known: sdpa, {', '.join(_RECOMPUTES)}")


def decode_flops(facts: ModelFacts, batch: int, context_len: int) -> FlopBreakdown:
    """FLOPs to generate one token per sequence with a KV cache of context_len earlier tokens."""
    return forward_flops(facts, batch, 1, lm_head="last", past_len=context_len)


def achieved_tflops(flops: float, seconds: float) -> float:
    """TFLOP/s: flops / seconds / 1e12."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return flops / seconds / 1e12


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilization: achieved TFLOP/s over the device's peak; None if the peak is unknown."""
    if peak_tflops is None:
        return None
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be > 0, got {peak_tflops}")
    return achieved_tflops(flops, seconds) / peak_tflops


# ---- device peaks -----------------------------------------------------------------------------
# Dense (no structured sparsity) peak TFLOP/s from the vendors' datasheets; tensor-core rates
# with FP32 accumulate where a card has two (GeForce). "fp32" is the non-tensor-core rate.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200": {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},  # H200 SXM
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},  # SXM4 and PCIe alike
    "A10G": {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 35.0},  # AWS variant (not the A10)
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
}

# torch.cuda.get_device_name() patterns -> table key, most specific first
# (e.g. "NVIDIA H100 80GB HBM3" is the SXM part; "L40" must not match "L4"; "RTX A1000" not "A100").
_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"\bh100\b.*\bnvl\b", "H100 NVL"),
    (r"\bh100\b.*\bpcie\b", "H100 PCIe"),
    (r"\bh100\b", "H100 SXM"),
    (r"\bh200\b.*\bnvl\b", "H200 NVL"),
    (r"\bh200\b", "H200"),
    (r"\ba100\b", "A100"),
    (r"\ba10g\b", "A10G"),
    (r"\bl40s\b", "L40S"),
    (r"\bl4\b", "L4"),
    (r"\brtx 4090\b", "RTX 4090"),
]

_DTYPE_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "tf32": "tf32",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    # real dtypes the table has no column for: no peak (None), rather than an error
    "fp64": None, "float64": None, "double": None,
    "fp8": None, "float8_e4m3fn": None, "float8_e5m2": None, "int8": None,
}


# Memory bandwidth from the vendors' datasheets, GB/s (1e9 bytes/s), keyed like PEAK_TFLOPS (device_key),
# A100 split by memory (bandwidth_key). Sources: NVIDIA H100 datasheet (SXM 3.35 TB/s, PCIe 2 TB/s,
# NVL 3.9 TB/s), H200 datasheet (SXM and NVL 4.8 TB/s), A100 datasheet (80GB SXM 2,039 GB/s, 80GB PCIe
# 1,935 GB/s, 40GB 1,555 GB/s), A10 datasheet (600 GB/s; AWS gives the same for the A10G), L4 datasheet
# (300 GB/s), L40S datasheet (864 GB/s), GeForce RTX 4090 specifications (1,008 GB/s).
DATASHEET_GB_PER_S: dict[str, float] = {
    "H100 SXM": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H200": 4800.0,
    "H200 NVL": 4800.0,
    "A100 80GB SXM": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100 40GB": 1555.0,  # SXM4 and PCIe alike
    "A10G": 600.0,
    "L4": 300.0,
    "L40S": 864.0,
    "RTX 4090": 1008.0,
}


def bandwidth_key(device_name: str) -> str | None:
    """The DATASHEET_GB_PER_S key for a device name: device_key's, the A100 split by memory size and form
    factor ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-40GB"); None if unknown
    (an A100 whose name gives no memory size included)."""
    key = device_key(device_name)
    if key != "A100":
        return key
    name = device_name.lower()
    if re.search(r"\b80\s*gb\b", name):
        return "A100 80GB PCIe" if "pcie" in name else "A100 80GB SXM"
    return "A100 40GB" if re.search(r"\b40\s*gb\b", name) else None


def device_bandwidth_gb_per_s(device_name: str) -> float | None:
    """Datasheet memory bandwidth (GB/s) of a known device; None for an unknown GPU or a CPU."""
    key = bandwidth_key(device_name)
    return None if key is None else DATASHEET_GB_PER_S[key]


def normalize_dtype(dtype: Any) -> str | None:
    """'bf16' | 'fp16' | 'tf32' | 'fp32' from a name or a torch dtype (e.g. torch.bfloat16).

    None for a dtype the peak table has no column for (fp64, fp8, int8); ValueError for a non-dtype.
    """
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ValueError(f"unknown dtype for peak FLOPs: {dtype!r}; allowed: bf16, fp16, tf32, fp32")
    return _DTYPE_ALIASES[key]


def device_key(device_name: str) -> str | None:
    """The PEAK_TFLOPS key for a device name (as torch.cuda.get_device_name gives it), or None."""
    name = device_name.lower()
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, name):
            return key
    return None


def device_peak_tflops(device_name: str, dtype: Any, override: float | None = None) -> float | None:
    """Dense peak TFLOP/s of a known device for dtype; `override` (e.g. measured) wins; None if unknown.

    Never falls back to another device's number: an unknown GPU or a CPU gives None (no MFU).
    """
    if override is not None:
        return float(override)
    column = normalize_dtype(dtype)
    key = device_key(device_name)
    if key is None or column is None:
        return None
    return PEAK_TFLOPS[key][column]


__all__ = [
    "FlopBreakdown", "attention_pairs", "forward_flops", "backward_flops", "train_step_flops", "decode_flops",
    "recomputed_forward_flops", "attention_recomputes", "achieved_tflops", "mfu", "PEAK_TFLOPS", "device_key",
    "device_peak_tflops", "normalize_dtype", "DATASHEET_GB_PER_S", "bandwidth_key", "device_bandwidth_gb_per_s",
]
