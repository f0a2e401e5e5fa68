"""Perplexity, bits per byte and word perplexity against direct computations; windows; the KV-cache
path; the teacher/student scenario through the runner."""

import inspect
import math

import numpy as np
import pytest
import torch
import yaml

from andromeda.data import Documents, text_documents
from andromeda.errors import ConfigError
from andromeda.records import RecordStore
from andromeda.scenarios.perplexity import evaluate
from andromeda.sources.models import build

CPU = torch.device("cpu")
HF_LLAMA = ("hf:llama?hidden_size=64&num_hidden_layers=2&num_attention_heads=4&num_key_value_heads=1"
            "&intermediate_size=128&vocab_size=300")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build("andromeda:tiny", CPU, torch.float32)


def _docs(lengths, seed=0, vocab=256):
    g = np.random.default_rng(seed)
    return Documents([g.integers(0, vocab, n) for n in lengths])


def _nll_after(model, context: np.ndarray, target: int) -> float:
    """-log p(target | context), from a float64 log-softmax of the model's last logits."""
    with torch.no_grad():
        logits = model(torch.as_tensor(context, dtype=torch.long)[None])[0, -1].double()
    return float(-torch.log_softmax(logits, -1)[target])


def test_ppl_is_exp_of_mean_token_nll(tiny):
    docs = _docs([50, 17, 64, 2])
    m, _ = evaluate(tiny, docs, seq_len=64, batch=3)
    nll, n = 0.0, 0
    for t in docs.tokens:  # every document fits one window: one forward pass each
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(torch.as_tensor(t)[None])[0].double(), -1)
        nll -= float(logp[torch.arange(len(t) - 1), torch.as_tensor(t[1:])].sum())
        n += len(t) - 1
    assert m["tokens_scored"] == n
    assert m["cross_entropy_nats"] == pytest.approx(nll / n, rel=1e-6)
    assert m["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-6)
    assert m["ppl_ci_low"] <= m["ppl"] <= m["ppl_ci_high"]


@pytest.mark.parametrize("source", ["andromeda", "hf"])
def test_logits_past_the_budget_are_scored_in_chunks_of_positions(tiny, source, monkeypatch):
    """A batch whose logits pass LOGITS_BUDGET_BYTES (here: any) is scored from the hidden states NLL_ROWS (7)
    positions at a time, never holding (B, N, V) logits; the NLL equals a float64 log-softmax of the full
    logits (Andromeda) and transformers' own loss (a Llama)."""
    from andromeda.scenarios import perplexity

    def no_full_logits(*a, **k):
        raise AssertionError("the full logits were computed")

    monkeypatch.setattr(perplexity, "LOGITS_BUDGET_BYTES", 0)
    monkeypatch.setattr(perplexity, "NLL_ROWS", 7)
    monkeypatch.setattr(perplexity, "token_nll", no_full_logits)
    if source == "hf":
        torch.manual_seed(0)
        bundle = build(HF_LLAMA, CPU, torch.float32)
        ids = np.random.default_rng(0).integers(0, 300, 48)
        m, _ = evaluate(bundle, Documents([ids]), seq_len=64)
        x = torch.as_tensor(ids)[None]
        with torch.no_grad():
            ref = bundle.model(input_ids=x, labels=x).loss.item()
        assert m["cross_entropy_nats"] == pytest.approx(ref, rel=1e-5)
        return
    docs = _docs([50, 17, 64])
    m, _ = evaluate(tiny, docs, seq_len=64, batch=3)
    nll, n = 0.0, 0
    for t in docs.tokens:
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(torch.as_tensor(t)[None])[0].double(), -1)
        nll -= float(logp[torch.arange(len(t) - 1), torch.as_tensor(t[1:])].sum())
        n += len(t) - 1
    assert m["cross_entropy_nats"] == pytest.approx(nll / n, rel=1e-6)


