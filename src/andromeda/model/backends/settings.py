"""Kernel tuning: each Triton backend's settings as a frozen dataclass, and the one place to read, set and record them.

Two backends have settings: the flash-attention kernel (`TritonTuning`, backends/triton_flash.py) and the fused
batch-1 decode step (`DecodeTuning`, model/fused_decode.py). Every field's default is what ships (tuned on an
H100: docs/performance.md); benchmarks and tests try other values through these functions, also exported by
`andromeda.model.backends`:

    tuning(TritonTuning)                          # the active settings (the defaults until set)
    set_tuning(TritonTuning(skip_far=False))      # from now on; returns the settings it replaced
    with tuned(TritonTuning(skip_min_keys=0)):    # for a block, then back to what was active
        ...
    set_tuning(dataclasses.replace(tuning(TritonTuning), skip_far=False))  # one field of the active settings
    tuning_record()                               # {"triton": {...}, "fused_decode": {...}}: plain, JSON-ready

The active settings are process-wide, not per thread or context: autograd may run a backward on another thread,
and it must see the settings its forward ran with. Another process (a torchrun worker) starts from the defaults.
Settings are checked when made (a wrong name or type raises ConfigError) and cannot change afterwards: their
mappings are read-only copies. The backends' autotune caches (the launch setting that fitted each shape, the
compiled kernels) are private state of their modules, not settings. measure.env.collect_env records
tuning_record() in every run's environment, so every benchmark's JSON and every suite record carries it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

from andromeda.errors import ConfigError


class _Frozen(dict):
    """A dict that refuses changes once made: a setting's mapping (still a dict to json and dataclasses.asdict)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("kernel tuning settings are frozen: make new ones (dataclasses.replace) and set_tuning them")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self):
        return type(self), (dict(self),)


