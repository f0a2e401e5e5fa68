"""Training health metrics: the spike detector on synthetic series (a loss spike; a gradient spike in one named
layer, named; no alarm on smooth series), per-layer gradient norms and block output statistics against a direct
computation, and a gradient spike injected into one layer of a real run, named by the Trainer."""

import math

import numpy as np
import pytest
import torch

from andromeda.model import Andromeda, from_name, lm_loss
from andromeda.train import TrainConfig, Trainer
from andromeda.train.health import ActivationStats, GradNorms, SpikeDetector, layer_groups

LAYERS = ["embed.token", "blocks.0", "blocks.1", "blocks.2", "head"]


def _smooth(n=200, seed=0):
    """A decaying loss and a slowly growing gradient norm, each with 1% noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    loss = 2.0 + 3.0 * np.exp(-t / 60) + 0.01 * rng.standard_normal(n)
    norm = 0.5 + 0.002 * t + 0.005 * rng.standard_normal(n)
    layers = {name: 0.1 * (i + 1) * (1 + 0.01 * rng.standard_normal(n)) for i, name in enumerate(LAYERS)}
    return loss, norm, layers


def _feed(det, loss, norm, layers):
    found = []
    for i in range(len(loss)):
        found += det.update(i + 1, float(loss[i]), float(norm[i]), {k: float(v[i]) for k, v in layers.items()})
    return found


def test_smooth_series_raise_no_alarm():
    for seed in range(5):
        assert _feed(SpikeDetector(window=50, sigma=6.0), *_smooth(seed=seed)) == []


def test_a_loss_spike_is_flagged_once_at_its_step():
    loss, norm, layers = _smooth()
    loss[120] += 1.0  # ~100 noise standard deviations
    found = _feed(SpikeDetector(window=50, sigma=6.0), loss, norm, layers)
    assert [(s.step, s.metric) for s in found] == [(121, "loss")]
    s = found[0]
    d = np.diff(loss[70:120])  # the step-to-step changes within the 50 values before it
    assert s.expected == pytest.approx(loss[119] + d.mean()) and s.std == pytest.approx(d.std())
    assert s.sigmas == pytest.approx((loss[120] - loss[119] - d.mean()) / d.std())


def test_a_gradient_spike_in_one_layer_names_that_layer():
    loss, norm, layers = _smooth()
    # blocks.2 is 4x its usual norm; head, whose norm is larger, only moves 20%: the ratio decides
    layers["blocks.2"][150] *= 4.0
    layers["head"][150] *= 1.2
    norm[150] += 0.2  # ~30 noise standard deviations
    found = _feed(SpikeDetector(window=50, sigma=6.0), loss, norm, layers)
    assert [(s.step, s.metric, s.layer) for s in found] == [(151, "grad_norm", "blocks.2")]
    assert found[0].layer_ratio == pytest.approx(layers["blocks.2"][150] / np.mean(layers["blocks.2"][100:150]))
    assert "blocks.2" in found[0].message()


def test_a_non_finite_loss_is_a_spike_at_once():
    det = SpikeDetector()
    assert det.update(1, float("nan"), 1.0)[0].metric == "loss"
    assert math.isinf(det.spikes[0].sigmas)


def test_nothing_is_flagged_before_min_history():
    det = SpikeDetector(window=50, sigma=3.0, min_history=10)
    assert all(not det.update(i, 1.0 + (100.0 if i == 5 else 0.0), 1.0) for i in range(9))


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Andromeda(from_name("tiny", depth=3, **kw))


def test_layer_groups_of_andromeda_and_tied_weights():
    m = _tiny(tie_embeddings=True)
    params = list({id(p): p for p in m.parameters()}.values())
    groups, index = layer_groups(m, params)
    assert groups == ["embed.token", "blocks.0", "blocks.1", "blocks.2", "final_norm"]  # the head is the table
    assert len(index) == len(params)


def test_per_layer_gradient_norms_against_a_direct_computation():
    m = _tiny()
    tokens = torch.randint(0, 320, (2, 12))
    lm_loss(m(tokens), tokens).backward()
    params = list(m.parameters())
    total, per = GradNorms(m, params, per_layer=True)()
    named = dict(m.named_parameters())

    def direct(prefix):
        sq = sum(float(p.grad.double().square().sum()) for n, p in named.items() if n.startswith(prefix + "."))
        return math.sqrt(sq)

    groups = GradNorms(m, params, per_layer=True).groups
    assert groups == ["embed.token", "blocks.0", "blocks.1", "blocks.2", "final_norm", "head"]
    for g, v in zip(groups, per.tolist(), strict=True):
        assert v == pytest.approx(direct(g), rel=1e-5), g
    every = math.sqrt(sum(float(p.grad.double().square().sum()) for p in params))
    assert total.item() == pytest.approx(every, rel=1e-6)
    assert total.item() == pytest.approx(torch.nn.utils.get_total_norm([p.grad for p in params]).item(), rel=1e-6)


def test_block_output_statistics_against_a_direct_forward():
    m = _tiny()
    tokens = torch.randint(0, 320, (2, 12))
    stats = ActivationStats(m)
    stats.start()
    with torch.no_grad():
        m(tokens, logits="none")
    got = stats.stop()  # (blocks, 3)
    assert stats.stop() is None and not any(b._forward_hooks for b in m.blocks)  # hooks gone
    # the outputs themselves, kept by the test's own hooks; their statistics in float64
    outs = []
    handles = [b.register_forward_hook(lambda mod, args, out: outs.append(out.detach().double())) for b in m.blocks]
    with torch.no_grad():
        m(tokens, logits="none")
    for h in handles:
        h.remove()
    for i, x64 in enumerate(outs):
        want = [x64.mean().item(), x64.std(correction=0).item(), x64.abs().max().item()]
        assert got[i].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6), i


def test_a_gradient_spike_injected_into_one_layer_is_named_by_the_trainer():
    """A real run; at step 20 the gradient of blocks.1's FFN output weight is multiplied by 1000."""
    from andromeda.data import open_data

    data = open_data("synthetic:markov?n_symbols=32&successors=4")
    m = _tiny()
    step = {"n": 0}
    target = m.blocks[1].ff.w_out.weight

    def boost(grad):
        return grad * 1000.0 if step["n"] == 20 else grad

    target.register_hook(boost)

    def batches(pos):
        step["n"] = pos + 1  # one micro-batch a step: position p is step p + 1
        return torch.from_numpy(data.train_batch(4, 32, pos))

    logs = []
    cfg = TrainConfig(steps=22, batch=4, seq_len=32, warmup_steps=2, lr=1e-3, log_every=10, eval_every=0,
                      health_every=5, spike_window=20, spike_sigma=6.0)
    res = Trainer(m, cfg, batches, log=logs.append).run()
    spikes = res.info["spikes"]
    assert [(s["step"], s["metric"], s["layer"]) for s in spikes] == [(20, "grad_norm", "blocks.1")]
    assert any("spike at step 20" in line and "blocks.1" in line for line in logs)
    h = res.history
    assert set(h[0]["layer_grad_norm"]) == {"embed.token", "blocks.0", "blocks.1", "blocks.2", "final_norm", "head"}
    assert [x["step"] for x in h if "activations" in x] == [5, 10, 15, 20]
    assert set(h[4]["activations"]["blocks.0"]) == {"mean", "std", "max_abs"}
    assert h[19]["spikes"][0]["layer"] == "blocks.1"
