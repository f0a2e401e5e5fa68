"""The training charts: MFU per configuration (the speed options the records carry), labels that tell runs apart,
and one loss line per run (case) even where runs share a source and a learning rate."""

from __future__ import annotations

import hashlib
import json

import pytest
from matplotlib.figure import Figure

from andromeda.records import Record
from andromeda.report.chart_specs_training import config_label, mfu_by_config, run_labels, short_config
from andromeda.report.load import frame

BEFORE = {"precision": "bf16", "compile": "none", "fused_ce": False, "fused_adamw": False, "checkpointing": "none"}
FAST = {"precision": "bf16-master", "compile": "blocks", "compile_backend": "inductor", "fused_ce": True,
        "fused_adamw": True, "checkpointing": "none"}


def _case(source: str, seq: int, settings: dict, mfu: float | None, status: str = "ok") -> list[Record]:
    params = {"lr": 3e-4, "seq_len": seq, "batch": 2, "grad_accum": 8, "optimizer": "adamw", **settings}
    cid = hashlib.sha1(json.dumps([source, params], sort_keys=True).encode()).hexdigest()[:12]
    if status != "ok":
        return [Record(case_id=cid, scenario="training", source=source, params=params, status=status,
                       message="CUDA out of memory")]
    m = {"tflops": 400.0 * (mfu or 0.1)}
    if mfu is not None:
        m.update(mfu=mfu, mfu_measured_peak=mfu * 989.5 / 790)
    steps = [Record(case_id=cid, scenario="training", source=source, params={**params, "step": s},
                    metrics={"loss": 5.0 - s / 10, "tokens_per_s": 1e5, **m}) for s in (2, 4)]
    final = Record(case_id=cid, scenario="training", source=source, params={**params, "step": 4, "final": True},
                   metrics={"val_ppl": 9.0, **m}, samples={"loss": [5.0, 4.9, 4.8, 4.7]})
    return [*steps, final]


def _draw(draw, recs):
    ax = Figure().add_subplot()
    return draw(ax, frame(recs), recs), ax


def test_config_labels_name_the_speed_options():
    assert config_label(FAST) == "bf16-master · compiled blocks · fused CE · fused AdamW"
    assert config_label(BEFORE) == "bf16 autocast · eager"
    assert config_label({}) == "fp32 · eager"  # a record from before the fields existed
    got = config_label({"compile": "blocks", "compile_backend": "aot_eager", "checkpointing": "selective",
                        "optimizer": "adamw8bit"})
    assert got == "fp32 · compiled blocks (aot_eager) · 8-bit AdamW · selective ckpt"
    assert config_label({"activation_checkpointing": True}) == "fp32 · eager · full ckpt"
    assert short_config({"precision": "bf16", "checkpointing": "selective", "optimizer": "adamw8bit"}) == (
        "bf16+8bit-AdamW+sel-ckpt")


def test_mfu_per_configuration_bars_with_the_change_and_both_peaks():
    recs = (_case("andromeda:base", 2048, BEFORE, 0.16) + _case("andromeda:base", 2048, FAST, 0.40)
            + _case("andromeda:base", 8192, FAST, 0.44) + _case("hf:matched:base", 2048, BEFORE, 0.2)
            + _case("hf:matched:base", 2048, FAST, None, status="oom"))
    drawn, ax = _draw(mfu_by_config, recs)
    assert drawn
    labels = ax.get_legend_handles_labels()[1]
    assert [lb for lb in labels if "·" in lb] == [config_label(BEFORE), config_label(FAST)]  # the manifest's order
    assert "MFU vs measured matmul rate" in labels
    bars = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert bars == [16.0, 20.0, 40.0, 44.0]  # percent of the datasheet peak, one bar per ok case
    texts = [t.get_text() for t in ax.texts]
    assert "40% ×2.5" in texts and "16%" in texts  # the fast step against the group's first configuration
    assert " OOM" in texts  # the matched Llama's fast case ran out of memory: marked, not dropped
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == ["andromeda:base · n=2048", "andromeda:base · n=8192", "hf:matched:base · n=2048"]


def test_without_a_device_peak_the_bars_are_tflops_and_without_summaries_nothing_is_drawn():
    recs = _case("andromeda:tiny", 128, {}, None) + _case("andromeda:tiny", 128, FAST, None)
    drawn, ax = _draw(mfu_by_config, recs)
    assert drawn and "TFLOP/s" in ax.get_xlabel()
    assert not _draw(mfu_by_config, [r for r in recs if not r.params.get("final")])[0]


def test_runs_sharing_a_source_and_lr_are_separate_loss_lines():
    from andromeda.report.chart_specs_quality import training_loss

    recs = _case("andromeda:base", 2048, BEFORE, 0.16) + _case("andromeda:base", 2048, FAST, 0.4)
    labels = run_labels(frame(recs))
    assert sorted(labels.values()) == ["andromeda:base · bf16",
                                       "andromeda:base · bf16-master+compiled+fused-CE+fused-AdamW"]
    drawn, ax = _draw(training_loss, recs)
    assert drawn
    lines = ax.get_legend_handles_labels()[1]
    assert sum("interval mean" in lb for lb in lines) == 2


@pytest.mark.parametrize("name", ["training_mfu_by_config", "training_loss"])
def test_the_report_renders_the_training_charts(name):
    from andromeda.report.charts import render_charts

    recs = _case("andromeda:base", 2048, BEFORE, 0.16) + _case("andromeda:base", 2048, FAST, 0.4)
    charts, errors = render_charts(recs)
    assert not errors and name in {c.name for c in charts}