@pytest.mark.parametrize("stride", [None, 5, 12])
def test_windows_score_each_token_once_with_its_context(tiny, stride):
    L, n = 12, 40  # seq_len: tokens fed per window
    docs = _docs([n], seed=1)
    t = docs.tokens[0]
    m, info = evaluate(tiny, docs, seq_len=L, stride=stride, batch=4)
    total = 0.0
    for p in range(1, n):  # independent of the window planner: the last target of p's window, and its context
        if stride is None:  # targets in blocks of L: 1..L, L+1..2L, ...
            last = min(n - 1, L * math.ceil(p / L))
        else:  # the first window's L targets, then blocks of `stride`
            last = L if p <= L else min(n - 1, L + stride * math.ceil((p - L) / stride))
        total += _nll_after(tiny.model, t[max(0, last - L) : p], int(t[p]))  # the window feeds the L before `last`
    assert m["tokens_scored"] == n - 1
    assert m["windows"] == (4 if stride in (None, 12) else 1 + math.ceil((n - 1 - L) / stride))
    assert m["cross_entropy_nats"] == pytest.approx(total / (n - 1), rel=1e-5)
    assert info["ci_unit"] == "window" and info["seq_len"] == L


def test_the_documented_picture_of_the_windows():
    """The windows drawn in data/windows.py (and docs/quality.md): BOS + ten tokens, seq_len 4."""
    from andromeda.data import plan_windows

    def fed_and_scored(stride):
        return [(list(range(w.begin, w.end - 1)), list(range(w.score_from, w.end)))
                for w in plan_windows([11], 4, stride)]

    assert fed_and_scored(None) == fed_and_scored(4) == [
        ([0, 1, 2, 3], [1, 2, 3, 4]), ([4, 5, 6, 7], [5, 6, 7, 8]), ([6, 7, 8, 9], [9, 10])]
    assert fed_and_scored(2) == [([0, 1, 2, 3], [1, 2, 3, 4]), ([2, 3, 4, 5], [5, 6]), ([4, 5, 6, 7], [7, 8]),
                                 ([6, 7, 8, 9], [9, 10])]
    with pytest.raises(ConfigError, match=r"stride must be between 1 and seq_len \(4\)"):
        plan_windows([11], 4, 5)


def test_hf_model_matches_transformers_loss():
    torch.manual_seed(0)
    hf = build(HF_LLAMA, CPU, torch.float32)
    ids = np.random.default_rng(0).integers(0, 300, 48)
    m, _ = evaluate(hf, Documents([ids]), seq_len=64)
    x = torch.as_tensor(ids)[None]
    with torch.no_grad():
        ref = hf.model(input_ids=x, labels=x).loss.item()
    assert math.log(m["ppl"]) == pytest.approx(ref, rel=1e-5)
    assert m["cross_entropy_nats"] == pytest.approx(ref, rel=1e-5)


