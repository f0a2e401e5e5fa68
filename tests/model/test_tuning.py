"""Kernel tuning settings (model/backends/settings.py): defaults, checks, setting and restoring, the record, and the
kernels' host code reading the active settings rather than module globals."""

import dataclasses
import json
import pickle
import threading

import pytest

from andromeda.errors import ConfigError
from andromeda.model.backends import DecodeTuning, TritonTuning, set_tuning, tuned, tuning, tuning_record

OLD_KNOBS = {  # the module globals these settings replace, none of which may come back
    "andromeda.model.backends.triton_flash": ("SKIP_FAR", "SKIP_MIN_KEYS", "SPLIT_HEADS", "SM90_FORWARD", "SM90",
                                              "GROUP_HEADS", "CONFIG_OVERRIDE"),
    "andromeda.model.fused_decode": ("GEMV_OVERRIDE", "PDL", "EARLY_OUT", "OUT_PRE", "EARLY_IN"),
}


def test_defaults_are_the_shipped_settings():
    assert dataclasses.asdict(TritonTuning()) == dict(
        split_heads=True, skip_far=True, skip_min_keys=1024, group_heads=3, sm90_forward=True, sm90_offset=True,
        fused_qk=False,
        sm90=dict(BLOCK_M=64, BLOCK_N=128, STAGES=2, LOADER_REGS=24, CONSUMER_REGS=240), config_override={})
    assert dataclasses.asdict(DecodeTuning()) == dict(gemv=None, gemv_by_shape={}, pdl=None, early_out=True,
                                                      out_pre=3, early_in=True, splits=128, split_tiles=4,
                                                      max_splits=1024)
    assert tuning(TritonTuning) == TritonTuning() and tuning(DecodeTuning) == DecodeTuning()
    assert tuning("triton") is tuning(TritonTuning) and tuning("fused_decode") is tuning(DecodeTuning)


def test_the_old_module_knobs_are_gone():
    import importlib

    for module, names in OLD_KNOBS.items():
        mod = importlib.import_module(module)
        assert not [n for n in names if hasattr(mod, n)], module


def test_settings_are_frozen_and_their_mappings_read_only():
    given = {"fwd": dict(BLOCK_M=16, BLOCK_N=32, TMA=False)}
    t = TritonTuning(config_override=given)
    given["fwd"]["BLOCK_M"] = 64  # a copy was taken
    assert t.config_override["fwd"]["BLOCK_M"] == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.skip_far = False
    for change in (lambda: t.config_override.update(bwd={}), lambda: t.config_override["fwd"].pop("TMA"),
                   lambda: t.sm90.__setitem__("STAGES", 3), lambda: t.sm90.clear()):
        with pytest.raises(TypeError, match="frozen"):
            change()
    assert hash(t) == hash(TritonTuning(config_override={"fwd": dict(BLOCK_M=16, BLOCK_N=32, TMA=False)}))
    assert pickle.loads(pickle.dumps(t)) == t
    assert dataclasses.replace(t, skip_far=False).config_override == t.config_override


@pytest.mark.parametrize("kind,bad,match", [
    (TritonTuning, dict(skip_far=1), "skip_far: True or False"),
    (TritonTuning, dict(skip_min_keys=-1), "skip_min_keys: an integer >= 0"),
    (TritonTuning, dict(group_heads=0), "group_heads"),
    (TritonTuning, dict(sm90=dict(BLOCK_M=64)), "sm90: missing BLOCK_N"),
    (TritonTuning, dict(config_override={"fw": dict(BLOCK_M=16, BLOCK_N=16)}), "'fwd', 'bwd', 'dq'"),
    (TritonTuning, dict(config_override={"fwd": dict(BLOCK_M=16)}), "missing BLOCK_N"),
    (TritonTuning, dict(config_override={"fwd": dict(BLOCK_M=16, BLOCK_N=16, warps=4)}), "unknown warps"),
    (TritonTuning, dict(config_override={"fwd": dict(BLOCK_M=16, BLOCK_N=16, TMA=1)}), "TMA: True or False"),
    (DecodeTuning, dict(pdl="on"), "pdl: True or False or None"),
    (DecodeTuning, dict(out_pre=5), "out_pre: an integer from 1 to 4"),
    (DecodeTuning, dict(max_splits=0), "max_splits: an integer from 1 to 65536"),
    (DecodeTuning, dict(gemv=dict(BLOCK_N=8)), "gemv: missing BLOCK_K"),
    (DecodeTuning, dict(gemv_by_shape={64: dict(BLOCK_N=8, BLOCK_K=16)}), r"\(rows, K\) tuples"),
])
def test_wrong_settings_are_refused_when_made(kind, bad, match):
    with pytest.raises(ConfigError, match=match):
        kind(**bad)


