"""diagnostics: model internals and the generated input suite (run code: scenarios/diagnostics.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from andromeda.bench.fields import Batch, Float, Fraction, Int, NonEmpty, PosFloat, Tokens, Tokens2
from andromeda.bench.scenarios.config import ScenarioConfig, register_config

Probe = Literal["params", "activations", "gradients", "attention", "inputs", "sensitivity", "robustness",
                "ambiguity"]
PROBES = list(Probe.__args__)
# diagnostics.inputs.CLASSES / NOISE_KINDS and diagnostics.gradients.GradThresholds (torch-importing
# packages; a test keeps them equal)
CLASSES = ("prose", "code", "numbers", "repetitive", "multilingual", "random_bytes", "ood")
NOISE_KINDS = ("substitute", "delete", "insert")
GRAD_THRESHOLDS = {"vanishing_abs": 1e-7, "vanishing_rel": 1e-3, "exploding_abs": 1e2, "exploding_rel": 1e3}
InputClass = Literal[CLASSES]  # type: ignore[valid-type]
NoiseKind = Literal[NOISE_KINDS]  # type: ignore[valid-type]
Index = Int(0, 65_535)  # a layer or head index
Frac = Float(0.0, 1.0, hi_open=True)


@register_config
class DiagnosticsConfig(ScenarioConfig):
    SWEEP = ("probe",)
    scenario: Literal["diagnostics"] = "diagnostics"
    probe: NonEmpty(Probe) = Field(default=PROBES)
    # the input of activations / gradients / attention, and of sensitivity / robustness
    batch: Batch = 1
    seq_len: Tokens2 = 128
    input_class: InputClass = "prose"
    steps: Int(1, 10_000) = 1  # forward + backward passes (new samples each) the statistics accumulate over
    # attention
    attn_layers: NonEmpty(Index) | None = None  # None: every layer
    attn_heads: NonEmpty(Index) | None = None  # None: every head
    heatmap_len: Int(0, 4_096) = 32
    heatmap_layers: NonEmpty(Index) | None = None  # None: every attention layer
    attn_chunk: Tokens | None = None  # query rows per chunk; None: about 4M probabilities per chunk
    entropy_threshold: PosFloat = 0.5
    max_weight_threshold: Fraction = 0.5
    # activations and gradients
    saturation: PosFloat | None = None  # None: half the largest finite value of the activation's dtype
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: PosFloat = 1e-3
    vanishing_abs: PosFloat = GRAD_THRESHOLDS["vanishing_abs"]
    vanishing_rel: PosFloat = GRAD_THRESHOLDS["vanishing_rel"]
    exploding_abs: PosFloat = GRAD_THRESHOLDS["exploding_abs"]
    exploding_rel: PosFloat = GRAD_THRESHOLDS["exploding_rel"]
    # the input suite
    classes: NonEmpty(InputClass) = Field(default=list(CLASSES))
    lengths: NonEmpty(Tokens2) | None = None  # None: 16, 64, 256, ... and the limit
    max_len: Tokens2 | None = None  # the limit of the suite's lengths; None: the model's max_seq_len
    samples: Int(1, 10_000) = 1  # sequences per (class, length), per robustness point, per sensitivity position
    noise: NonEmpty(NoiseKind) = Field(default=list(NOISE_KINDS))
    noise_rates: NonEmpty(Fraction) = [0.0, 0.01, 0.05, 0.1, 0.2]
    sensitivity_positions: NonEmpty(Frac) = [0.1, 0.5, 0.9]  # fractions of seq_len


__all__ = ["DiagnosticsConfig", "Probe", "PROBES", "InputClass", "NoiseKind", "CLASSES", "NOISE_KINDS",
           "GRAD_THRESHOLDS"]