def _flag(owner: str, name: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        raise ConfigError(f"{owner}.{name}: True or False{' or None' if optional else ''}, not {value!r}")


def _count(owner: str, name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{owner}.{name}: an integer {span}, not {value!r}")


def _launch(owner: str, value: Any, keys: tuple[str, ...], required: tuple[str, ...]) -> _Frozen:
    """A launch setting checked and frozen: a mapping of `keys` (positive integers; TMA and WS True/False)
    holding `required`."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{owner}: a mapping of {', '.join(keys)}, not {value!r}")
    unknown, missing = sorted(set(value) - set(keys), key=str), [k for k in required if k not in value]
    if unknown or missing:
        raise ConfigError(f"{owner}: {'unknown ' + ', '.join(map(str, unknown)) if unknown else ''}"
                          f"{'; ' if unknown and missing else ''}{'missing ' + ', '.join(missing) if missing else ''} "
                          f"(keys: {', '.join(keys)}; required: {', '.join(required)})")
    for k, v in value.items():
        if k in ("TMA", "WS"):
            _flag(owner, k, v)
        else:
            _count(owner, k, v, 1)
    return _Frozen(value)


_SM90_KEYS = ("BLOCK_M", "BLOCK_N", "STAGES", "LOADER_REGS", "CONSUMER_REGS")
_FLASH_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "TMA", "WS")
_GEMV_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages")


@dataclasses.dataclass(frozen=True)
class TritonTuning:
    """Settings of our flash-attention kernel (backends/triton_flash.py); the defaults are what ships.

    split_heads: launch the ALiBi heads and the heads without it separately (each kernel compiled for its case)
        where the slopes allow it (the first heads with ALiBi, the rest without: the model's layout).
    skip_far: under causal ALiBi, forward and backward skip the key blocks too far back to count (together
        under 2^-32 of a row's softmax sum; triton_flash_kernels._first_needed_key) ...
    skip_min_keys: ... for key lengths of at least this many (shorter, the key-norm pass costs more than it
        can save; 0: at any length).
    group_heads: the most query heads of a KV group one dK/dV program accumulates (fewer where the group or a
        launch's heads do not divide by it): more heads, fewer float32 slices to write and sum; fewer, more
        programs to balance.
    sm90_forward: on sm90 GPUs, the Hopper forward (gluon_flash_kernels) for the shapes it covers
        (triton_flash._sm90_fits); False: the Triton forward there too.
    sm90_offset: the Hopper forward also for queries after earlier keys (a chunk after a KV cache, or the
        query blocks of a long prefill past the first xPos anchor block), offset by whole tiles and key blocks;
        off, those calls take the Triton forward. On an H200 (2.5B preset, bf16) the 200K-token prefill in
        32K chunks took 9.69 s on, 10.53 s off; tests/model/test_triton.py's CUDA case checks it.
    fused_qk: QK-norm, rotary and xPos of q and k in one Triton kernel each way (backends/qk_rope.py), writing
        the layout the flash kernels read, in float32 with one rounding; off, PyTorch ops (which torch.compile
        fuses into several kernels). Read when a forward is traced or run, not inside the ops. Off by default
        until its CUDA test (tests/model/test_qk_rope.py) and a training run have passed on a GPU.
    sm90: the Hopper forward's launch setting: BLOCK_M, BLOCK_N, STAGES, LOADER_REGS, CONSUMER_REGS (H100-tuned;
        a query tile is 2 BLOCK_M rows).
    config_override: launch settings to use instead of the tuned ones (benchmarks/attention_kernels.py --configs),
        by kernel: "fwd", "bwd" (the dK/dV kernel) and "dq" (default: the "bwd" blocks swapped); each a mapping
        of BLOCK_M, BLOCK_N and optionally num_warps, num_stages, TMA (used only where the device has it) and,
        forward only, WS (Triton's warp specialization of the unmasked loop). An override is tried alone, with
        no fallback to smaller tiles.
    """

    name: ClassVar[str] = "triton"

    split_heads: bool = True
    skip_far: bool = True
    skip_min_keys: int = 1024
    group_heads: int = 3
    sm90_forward: bool = True
    sm90_offset: bool = True
    fused_qk: bool = False
    sm90: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(
        BLOCK_M=64, BLOCK_N=128, STAGES=2, LOADER_REGS=24, CONSUMER_REGS=240))
    config_override: Mapping[str, Mapping[str, int | bool]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("split_heads", "skip_far", "sm90_forward", "sm90_offset", "fused_qk"):
            _flag(owner, name, getattr(self, name))
        _count(owner, "skip_min_keys", self.skip_min_keys, 0)
        _count(owner, "group_heads", self.group_heads, 1)
        sm90 = _launch(f"{owner}.sm90", self.sm90, _SM90_KEYS, _SM90_KEYS)
        if not isinstance(self.config_override, Mapping) or set(self.config_override) - {"fwd", "bwd", "dq"}:
            raise ConfigError(f"{owner}.config_override: a mapping whose keys are among 'fwd', 'bwd', 'dq', "
                              f"not {self.config_override!r}")
        over = _Frozen({k: _launch(f"{owner}.config_override[{k!r}]", v, _FLASH_KEYS, ("BLOCK_M", "BLOCK_N"))
                        for k, v in self.config_override.items()})
        object.__setattr__(self, "sm90", sm90)
        object.__setattr__(self, "config_override", over)


@dataclasses.dataclass(frozen=True)
class DecodeTuning:
    """Settings of the fused batch-1 decode step (model/fused_decode.py); the defaults are what ships.

    gemv: one launch setting for every GEMV instead of the tuned ones (fused_decode.gemv_config;
        benchmarks/decode_kernels.py --sweep): BLOCK_N, BLOCK_K and optionally num_warps, num_stages. None: tuned.
    gemv_by_shape: the same for single GEMV shapes, by (rows, K); a shape listed here takes its own over `gemv`.
    pdl: programmatic dependent launch (Hopper and later): each kernel launches while the one before it runs and
        waits for it on the device, so launch latency and the first weight tile's load overlap the previous
        kernel. None: on where the GPU has it (sm90+); False: off; True: on where the GPU has it. Read when a
        FusedStep is made.
    early_out: under PDL, the attention combine lets the out-projection launch before it waits for the split ...
    out_pre: ... and each out-projection program loads this many K tiles of its weight rows (1 to 4; all of them
        at the preset's shapes) before its own wait, so HBM streams the out-projection while attention's
        latency-bound kernels run ...
    early_in: ... and the out-projection in turn lets w_in launch before its wait, whose programs load their first
        tile meanwhile. On the H100 (2.5B preset, 4K context) these three took 2.111 to 2.064 ms/token; more
        w_in tiles ahead lost (4: 2.282). Read at each step (a CUDA graph keeps what it captured).
    splits, split_tiles, max_splits: how a KV head's attention is split into programs, each a run of whole
        64-key tiles of the cache: up to `splits` programs; past `split_tiles` tiles each, more programs
        instead, up to `max_splits` (then more tiles each). With one KV head and batch 1 they are all the
        attention's parallelism. On an H200 (2.5B preset) 128 programs of 25 tiles took 6.76 ms/token at 200K
        keys and 782 of 4 took 4.27; at 32K, 103 of 5 took 2.18 and 513 of 1 took 2.69. Read when a FusedStep
        is made.
    """

    name: ClassVar[str] = "fused_decode"

    gemv: Mapping[str, int] | None = None
    gemv_by_shape: Mapping[tuple[int, int], Mapping[str, int]] = dataclasses.field(default_factory=dict)
    pdl: bool | None = None
    early_out: bool = True
    out_pre: int = 3
    early_in: bool = True
    splits: int = 128
    split_tiles: int = 4
    max_splits: int = 1024

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _flag(owner, "pdl", self.pdl, optional=True)
        for name in ("splits", "split_tiles", "max_splits"):
            _count(owner, name, getattr(self, name), 1, 65536)
        _flag(owner, "early_out", self.early_out)
        _flag(owner, "early_in", self.early_in)
        _count(owner, "out_pre", self.out_pre, 1, 4)
        required = ("BLOCK_N", "BLOCK_K")
        gemv = None if self.gemv is None else _launch(f"{owner}.gemv", self.gemv, _GEMV_KEYS, required)
        shapes = self.gemv_by_shape
        if not isinstance(shapes, Mapping) or not all(
                isinstance(s, tuple) and len(s) == 2 and all(type(n) is int and n > 0 for n in s) for s in shapes):
            raise ConfigError(f"{owner}.gemv_by_shape: a mapping keyed by (rows, K) tuples of positive integers, "
                              f"not {shapes!r}")
        by_shape = _Frozen({s: _launch(f"{owner}.gemv_by_shape[{s}]", v, _GEMV_KEYS, required)
                            for s, v in shapes.items()})
        object.__setattr__(self, "gemv", gemv)
        object.__setattr__(self, "gemv_by_shape", by_shape)


T = TypeVar("T", TritonTuning, DecodeTuning)
KINDS: tuple[type, ...] = (TritonTuning, DecodeTuning)
_ACTIVE: dict[type, Any] = {kind: kind() for kind in KINDS}


def _kind(kind: type | str) -> type:
    for k in KINDS:
        if kind is k or kind == k.name:
            return k
    raise ConfigError(f"kernel tuning: '{getattr(kind, '__name__', kind)}' is none of "
                      f"{', '.join(f'{k.__name__} ({k.name!r})' for k in KINDS)}")


def tuning(kind: type[T] | str) -> T:
    """The active settings of one backend: tuning(TritonTuning) or tuning("triton"), tuning(DecodeTuning) or
    tuning("fused_decode"). The defaults until set_tuning() or tuned() sets others."""
    return _ACTIVE[_kind(kind)]


def set_tuning(*settings: TritonTuning | DecodeTuning) -> tuple[TritonTuning | DecodeTuning, ...]:
    """Makes each of these settings its backend's active ones, in this process, until set again. Returns the
    settings they replaced, in the same order: set_tuning(*before) restores them. set_tuning(TritonTuning(),
    DecodeTuning()) restores the defaults."""
    kinds = [type(s) for s in settings]
    for s in settings:
        if type(s) not in KINDS:
            raise ConfigError(f"set_tuning: {s!r} is not a TritonTuning or DecodeTuning")
    if len(set(kinds)) < len(kinds):
        raise ConfigError("set_tuning: two settings of one backend; give each backend's once")
    before = tuple(_ACTIVE[k] for k in kinds)
    for s in settings:
        _ACTIVE[type(s)] = s
    return before


@contextmanager
def tuned(*settings: TritonTuning | DecodeTuning) -> Iterator[tuple[TritonTuning | DecodeTuning, ...]]:
    """`with tuned(TritonTuning(skip_far=False)): ...`: these settings inside the block (set_tuning), the ones
    active before after it, also when it raises. Yields the settings."""
    before = set_tuning(*settings)
    try:
        yield settings
    finally:
        set_tuning(*before)


def _plain(value: Any) -> Any:
    """JSON-ready: mappings as dicts (a GEMV shape key (rows, K) as "rowsxK"), tuples as lists."""
    if isinstance(value, Mapping):
        return {("x".join(map(str, k)) if isinstance(k, tuple) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def tuning_record() -> dict[str, dict[str, Any]]:
    """The active settings of every backend as plain data, by backend name: {"triton": {...}, "fused_decode":
    {...}}, each dataclasses.asdict of its settings (JSON-ready: a GEMV shape (rows, K) keyed "rowsxK")."""
    return {k.name: _plain(dataclasses.asdict(_ACTIVE[k])) for k in KINDS}


__all__ = ["TritonTuning", "DecodeTuning", "KINDS", "tuning", "set_tuning", "tuned", "tuning_record"]
