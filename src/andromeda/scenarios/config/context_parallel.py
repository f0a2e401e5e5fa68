"""context_parallel: one sequence's prefill split over N processes (run code: scenarios/context_parallel.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from andromeda.errors import AndromedaError
from andromeda.scenarios.config import DType, Ranks, ScenarioConfig, register_config
from andromeda.schema.fields import Batch, Float, Int, NonEmpty, Runs, Tokens, Warmup
from andromeda.sources import spec

# check_rtol when the manifest leaves it null: float32 is rounding (the shards sum in another order); bf16 and
# fp16 round every activation, and 30-odd layers of that move the logits by a few percent of their largest value
DEFAULT_RTOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


@register_config
class ContextParallelConfig(ScenarioConfig):
    SWEEP = ("ranks",)
    NEEDS_LAUNCHER: ClassVar[bool] = True
    scenario: Literal["context_parallel"] = Field("context_parallel", description=(
        "The scenario: context_parallel (one sequence's prefill split over N processes: latency, communication "
        "share, per-rank balance, scaling efficiency, equality with the single-process forward)."))
    ranks: Ranks = Field([1, 2, 4, 8], description=(
        "Process counts to run at (swept; one torchrun launch each), or all (the launcher's nproc x nodes); "
        "points past the processes or GPUs present are skipped. 1 times the model's own forward: the baseline "
        "of the scaling efficiency."))
    seq_lens: NonEmpty(Tokens, 64) = Field([2048, 8192], description=(
        "Sequence lengths prefilled, each a row, run shortest first within one launch."))
    batch: Batch = Field(1, description="Sequences prefilled together.")
    model: str | None = Field(None, description=(
        "The Andromeda model prefilled (andromeda:<preset>[?...]) instead of the manifest's model being run; "
        "null = that model."))
    dtype: DType | None = Field(None, description="The model's dtype for this entry; null = the manifest's dtype.")
    warmup: Warmup = Field(1, description="Untimed prefills per length on every rank.")
    iters: Runs = Field(5, description="Timed prefills per length on every rank (between barriers).")
    comm_runs: Int(1, 100) = Field(2, description=(
        "More prefills per length with every collective synchronized and timed: each rank's communication "
        "and compute time (not in the latency)."))
    check_len: Tokens | None = Field(256, description=(
        "Length at which the sharded logits (every position) are compared with the single-process forward "
        "of the same tokens; null = no check."))
    check_rtol: Float(0.0, 1.0, lo_open=True) | None = Field(None, description=(
        "The check passes when max |logits difference| <= check_rtol x max |logit|; null = 1e-4 for "
        "float32, 1e-2 for float16, 5e-2 for bfloat16."))

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            spec.check_syntax(v)
        except AndromedaError as e:
            raise ValueError(str(e).removeprefix("models: ")) from None
        if spec.parse_source(v)[0] != "andromeda":
            raise ValueError(f"'{v}': context-parallel prefill runs Andromeda models; use andromeda:<preset>[?...]")
        return v

    @model_validator(mode="after")
    def _check(self) -> ContextParallelConfig:
        if len(set(self.seq_lens)) != len(self.seq_lens):
            raise ValueError(f"seq_lens: each length once, got {self.seq_lens}")
        most = max((r for r in self.ranks if r != "all"), default=1)
        for i, n in enumerate(self.seq_lens):
            if n < 2 * most:
                raise ValueError(f"seq_lens[{i}]: {n} tokens do not split into 2 chunks per rank over {most} ranks; "
                                 f"at least {2 * most}")
        if self.check_len is not None and self.check_len < 2 * most:
            raise ValueError(f"check_len: {self.check_len} tokens do not split into 2 chunks per rank over {most} "
                             f"ranks; at least {2 * most}, or null for no check")
        return self

    def check_resources(self) -> None:
        if self.model is not None:
            try:
                spec.check_source(self.model)
            except AndromedaError as e:
                raise ValueError(f"model: {str(e).removeprefix('models: ')}") from None


__all__ = ["ContextParallelConfig", "DEFAULT_RTOL"]
