"""The manifest's `compare:` section: which models are compared with which baseline, on which metrics,
with what thresholds, correction and significance level. Torch-free (compare_run.py reads it back from a
run's manifest.yml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from andromeda.schema.fields import DTYPES, Float, NonEmpty, NonNegFloat, StrictModel, check_each


class CompareThresholds(StrictModel):
    speedup: Float(1.0, 1e6) = Field(1.2, description=(
        "Factor a significant time or throughput change must reach, either way, to be called faster or "
        "slower (1.2 = 1.2x)."))
    memory: NonNegFloat = Field(0.05, description=(
        "Relative change a memory metric must exceed to be called more or less memory (0.05 = 5%)."))
    max_abs_diff: NonNegFloat = Field(1e-5, description="Tolerance of *abs_diff (output difference) metrics.")
    max_abs_diff_by_dtype: dict[Literal[DTYPES], NonNegFloat] = Field({}, description=(
        "Per-dtype tolerance of *abs_diff metrics, e.g. {bfloat16: 0.02}; overrides max_abs_diff for that"
        " dtype."))


class CompareSpec(StrictModel):
    """Candidates against a baseline, all from this manifest's models, with verdicts."""

    baseline: str = Field(description="The model source the others are compared with; one of models.")
    candidates: NonEmpty(str, 1000) | None = Field(None, description=(
        "Models to compare with the baseline (default: every other model)."))
    metrics: NonEmpty(str, 100) = Field(["latency_ms"], description=(
        "Metrics to compare, e.g. [latency_ms, peak_mib]; the name says which way is better (ms: lower, "
        "tokens_per_s: higher)."))
    allow_mismatch: bool = Field(False, description=(
        "Compare models of different shapes; every comparison still shows both sides' parameters, FLOPs "
        "per token and the ratio at equal work."))
    gate: bool = Field(False, description=(
        "false: a comparison of models (faster / slower per case and per candidate, never fails the run);"
        " true: a regression gate, the run exits 1 when a candidate is significantly worse beyond the "
        "threshold and the noise floor."))
    correction: Literal["holm", "bh", "none"] = Field("holm", description=(
        "Multiple-comparison correction across all comparisons: holm, bh (Benjamini-Hochberg) or none."))
    alpha: Float(0.0, 1.0, lo_open=True, hi_open=True) = Field(0.05, description=(
        "Significance level of the (corrected) Mann-Whitney p-values."))
    thresholds: CompareThresholds = Field(CompareThresholds(), description=(
        "What counts as a real difference: speedup factor, memory fraction, output tolerance."))

    @field_validator("metrics")
    @classmethod
    def _directed(cls, v: list[str]) -> list[str]:
        from andromeda.verdicts.comparison import metric_kind  # numpy and scipy: only when a compare: section is read

        return check_each(v, metric_kind)


__all__ = ["CompareSpec", "CompareThresholds"]
