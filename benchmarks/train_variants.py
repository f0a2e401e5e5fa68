"""The rows of benchmarks/train_speed.py: what each adds to the step, in the order a run takes them."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch

from andromeda.model.backends import TritonTuning, tuned, tuning

FAST = dict(precision="bf16-master", fused_adamw=True, compile="blocks", fused_ce=True)
# Inductor options of the tuned-compile rows (torch._inductor.config): Triton matmul templates autotuned against
# cuBLAS, which can take the bias and GELU (or other pointwise work) into their epilogue; and coordinate-descent
# tuning of the block sizes of the generated pointwise and reduction kernels (the norms, token shift, GELU).
GEMM_AUTOTUNE = {"max_autotune_gemm": True}
COORD_DESCENT = {"coordinate_descent_tuning": True}


@dataclass
class Variant:
    name: str
    adds: str
    train: dict
    attn: str = "fast"  # "baseline": --baseline-attn; "fast": the model's auto choice
    model: str = "andromeda"  # or "llama"
    # health: bool; inductor: options of the compiled blocks; triton: TritonTuning fields for the row
    extra: dict = field(default_factory=dict)


LADDER = [
    Variant("fp32-eager", "float32, eager, torch's attention, unfused loss", dict(precision="fp32"), "baseline"),
    Variant("bf16-autocast", "+ bf16 autocast", dict(precision="bf16"), "baseline"),
    Variant("+attn-kernels", "+ our attention kernels", dict(precision="bf16")),
    Variant("+compile-blocks", "+ regional compile", dict(precision="bf16", compile="blocks")),
    Variant("+fused-ce", "+ fused LM head + loss", dict(precision="bf16", compile="blocks", fused_ce=True)),
    Variant("+bf16-master+fused-adamw", "+ bf16 weights, fp32 masters, fused AdamW", FAST),
    Variant("+selective-ckpt", "fast + selective checkpointing", dict(FAST, checkpointing="selective")),
    Variant("+full-ckpt", "fast + full checkpointing", dict(FAST, checkpointing="full")),
    Variant("+selective-ckpt-eager", "fast, eager blocks + selective checkpointing",
            dict(FAST, compile="none", checkpointing="selective")),
    Variant("+health", "fast + health metrics", FAST, extra={"health": True}),
    Variant("+gemm-autotune", "fast, blocks compiled with matmul autotuning (Triton templates, fused epilogues)",
            FAST, extra={"inductor": GEMM_AUTOTUNE}),
    Variant("+coord-descent", "fast, blocks compiled with coordinate-descent tuning of pointwise/reduction kernels",
            FAST, extra={"inductor": COORD_DESCENT}),
    Variant("qk-fused", "fast, QK-norm + rotary + xPos in our fused kernel (TritonTuning.fused_qk on)",
            FAST, extra={"triton": {"fused_qk": True}}),
    Variant("qk-unfused", "fast, QK-norm + rotary + xPos as PyTorch ops, compiled (TritonTuning.fused_qk off)",
            FAST, extra={"triton": {"fused_qk": False}}),
    Variant("adamw8bit", "fast with 8-bit AdamW", dict(FAST, fused_adamw=False, optimizer="adamw8bit")),
    Variant("llama-fast", "matched Llama, fast step", FAST, "fast", "llama"),
]
BY_NAME = {v.name: v for v in LADDER}
FIRST = ["+bf16-master+fused-adamw", "llama-fast"]  # per seq, before the loss check and the rest of the ladder
THEN = ["+health", "bf16-autocast", "+attn-kernels", "+compile-blocks", "+fused-ce", "+selective-ckpt",
        "+full-ckpt", "+selective-ckpt-eager", "+gemm-autotune", "+coord-descent",
        "qk-fused", "qk-unfused", "adamw8bit", "fp32-eager"]
_BACKENDS: dict = {}


def inductor_backend(options: dict):
    """A torch.compile backend: inductor with `options` patched into its config for the forward and backward
    graphs alike (compile_fx's config_patches). One object per options for the process, so that the compiled
    blocks' cache (train/regional.py) keys on it."""
    key = tuple(sorted(options.items()))
    if key not in _BACKENDS:
        from torch._inductor.compile_fx import compile_fx

        def backend(gm, example_inputs):
            return compile_fx(gm, example_inputs, config_patches=dict(options))

        backend.__name__ = "inductor[" + ",".join(f"{k}={v}" for k, v in key) + "]"
        _BACKENDS[key] = backend
    return _BACKENDS[key]


@contextlib.contextmanager
def kernel_settings(v: Variant):
    """A row's TritonTuning fields (Variant.extra["triton"]) for its compiles and steps. The compiled blocks are
    traced again under them, and again after (settings read while tracing are not surely guarded on)."""
    if not v.extra.get("triton"):
        yield
        return
    torch._dynamo.reset()
    try:
        with tuned(dataclasses.replace(tuning(TritonTuning), **v.extra["triton"])):
            yield
    finally:
        torch._dynamo.reset()
