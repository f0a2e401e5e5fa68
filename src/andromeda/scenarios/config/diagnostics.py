"""diagnostics: model internals and the generated input suite (run code: scenarios/diagnostics.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from andromeda.scenarios.config import ScenarioConfig, register_config
from andromeda.schema.fields import Batch, Float, Fraction, Int, NonEmpty, PosFloat, Tokens, Tokens2

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
    scenario: Literal["diagnostics"] = Field("diagnostics", description=(
        "The scenario: diagnostics (per-layer activations, gradients, attention statistics and the input "
        "suite)."))
    probe: NonEmpty(Probe) = Field(description=(
        "Probes to run (swept): params, activations, gradients, attention, inputs, sensitivity, robustness, "
        "ambiguity."), default=PROBES)
    # the input of activations / gradients / attention, and of sensitivity / robustness
    batch: Batch = Field(1, description="Sequences per pass.")
    seq_len: Tokens2 = Field(128, description="Tokens per sequence of the statistics passes.")
    input_class: InputClass = Field("prose", description=(
        "The input of activations, gradients, attention, sensitivity and robustness: one of the input "
        "suite's classes (prose, code, ...)."))
    steps: Int(1, 10_000) = Field(1, description=(
        "Forward + backward passes (new samples each) the statistics accumulate over."))
    # attention
    attn_layers: NonEmpty(Index) | None = Field(None, description=(
        "Layers whose attention is recomputed and measured (indices); null = every layer."))
    attn_heads: NonEmpty(Index) | None = Field(None, description="Heads measured (indices); null = every head.")
    heatmap_len: Int(0, 4_096) = Field(32, description="Tokens of the attention heatmaps drawn (0 = none).")
    heatmap_layers: NonEmpty(Index) | None = Field(None, description=(
        "Layers with a heatmap (indices); null = every attention layer measured."))
    attn_chunk: Tokens | None = Field(None, description=(
        "Query rows recomputed per chunk; null = about 4M probabilities per chunk."))
    entropy_threshold: PosFloat = Field(0.5, description=(
        "A head whose mean attention entropy (nats) is below this is flagged as collapsed."))
    max_weight_threshold: Fraction = Field(0.5, description=(
        "A head whose mean largest attention weight is above this is flagged as peaked."))
    # activations and gradients
    saturation: PosFloat | None = Field(None, description=(
        "An activation above this magnitude counts as saturated; null = half the largest finite value of "
        "its dtype."))
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description=(
        "Optimizer of the gradient probe's update-to-weight ratios: adamw or sgd."))
    lr: PosFloat = Field(1e-3, description="Learning rate of that optimizer step.")
    vanishing_abs: PosFloat = Field(GRAD_THRESHOLDS["vanishing_abs"], description=(
        "A gradient norm below this is flagged as vanishing."))
    vanishing_rel: PosFloat = Field(GRAD_THRESHOLDS["vanishing_rel"], description=(
        "A layer's gradient norm below this fraction of the median layer's is flagged as vanishing."))
    exploding_abs: PosFloat = Field(GRAD_THRESHOLDS["exploding_abs"], description=(
        "A gradient norm above this is flagged as exploding."))
    exploding_rel: PosFloat = Field(GRAD_THRESHOLDS["exploding_rel"], description=(
        "A layer's gradient norm above this multiple of the median layer's is flagged as exploding."))
    # the input suite
    classes: NonEmpty(InputClass) = Field(description=(
        "Input-suite classes the inputs, sensitivity and robustness probes run on."), default=list(CLASSES))
    lengths: NonEmpty(Tokens2) | None = Field(None, description=(
        "Input-suite lengths in tokens; null = 16, 64, 256, ... up to max_len."))
    max_len: Tokens2 | None = Field(None, description=(
        "The longest input-suite length; null = the model's max_seq_len."))
    samples: Int(1, 10_000) = Field(1, description=(
        "Sequences per (class, length), per robustness point and per sensitivity position."))
    noise: NonEmpty(NoiseKind) = Field(description=(
        "Kinds of input noise of the robustness probe."), default=list(NOISE_KINDS))
    noise_rates: NonEmpty(Fraction) = Field([0.0, 0.01, 0.05, 0.1, 0.2], description=(
        "Fractions of tokens corrupted by the robustness probe."))
    sensitivity_positions: NonEmpty(Frac) = Field([0.1, 0.5, 0.9], description=(
        "Positions (fractions of seq_len) where the sensitivity probe changes a token."))


__all__ = ["DiagnosticsConfig", "Probe", "PROBES", "InputClass", "NoiseKind", "CLASSES", "NOISE_KINDS",
           "GRAD_THRESHOLDS"]
