"""The generated input suite and the probes: lengths, content, out-of-distribution tokens, noise
rates, KL / loss against direct formulas, causality of the sensitivity probe."""

import math

import pytest
import torch

from andromeda.diagnostics import inputs, probes
from andromeda.model import Andromeda, ByteTokenizer, from_name

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TOK = ByteTokenizer()


def test_suite_lengths_classes_and_determinism():
    items = inputs.suite(TOK, 320, [16, 100], samples=2, seed=3)
    assert {(i.cls, i.length) for i in items} == {(c, n) for c in inputs.CLASSES for n in (16, 100)}
    assert all(len(i.tokens) == i.length for i in items)
    again = inputs.suite(TOK, 320, [16, 100], samples=2, seed=3)
    assert [i.tokens for i in items] == [i.tokens for i in again]
    by = {(i.cls, i.length): i for i in items}
    assert any(t >= 0x80 for t in by[("multilingual", 100)].tokens)  # multi-byte UTF-8
    assert all(t < 0x80 for t in by[("prose", 100)].tokens)
    assert "=" in bytes(by[("numbers", 100)].tokens).decode()
    assert inputs.default_lengths(256) == [16, 64, 256]


def test_ood_tokens_never_occur_in_the_reference():
    ref = inputs.reference_tokens(TOK, 320)
    ood = inputs.make_input("ood", 500, TOK, 320, reference=ref)
    assert not set(ood.tokens) & ref
    assert inputs.novel_fraction(ood.tokens, ref) == 1.0
    assert inputs.novel_fraction(inputs.make_input("prose", 500, TOK, 320, seed=9).tokens, ref) < 0.05


@pytest.mark.parametrize("kind", inputs.NOISE_KINDS)
def test_noise_rates(kind):
    toks = list(range(100)) * 50  # 5000 tokens
    noisy, orig = inputs.add_noise(toks, kind, 0.1, 256, seed=1)
    assert len(noisy) == len(orig)
    edits = len(toks) - len(noisy) if kind == "delete" else orig.count(False)
    assert edits / len(toks) == pytest.approx(0.1, abs=0.02)
    kept = [t for t, o in zip(noisy, orig, strict=True) if o]
    if kind == "substitute":
        assert all(a != b for a, b, o in zip(noisy, toks, orig, strict=True) if not o)
        assert len(noisy) == len(toks)
    if kind == "insert":
        assert kept == toks
    assert inputs.add_noise(toks, kind, 0.0, 256) == (toks, [True] * len(toks))


def test_token_losses_and_kl_match_formulas():
    torch.manual_seed(0)
    logits = torch.randn(7, 11)
    toks = torch.randint(0, 11, (7,))
    ref = torch.nn.functional.cross_entropy(logits[:-1].double(), toks[1:], reduction="none")
    assert torch.allclose(probes.token_losses(logits, toks), ref)
    other = torch.randn(7, 11)
    kl = torch.nn.functional.kl_div(other.double().log_softmax(-1), logits.double().log_softmax(-1),
                                    log_target=True, reduction="none").sum(-1)  # KL(logits || other)
    assert torch.allclose(probes.kl_rows(logits, other), kl)
    assert probes.js_rows(logits, logits).abs().max() < 1e-12
    assert float(probes.js_rows(logits, other).max()) <= math.log(2)


def test_probes_on_a_model():
    model = Andromeda(from_name("tiny")).eval()
    toks = inputs.make_input("prose", 64, TOK, 320).tokens
    s = probes.sensitivity(model, toks, 20, 256, "cpu")
    assert s["kl_before_max_nats"] < 1e-9  # causal: a later token changes no earlier prediction
    assert s["kl_at_position_nats"] > 0 and len(s["kl_curve"]) == 64 - 20
    r0 = probes.robustness(model, [toks], "substitute", 0.0, 256, "cpu")
    with torch.no_grad():
        ref = float(model.loss(torch.tensor([toks])))
    assert r0["loss_nats"] == pytest.approx(ref, rel=1e-5) and r0["clean_target_loss_nats"] == r0["loss_nats"]
    pairs = inputs.ambiguity_pairs(TOK)
    same = [(a, a, span, lab) for a, _, span, lab in pairs[:1]]
    assert probes.ambiguity(model, same, "cpu")[0]["kl_mean_nats"] < 1e-9
    diff = probes.ambiguity(model, pairs[:2], "cpu")
    assert all(d["kl_mean_nats"] > 0 for d in diff)
    rows = probes.class_losses(model, inputs.suite(TOK, 320, [32], ["prose", "random_bytes"]), "cpu")
    assert {r["input_class"] for r in rows} == {"prose", "random_bytes"}
    assert all(r["perplexity"] == pytest.approx(math.exp(r["loss_nats"])) for r in rows)
