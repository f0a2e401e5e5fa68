"""The diagnostics preset end to end (Andromeda and a Hugging Face Llama built from a local config),
the report's charts, and a model whose attention cannot expose q and k."""

import pytest
import torch
from torch import nn

from andromeda.diagnostics import Diagnostics
from andromeda.measure.facts import ModelFacts
from andromeda.measure.timing import TimingConfig
from andromeda.model import ByteTokenizer
from andromeda.records import RecordStore
from andromeda.report.build import build_report
from andromeda.runs.context import Case, RunContext
from andromeda.runs.manifest import load_manifest
from andromeda.runs.runner import run
from andromeda.scenarios.diagnostics import DiagnosticsConfig, DiagnosticsScenario
from andromeda.sources.models import ModelBundle

HF = ("hf:llama?hidden_size=64&num_hidden_layers=2&num_attention_heads=4&num_key_value_heads=1"
      "&intermediate_size=128&vocab_size=300&max_position_embeddings=256")
PROBES = {"params", "activations", "gradients", "attention", "inputs", "sensitivity", "robustness", "ambiguity"}
CHARTS = ["attention_heatmaps", "entropy", "weight_histograms", "activation_rms", "activation_kurtosis",
          "activation_grad_rms", "param_grad_norm", "update_ratio", "attention_grads", "param_share",
          "loss_by_class", "robustness", "sensitivity", "ambiguity"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def preset_run(tmp_path_factory, one_thread):
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("diag") / "run"
    m = load_manifest(preset="diagnostics", overrides=["device=cpu", f"models=[andromeda:tiny, '{HF}']"])
    result = run(m, out)
    return out, result


def test_preset_runs_on_andromeda_and_hf(preset_run):
    out, result = preset_run
    records = RecordStore(out / "results.jsonl").read()
    assert result.counts.get("ok") == len(records), [r.message for r in records if r.status != "ok"]
    for source in ("andromeda:tiny", HF):
        mine = [r for r in records if r.source == source]
        assert {r.params["probe"] for r in mine} == PROBES, source
        attn = [r for r in mine if r.params["probe"] == "attention" and r.params.get("tensor") == "probs"
                and isinstance(r.params.get("layer"), int)]
        assert [r.params["layer"] for r in attn] == [0, 1]
        assert all(len(r.samples["entropy_norm_mean"]) == 4 and r.samples["heatmap"] for r in attn)
        grads = {r.params["component"] for r in mine if r.params["probe"] == "attention"
                 and r.params.get("tensor") == "gradient"}
        assert grads == {"attn.q", "attn.k", "attn.v", "attn.scores"}
        acts = {(r.params["layer"], r.params["component"]) for r in mine if r.params["probe"] == "activations"}
        assert {(0, s) for s in ("block", "attn", "ff_in", "ff_hidden", "ff_out")} <= acts
        total = next(r for r in mine if r.params["probe"] == "params" and r.params["layer"] == "all"
                     and r.params["component"] == "all")
        parts = [r for r in mine if r.params["probe"] == "params" and r.params["layer"] == "all"
                 and r.params["component"] != "all"]
        assert sum(r.metrics["params"] for r in parts) == total.metrics["params"]
        assert sum(r.metrics["share_pct"] for r in parts) == pytest.approx(100.0)
    # the model is shared between cases: the diagnostic optimizer step must leave no trace
    ok = [r for r in records if r.params["probe"] == "inputs"]
    assert all(r.metrics["loss_nats"] > 0 for r in ok)


def test_report_writes_the_diagnostics_charts(preset_run):
    out, _ = preset_run
    written = build_report(out, formats=["png", "md", "csv"])
    names = {p.stem for p in written["png"]}
    assert {f"diagnostics_{c}" for c in CHARTS} <= names
    assert all(p.stat().st_size > 5000 for p in written["png"])
    assert "diagnostics_attention_heatmaps.png" in (out / "report.md").read_text()


class _OpaqueAttention(nn.Module):
    """Attention that exposes nothing: no Andromeda Attention, no transformers interface."""

    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


class _Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = _OpaqueAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


class _Toy(nn.Module):
    def __init__(self, vocab=300, dim=32, depth=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(_Block(dim) for _ in range(depth))
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        for blk in self.layers:
            x = blk(x)
        return self.out(x)


def test_opaque_attention_is_reported_unavailable_with_stats_still_given():
    model = _Toy().eval()
    diag = Diagnostics(model)
    with diag.capture():
        from andromeda.model import lm_loss

        tokens = torch.randint(0, 256, (1, 16))
        lm_loss(model(tokens), tokens).backward()
    rep = diag.report()
    assert not rep.attention and "AttentionInterface" in rep.attention_unavailable["all"]
    assert {(0, "block"), (1, "attn"), (1, "ff_hidden")} <= set(rep.activations)
    assert (1, "ff_out") in rep.activation_grads and rep.grads_by_layer[0]["norm"] > 0
    assert rep.params.total == sum(p.numel() for p in model.parameters())

    facts = ModelFacts(params=rep.params.total, non_embedding_params=0, vocab=300, dim=32, layers=2, heads=1,
                       kv_heads=1, head_dim=32, ff_hidden=128, ff_glu=False, causal=True, max_seq_len=64,
                       tied_embeddings=False)
    bundle = ModelBundle("toy", model, ByteTokenizer(), facts, logits=model)
    point = DiagnosticsConfig(probe=["attention"], seq_len=16).points()[0]
    ctx = RunContext(torch.device("cpu"), torch.float32, TimingConfig(), {})
    ctx.case = Case("c", "toy", "diagnostics", point)
    recs = DiagnosticsScenario().run(bundle, point, ctx)
    assert len(recs) == 1 and recs[0].status == "skipped"
    assert "unavailable" in recs[0].message and recs[0].info["attention_unavailable"]["all"]