def test_bits_per_byte_byte_and_word_ppl_from_a_direct_count(tiny):
    texts = ["Héllo wörld, ünïcode ∑ and ascii.", "Second document: naïve café — 日本語 text."]
    docs = text_documents(texts, tiny.tokenizer)  # BOS + UTF-8 bytes: every byte of the text is a target
    m, info = evaluate(tiny, docs, seq_len=256)
    nll = 0.0
    for t in docs.tokens:
        with torch.no_grad():
            logp = torch.log_softmax(tiny.model(torch.as_tensor(t)[None])[0].double(), -1)
        nll -= float(logp[torch.arange(len(t) - 1), torch.as_tensor(t[1:])].sum())
    n_bytes = sum(len(s.encode("utf-8")) for s in texts)
    n_words = sum(len(s.split()) for s in texts)
    assert m["bytes_scored"] == n_bytes == m["tokens_scored"]
    assert m["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-6)
    assert m["byte_ppl"] == pytest.approx(2 ** (nll / math.log(2) / n_bytes), rel=1e-6)
    assert m["word_ppl"] == pytest.approx(math.exp(nll / n_words), rel=1e-6)
    assert info["ci_unit"] == "document" and info["bytes"].startswith("exact")


def test_synthetic_data_reports_its_floor(tiny):
    from andromeda.data import open_data

    src = open_data("synthetic:markov?val_docs=4&doc_len=100")
    m, _ = evaluate(tiny, src.documents(), seq_len=64)
    assert m["floor_ppl"] == pytest.approx(src.facts["floor_ppl"])
    assert m["ppl_over_floor"] == pytest.approx(m["ppl"] / m["floor_ppl"])


def test_out_of_vocabulary_tokens_are_refused(tiny):
    with pytest.raises(ConfigError, match="vocabulary"):
        evaluate(tiny, Documents([np.array([1, 2, 999])]), seq_len=8)


def test_full_precision_cache_matches_the_forward_pass(tiny):
    docs = _docs([40, 40, 25], seed=2)
    off, _ = evaluate(tiny, docs, seq_len=16, batch=2)
    full, _ = evaluate(tiny, docs, seq_len=16, batch=2, cache="full", decode_chunk=3)
    assert full["logit_max_abs_diff"] < 1e-4
    assert full["ppl"] == pytest.approx(off["ppl"], rel=1e-5)
    assert full["ppl_reference"] == pytest.approx(off["ppl"], rel=1e-9)
    f, cfg = tiny.facts, tiny.model.cfg
    analytic = 2 * f.layers * f.kv_heads * f.head_dim * 4  # K and V, float32
    # cache.nbytes also holds the token-shift state: shift_tokens rows of dim per layer, site and sequence
    shift = f.layers * 2 * cfg.shift_tokens * cfg.dim * 4 / 16
    assert full["kv_bytes_per_token"] == pytest.approx(analytic + shift)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_cache_path(tiny, quant):
    if "quant" not in inspect.signature(tiny.model.new_cache).parameters:
        pytest.skip("model.new_cache() takes no quant= yet (quantized KV caches are owned by andromeda.model)")
    docs = _docs([40, 40], seed=3)
    full, _ = evaluate(tiny, docs, seq_len=16, batch=2, cache="full")
    q, _ = evaluate(tiny, docs, seq_len=16, batch=2, cache=quant, group_size=16)
    assert 0 < q["logit_max_abs_diff"] < 1.0 and q["logit_mean_abs_diff"] <= q["logit_max_abs_diff"]
    assert q["kv_bytes_per_token"] < full["kv_bytes_per_token"]
    assert abs(math.log(q["ppl_ratio"])) < 0.05


def _run(tmp_path, scenarios, models=("andromeda:tiny",)):
    from andromeda.runs.manifest import load_manifest
    from andromeda.runs.runner import run

    m = {"name": "t", "models": list(models), "device": "cpu", "report": {"formats": ["csv", "png", "tex"]},
         "timing": {"warmup": 1, "min_runs": 2, "max_runs": 3, "budget_s": 0.05, "target_rel_ci": None},
         "scenarios": scenarios}
    (tmp_path / "m.yml").write_text(yaml.safe_dump(m))
    run(load_manifest(tmp_path / "m.yml"), tmp_path / "run")
    return RecordStore(tmp_path / "run" / "results.jsonl").read()


def test_scenarios_through_the_runner(tmp_path):
    from andromeda.model import Andromeda, from_name, save_checkpoint
    from andromeda.report import build_report
    from andromeda.report.chart_specs_quality import teacher_student_latex

    torch.manual_seed(123)
    save_checkpoint(Andromeda(from_name("tiny", kv_heads=4)), tmp_path / "teacher")
    data = "synthetic:markov?val_docs=4&doc_len=64"
    recs = _run(tmp_path, [
        {"scenario": "perplexity", "data": data, "seq_len": [32], "stride": [None, 16], "cache": ["off", "full"],
         "batch": 4, "max_tokens": 200},
        {"scenario": "teacher_student", "data": data, "seq_len": 32, "max_tokens": 200, "prompt_len": 8,
         "gen_len": 4, "teacher": {"source": "andromeda:tiny?kv_heads=4", "checkpoint": str(tmp_path / "teacher")}},
    ])
    assert all(r.status == "ok" for r in recs), [r.message for r in recs if r.status != "ok"]
    ppl = [r for r in recs if r.scenario == "perplexity"]
    assert len(ppl) == 4 and all(r.metrics["tokens_scored"] == 200 for r in ppl)
    roles = {r.params["role"]: r for r in recs if r.scenario == "teacher_student"}
    assert set(roles) == {"teacher", "student", "comparison"}
    t, s, c = roles["teacher"].metrics, roles["student"].metrics, roles["comparison"].metrics
    assert c["kv_reduction"] == pytest.approx(4.0)  # 4 KV heads vs 1, same everything else
    assert c["ppl_ratio"] == pytest.approx(s["ppl"] / t["ppl"])
    # the teacher is the checkpoint's model: its perplexity is that of the model loaded directly
    from andromeda.model import load_checkpoint
    from andromeda.scenarios.perplexity import open_cached

    loaded = build("andromeda:tiny?kv_heads=4", CPU, torch.float32)
    loaded.model.load_state_dict(load_checkpoint(tmp_path / "teacher").state_dict())
    direct, _ = evaluate(loaded, open_cached(data, loaded.tokenizer).documents(), seq_len=32, max_tokens=200)
    assert t["ppl"] == pytest.approx(direct["ppl"], rel=1e-6)
    tex = teacher_student_latex(recs)
    assert "Perplexity $\\downarrow$" in tex and "KV-Cache (bytes/tok)" in tex and "0.25$\\times$" in tex
    paths = build_report(tmp_path / "run", ["csv", "png", "tex"])
    assert (tmp_path / "run" / "teacher_student.tex").read_text() == tex
    names = {p.stem for p in paths["png"]}
    assert {"perplexity_vs_cache", "teacher_student_ppl"} <= names


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    from andromeda.model import Andromeda, from_name, save_checkpoint

    save_checkpoint(Andromeda(from_name("tiny", kv_heads=2)), tmp_path / "ck")
    with pytest.raises(ConfigError, match=r"scenarios\[0\]\.teacher\.checkpoint: .*kv_heads"):  # at load time
        _run(tmp_path, [{"scenario": "teacher_student", "data": "synthetic:markov?val_docs=2&doc_len=32",
                         "seq_len": 16, "prompt_len": 4, "gen_len": 2,
                         "teacher": {"source": "andromeda:tiny", "checkpoint": str(tmp_path / "ck")}}])


@pytest.mark.parametrize("name", ["quality-quick", "train-quick", "quality-docs", "train-docs"])
def test_quality_presets_validate_and_plan(name):
    from andromeda.runs.manifest import load_manifest
    from andromeda.runs.plan import plan

    cases = plan(load_manifest(preset=name))
    assert cases and len({c.case_id for c in cases}) == len(cases)


def test_manifest_errors_name_the_field(capsys):
    from andromeda.cli import main
    from andromeda.runs.manifest import validate

    with pytest.raises(ConfigError, match=r"scenarios\[0\].data.*cannot tell"):
        validate({"models": ["andromeda:tiny"], "scenarios": [{"scenario": "perplexity", "data": "corpus.xyz"}]})
    with pytest.raises(ConfigError, match=r"stride"):
        validate({"models": ["andromeda:tiny"], "scenarios": [{"scenario": "perplexity", "stride": [0]}]})
    assert main(["train", "--preset", "quick"]) == 2
    assert "no `scenario: training`" in capsys.readouterr().err


def test_ratio_ci_is_the_bootstrap_of_the_mean_when_denominators_are_equal():
    from andromeda.measure.stats import bootstrap_ci
    from andromeda.scenarios.perplexity import _ratio_ci

    num = np.random.default_rng(0).gamma(2.0, 3.0, 25)
    lo, hi = _ratio_ci(num, np.full(25, 8.0), 0.9, 500, seed=4)
    ref = bootstrap_ci(num / 8.0, np.mean, ci=0.9, n_boot=500, seed=4)  # same resamples, same seed
    assert (lo, hi) == pytest.approx(ref, rel=1e-12)


def test_a_cut_evaluation_is_recorded_and_warned_in_the_report(tmp_path):
    from andromeda.report import build_report

    data = "synthetic:markov?val_docs=4&doc_len=64"  # 4 documents of 63 targets each: 252 in all
    recs = _run(tmp_path, [{"scenario": "perplexity", "data": data, "seq_len": [32], "max_tokens": 100},
                           {"scenario": "perplexity", "data": data, "seq_len": ["model"]}])
    cut, whole = recs
    assert cut.metrics["tokens_scored"] == 100 and cut.metrics["tokens_total"] == 4 * 63
    assert cut.metrics["documents_total"] == 4 and cut.metrics["documents_whole"] == 1  # 63 + 37 of the second
    assert cut.metrics["documents"] == 2 and cut.info["truncated"] is True
    assert cut.info["warnings"] == ["max_tokens 100 stopped the evaluation early: 100 of 252 tokens scored, 1 of 4 "
                                    "documents whole and 1 in part; word_ppl covers whole documents only. Set "
                                    "max_tokens: null to score everything"]
    # the default scores everything, and says nothing
    assert whole.params["max_tokens"] is None and "warnings" not in whole.info
    assert whole.metrics["tokens_scored"] == whole.metrics["tokens_total"] == 252
    assert whole.metrics["documents_whole"] == 4
    # seq_len: model is the model's whole context (andromeda:tiny: 256 tokens), which the length check allows
    assert whole.info["seq_len"] == 256 and whole.metrics["windows"] == 4  # one window a document
    build_report(tmp_path / "run", ["md"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.count("max_tokens 100 stopped the evaluation early") == 1


def test_python_docs_bits_per_byte_through_the_cli_and_the_python_function(tmp_path):
    """`andromeda run` on text:python-docs and, in Python, open_data + evaluate on the model built the same way."""
    from andromeda.cli import main
    from andromeda.data import open_data

    spec = {"name": "docs", "models": ["andromeda:tiny"], "device": "cpu", "seed": 7, "report": {"formats": ["csv"]},
            "scenarios": [{"scenario": "perplexity", "data": "text:python-docs", "split": "val", "seq_len": [128],
                           "words": "lm-eval"}]}
    (tmp_path / "m.yml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "m.yml"), "--out", str(tmp_path / "run")]) == 0
    (rec,) = RecordStore(tmp_path / "run" / "results.jsonl").read()

    torch.manual_seed(7)
    bundle = build("andromeda:tiny", CPU, torch.float32)
    docs = open_data("text:python-docs", bundle.tokenizer).documents("val")
    m, info = evaluate(bundle, docs, seq_len=128, words="lm-eval")
    assert rec.metrics["bits_per_byte"] == pytest.approx(m["bits_per_byte"], rel=1e-6)
    assert rec.metrics["word_ppl"] == pytest.approx(m["word_ppl"], rel=1e-6)
    # bits per byte of whole documents: over the UTF-8 bytes of the topics' text (BOS stands for none)
    from pydoc_data.topics import topics

    val = [topics[k] for k in sorted(topics)][-len(docs):]
    assert rec.metrics["bytes_scored"] == sum(len(t.encode("utf-8")) for t in val) == rec.metrics["tokens_scored"]
    assert rec.info["words"] == "lm-eval" and rec.info["data"] == "text:python-docs"
