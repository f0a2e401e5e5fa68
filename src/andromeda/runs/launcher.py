"""The manifest's `launcher:` section: how every case runs across processes (torchrun), and the checks a whole
manifest gets when it has one. Torch-free: the manifest validates without torch; launch.py runs the cases.

    launcher: {type: torchrun, nproc: 2}            # nproc: processes per node, or auto = every GPU
    launcher: {type: torchrun, nproc: 8, nodes: 2, rdzv_endpoint: "node0:29500"}
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from andromeda.schema.fields import Float, Int, StrictModel, show

PROCS_MAX = 1_024  # processes per node, nodes, threads per rank
TIMEOUT_MAX_S = 7 * 86_400.0  # a case's torchrun is stopped after at most a week


def _check_nproc(v: Any) -> Any:
    if v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= PROCS_MAX:
        raise ValueError(f"must be a positive integer (processes per node) or 'auto' (one per GPU); at most "
                         f"{PROCS_MAX}, got {show(v)}")
    return v


class LauncherSpec(StrictModel):
    """How cases are launched across processes (the manifest's `launcher:`)."""

    type: Literal["torchrun"] = Field("torchrun", description=(
        "The launcher: torchrun (python -m torch.distributed.run), one launch per case."))
    nproc: Annotated[int | Literal["auto"], BeforeValidator(_check_nproc)] = Field("auto", description=(
        "Processes per node, or auto (every GPU; 1 on a CPU)."))
    nodes: Int(1, PROCS_MAX) = Field(1, description=(
        "Nodes the launch spans; more than 1 needs rdzv_endpoint and the same command on every node."))
    rdzv_endpoint: Annotated[str | None, Field(validate_default=True)] = Field(None, description=(
        "host:port of the rendezvous; needed when nodes > 1."))
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description=(
        "Process-group backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo."))
    timeout_s: Float(0.0, TIMEOUT_MAX_S, lo_open=True) = Field(1800.0, description=(
        "Seconds a case may take; torchrun is stopped after this long and the case is an error."))
    cpu_threads: Int(1, PROCS_MAX) = Field(1, description=(
        "CPU runs: torch threads per rank (OMP_NUM_THREADS); one core per rank by default."))

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None, info) -> str | None:
        nodes = info.data.get("nodes", 1)
        if v is None and nodes > 1:
            raise ValueError(f"required when nodes > 1 (got nodes: {nodes}): the host:port where the nodes meet, "
                             "the same on every node")
        if v is not None and not re.fullmatch(r"[\w.\-\[\]:]+:\d+", v):
            raise ValueError(f"'{v}' is not host:port")
        return v


def check_manifest(manifest) -> None:
    """Whole-manifest checks: scenarios that need a launcher have one; a launcher runs on cpu or cuda."""
    launcher = manifest.launcher
    for i, entry in enumerate(manifest.scenarios):
        if getattr(entry, "NEEDS_LAUNCHER", False) and launcher is None:
            raise ValueError(f"scenarios[{i}]: {entry.scenario} runs across processes; add "
                             "`launcher: {type: torchrun, nproc: N}` to the manifest")
    if launcher is not None:
        for i, entry in enumerate(manifest.scenarios):
            if getattr(entry, "checkpoint_dir", None):  # every rank runs the case: all would write one file
                raise ValueError(f"scenarios[{i}].checkpoint_dir: under a launcher every rank would write the "
                                 "same checkpoint; drop checkpoint_dir or run this scenario without a launcher")
        device_problem(manifest.device)
        if launcher.nproc == "auto" and manifest.device == "cpu":
            raise ValueError("launcher.nproc: 'auto' counts GPUs and this manifest runs on cpu; give a number")


def device_problem(device: str) -> None:
    if re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"device: '{device}' names one GPU; with a launcher use `device: cuda` "
                         "(rank r runs on cuda:LOCAL_RANK)")
    if device == "mps":
        raise ValueError("device: mps has no torch.distributed backend; use cpu or cuda with a launcher")


__all__ = ["LauncherSpec", "check_manifest", "device_problem", "PROCS_MAX", "TIMEOUT_MAX_S"]
