"""teacher_student: a reference model and a trained or changed one side by side (run code:
scenarios/teacher_student.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from andromeda.bench import source_spec
from andromeda.bench.fields import Batch, StrictModel, Tokens, Tokens2
from andromeda.bench.scenarios.config import ScenarioConfig, register_config
from andromeda.bench.scenarios.config.perplexity import MaxTokens, check_strides
from andromeda.data.loaders import check_data_files, validate_data_spec
from andromeda.errors import AndromedaError


class ModelRef(StrictModel):
    source: str
    checkpoint: str | None = None  # an Andromeda checkpoint directory loaded into the built source

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        try:
            source_spec.check_syntax(v)
        except AndromedaError as e:
            raise ValueError(str(e).removeprefix("models: ")) from None
        return v

    def check_resources(self) -> None:
        """The source builds, and a checkpoint is an Andromeda checkpoint saved with the source's config.
        The files first: they need no torch."""
        saved = None
        if self.checkpoint is not None:
            if source_spec.parse_source(self.source)[0] != "andromeda":
                raise ValueError(f"checkpoint: '{self.checkpoint}' is an Andromeda checkpoint; its source must be "
                                 f"andromeda:<preset>, not '{self.source}'")
            try:
                saved = source_spec.check_checkpoint_dir(Path(self.checkpoint).expanduser())
            except AndromedaError as e:
                raise ValueError(f"checkpoint: {e}") from None
        source_spec.check_source(self.source)
        if saved is None:
            return
        built = source_spec.andromeda_config(self.source).to_dict()
        diff = [k for k, v in saved.items() if built.get(k) != v]
        if diff:
            raise ValueError(f"checkpoint: '{self.checkpoint}' was saved with a different config "
                             f"({', '.join(diff[:4])}); use the source it was trained from, e.g. "
                             f"andromeda:<preset>?{diff[0]}={saved[diff[0]]}")


@register_config
class TeacherStudentConfig(ScenarioConfig):
    scenario: Literal["teacher_student"] = "teacher_student"
    teacher: str | ModelRef
    student: str | ModelRef | None = None  # null: the manifest model being run
    data: str = "synthetic:markov"
    seq_len: Tokens2 = 256  # perplexity window
    stride: Tokens | None = None
    batch: Batch = 8  # windows per forward pass, and the prefill batch
    max_tokens: MaxTokens | None = 16384
    add_bos: bool = True
    prompt_len: Tokens = 32  # decode: prompt, then gen_len greedy steps
    gen_len: Tokens = 32
    decode_batch: Batch = 1

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