def test_set_tuning_returns_what_it_replaced_and_tuned_restores_it():
    t, d = TritonTuning(skip_far=False), DecodeTuning(pdl=False)
    before = set_tuning(t, d)
    try:
        assert before == (TritonTuning(), DecodeTuning())
        assert tuning(TritonTuning) is t and tuning(DecodeTuning) is d
        with pytest.raises(RuntimeError), tuned(TritonTuning(group_heads=1)):
            assert tuning(TritonTuning).group_heads == 1 and tuning(DecodeTuning) is d
            raise RuntimeError("the block fails: the settings before it come back all the same")
        assert tuning(TritonTuning) is t
    finally:
        set_tuning(*before)
    assert tuning(TritonTuning) == TritonTuning() and tuning(DecodeTuning) == DecodeTuning()
    with pytest.raises(ConfigError, match="two settings of one backend"):
        set_tuning(TritonTuning(), TritonTuning())
    with pytest.raises(ConfigError, match="not a TritonTuning"):
        set_tuning({"skip_far": False})
    with pytest.raises(ConfigError, match="none of"):
        tuning("flex")


def test_settings_are_process_wide(tune):
    """A backward may run on autograd's own thread: it must see the settings its forward ran with."""
    tune(TritonTuning(group_heads=2))
    seen = []
    worker = threading.Thread(target=lambda: seen.append(tuning(TritonTuning).group_heads))
    worker.start()
    worker.join()
    assert seen == [2]


def test_the_record_is_plain_json_and_in_the_environment(tune):
    from andromeda.measure.env import collect_env

    tune(TritonTuning(skip_min_keys=0, config_override={"bwd": dict(BLOCK_M=32, BLOCK_N=64, num_warps=4)}),
         DecodeTuning(gemv_by_shape={(4096, 1024): dict(BLOCK_N=8, BLOCK_K=256)}, pdl=False))
    record = tuning_record()
    assert json.loads(json.dumps(record)) == record
    assert record["triton"] == {**dataclasses.asdict(tuning(TritonTuning))}
    assert record["triton"]["config_override"] == {"bwd": {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4}}
    assert record["fused_decode"]["gemv_by_shape"] == {"4096x1024": {"BLOCK_N": 8, "BLOCK_K": 256}}
    assert record["fused_decode"]["pdl"] is False
    assert all(type(v) is dict for v in (record["triton"], record["triton"]["sm90"]))
    assert collect_env()["kernel_tuning"] == record


def test_the_attention_host_code_reads_the_active_settings(tune):
    from andromeda.model.backends import triton_flash

    runs = ((0, 12, True), (12, 12, False))
    assert triton_flash._head_runs(24, True, 12) == runs and triton_flash._group_heads(24, runs) == 3
    tune(TritonTuning(split_heads=False, group_heads=2))
    assert triton_flash._head_runs(24, True, 12) == ((0, 24, True),)
    assert triton_flash._group_heads(24, runs) == 2


def test_the_decode_gemv_reads_the_active_settings(tune):
    from andromeda.model.fused_decode import gemv_config

    assert gemv_config(64, 32, True) == dict(BLOCK_N=16, BLOCK_K=32, num_warps=1, num_stages=1)
    tune(DecodeTuning(gemv=dict(BLOCK_N=8, BLOCK_K=16), gemv_by_shape={(64, 32): dict(BLOCK_N=4, BLOCK_K=64)}))
    assert gemv_config(64, 32, True) == dict(BLOCK_N=4, BLOCK_K=64)  # the shape's own
    assert gemv_config(48, 32, True) == dict(BLOCK_N=8, BLOCK_K=16)  # every other shape's


@pytest.mark.parametrize(("blocks", "tune", "per_split"), [
    (64, DecodeTuning(), 1),  # 4K keys: 64 programs of one 64-key tile
    (513, DecodeTuning(), 4),  # 32K: 5 tiles for 128 programs is past split_tiles, so 129 programs of 4
    (3126, DecodeTuning(), 4),  # 200K: 782 programs of 4 tiles
    (8192, DecodeTuning(), 8),  # 512K: max_splits programs, 8 tiles each
    (3126, DecodeTuning(max_splits=128), 25),  # max_splits alone: the fewest tiles that keep 128 programs
    (10, DecodeTuning(max_splits=1), 10),  # one program streams the whole cache
])
def test_decode_splits_follow_the_documented_rule(blocks, tune, per_split):
    from andromeda.model.fused_decode import split_blocks

    assert split_blocks(blocks, tune) == per_split
    assert -(-blocks // per_split) <= tune.max_splits
