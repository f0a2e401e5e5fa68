"""Gradient statistics against .grad read directly; vanishing/exploding flags; update ratios;
activation statistics against the full tensors captured by the test's own hooks."""

import math

import pytest
import torch

from andromeda.diagnostics import Diagnostics, GradThresholds
from andromeda.model import Andromeda, from_name

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _model(**kw):
    torch.manual_seed(0)
    return Andromeda(from_name("tiny", **kw)).eval()


def _step(model, diag, tokens):
    for p in model.parameters():
        p.grad = None
    with diag.capture():
        model.loss(tokens).backward()


def test_gradient_stats_equal_grad_read_directly():
    model = _model()
    diag = Diagnostics(model, activations=False, activation_grads=False, attention=False, attention_grads=False)
    _step(model, diag, torch.randint(0, 256, (2, 48)))
    rep = diag.report()
    for name, p in model.named_parameters():
        g = p.grad.double()
        s = rep.param_grads[name]
        assert s["norm"] == pytest.approx(float(g.norm()), rel=1e-12), name
        assert s["mean"] == pytest.approx(float(g.mean()), rel=1e-9, abs=1e-15), name
        assert s["std"] == pytest.approx(float(g.std(correction=0)), rel=1e-9, abs=1e-15), name
        assert s["abs_max"] == float(g.abs().max()), name
    # per layer: the norm over the layer's parameters together
    blk = model.blocks[1]
    ref = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in blk.parameters()))
    assert rep.grads_by_layer[1]["norm"] == pytest.approx(ref, rel=1e-12)
    # the flags look at the layer's weight matrices
    ref_mat = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in blk.parameters() if p.dim() >= 2))
    assert rep.layer_flags[1]["grad_norm"] == pytest.approx(ref_mat, rel=1e-12)
    # per (layer, component): attention query projection of layer 0
    assert rep.grads_by_component[(0, "attn.q")]["norm"] == pytest.approx(
        float(model.blocks[0].attn.to_q.weight.grad.double().norm()), rel=1e-12)


def test_zeroed_layer_is_flagged_vanishing():
    """Zeroed weights pass no gradient to the layer's matrices (only its output bias still gets one)."""
    model = _model(depth=3)
    with torch.no_grad():
        for p in model.blocks[1].parameters():
            p.zero_()
    diag = Diagnostics(model, activations=False, activation_grads=False, attention=False, attention_grads=False)
    for _ in range(2):
        _step(model, diag, torch.randint(0, 256, (1, 32)))
    rep = diag.report()
    assert rep.flagged_layers() == {1: "vanishing"}
    f = rep.layer_flags[1]
    assert f["vanishing"] and f["vanishing_steps"] == 2 and f["grad_norm"] < rep.options.thresholds.vanishing_abs


def test_thresholds_are_configurable():
    model = _model()
    t = GradThresholds(vanishing_abs=0.0, vanishing_rel=0.0, exploding_abs=1e-9, exploding_rel=1e9)
    diag = Diagnostics(model, thresholds=t, activations=False, activation_grads=False, attention=False,
                       attention_grads=False)
    _step(model, diag, torch.randint(0, 256, (1, 32)))
    flags = diag.report().flagged_layers()
    assert flags and set(flags.values()) == {"exploding"}


def test_update_ratio_after_sgd_step():
    model = _model()
    diag = Diagnostics(model, activations=False, activation_grads=False, attention=False, attention_grads=False)
    _step(model, diag, torch.randint(0, 256, (1, 32)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    lr = 0.01
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    diag.before_step()
    opt.step()
    diag.after_step()
    rep = diag.report()
    for name in ("blocks.0.attn.to_q.weight", "blocks.1.ff.w_out.weight"):
        ref = lr * float(grads[name].double().norm()) / float(before[name].double().norm())
        assert rep.param_grads[name]["update_ratio"] == pytest.approx(ref, rel=1e-5)


def test_activation_and_activation_gradient_stats_equal_full_tensors():
    model = _model()
    diag = Diagnostics(model, param_grads=False, attention=False, attention_grads=False)
    full = {}

    def keep(key):
        def pre(mod, args):
            full[key] = args[0].detach().clone()
            args[0].register_hook(lambda g: full.__setitem__(key + ("grad",), g.detach().clone()))
        return pre

    h1 = model.blocks[0].ff.w_out.register_forward_pre_hook(keep((0, "ff_hidden")))
    h2 = model.blocks[1].register_forward_hook(lambda m, a, out: full.__setitem__((1, "block"), out.detach().clone()))
    _step(model, diag, torch.randint(0, 256, (2, 40)))
    h1.remove()
    h2.remove()
    rep = diag.report()
    for key in ((0, "ff_hidden"), (1, "block")):
        x = full[key].double()
        s = rep.activations[key]
        assert s["mean"] == pytest.approx(float(x.mean()), rel=1e-9, abs=1e-12)
        assert s["std"] == pytest.approx(float(x.std(correction=0)), rel=1e-9)
        assert s["max"] == float(x.max()) and s["min"] == float(x.min())
        m2 = ((x - x.mean()) ** 2).mean()
        assert s["kurtosis"] == pytest.approx(float(((x - x.mean()) ** 4).mean() / m2**2), rel=1e-8)
    g = full[(0, "ff_hidden", "grad")].double()
    assert rep.activation_grads[(0, "ff_hidden")]["rms"] == pytest.approx(float(g.pow(2).mean().sqrt()), rel=1e-9)
