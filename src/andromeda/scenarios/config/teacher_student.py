"""teacher_student: a reference model and a trained or changed one side by side (run code:
scenarios/teacher_student.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from andromeda.data.loaders import check_data_files, validate_data_spec
from andromeda.errors import AndromedaError
from andromeda.scenarios.config import ScenarioConfig, register_config
from andromeda.scenarios.config.perplexity import MaxTokens, check_strides
from andromeda.schema.fields import Batch, StrictModel, Tokens, Tokens2
from andromeda.sources import spec


class ModelRef(StrictModel):
    source: str = Field(description="A model source, as in models: (andromeda:<preset>, hf:..., xt:...).")
    checkpoint: str | None = Field(None, description=(
        "An Andromeda checkpoint directory whose weights are loaded into the built source."))

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        try:
            spec.check_syntax(v)
        except AndromedaError as e:
            raise ValueError(str(e).removeprefix("models: ")) from None
        return v

    def check_resources(self) -> None:
        """The source builds, and a checkpoint is an Andromeda checkpoint saved with the source's config.
        The files first: they need no torch."""
        saved = None
        if self.checkpoint is not None:
            if spec.parse_source(self.source)[0] != "andromeda":
                raise ValueError(f"checkpoint: '{self.checkpoint}' is an Andromeda checkpoint; its source must be "
                                 f"andromeda:<preset>, not '{self.source}'")
            try:
                saved = spec.check_checkpoint_dir(Path(self.checkpoint).expanduser())
            except AndromedaError as e:
                raise ValueError(f"checkpoint: {e}") from None
        spec.check_source(self.source)
        if saved is None:
            return
        built = spec.andromeda_config(self.source).to_dict()
        diff = [k for k, v in saved.items() if built.get(k) != v]
        if diff:
            raise ValueError(f"checkpoint: '{self.checkpoint}' was saved with a different config "
                             f"({', '.join(diff[:4])}); use the source it was trained from, e.g. "
                             f"andromeda:<preset>?{diff[0]}={saved[diff[0]]}")


@register_config
class TeacherStudentConfig(ScenarioConfig):
    scenario: Literal["teacher_student"] = Field("teacher_student", description=(
        "The scenario: teacher_student (a student's perplexity, agreement and decode speed against a "
        "teacher)."))
    teacher: str | ModelRef = Field(description="The teacher: a model source, or {source, checkpoint}.")
    student: str | ModelRef | None = Field(None, description=(
        "The student: a model source or {source, checkpoint}; null = the manifest model being run."))
    data: str = Field("synthetic:markov", description=(
        "Data source the perplexities and agreement are measured on (e.g. synthetic:markov, text:<file>)."))
    seq_len: Tokens2 = Field(256, description="Perplexity window in tokens.")
    stride: Tokens | None = Field(None, description="Tokens between window starts; null = non-overlapping windows.")
    batch: Batch = Field(8, description="Windows per forward pass, and the prefill batch.")
    max_tokens: MaxTokens | None = Field(16384, description="Tokens scored at most; null = all of the split.")
    add_bos: bool = Field(True, description="Start each document with the tokenizer's BOS token.")
    prompt_len: Tokens = Field(32, description="Decode: prompt tokens before generation.")
    gen_len: Tokens = Field(32, description="Decode: greedy steps after the prompt.")
    decode_batch: Batch = Field(1, description="Decode: sequences generated at once.")

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        validate_data_spec(v)
        return v

    @field_validator("teacher", "student")
    @classmethod
    def _ref(cls, v):
        if isinstance(v, str):
            return ModelRef(source=v)
        return v

    @model_validator(mode="after")
    def _windows(self) -> TeacherStudentConfig:
        check_strides([self.seq_len], [self.stride], swept=False)
        return self

    def check_resources(self) -> None:
        check_data_files(self.data)
        for role in ("teacher", "student"):
            ref = getattr(self, role)
            if ref is not None:
                try:
                    ref.check_resources()
                except (AndromedaError, ValueError) as e:
                    msg = str(e).removeprefix("models: ")
                    sub = "checkpoint" if msg.startswith("checkpoint: ") else "source"
                    raise ValueError(f"{role}.{sub}: {msg.removeprefix('checkpoint: ')}") from None


__all__ = ["TeacherStudentConfig", "ModelRef"]
