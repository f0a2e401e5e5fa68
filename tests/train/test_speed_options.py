"""The training step's speed options on CPU: config validation, bf16 weights with float32 masters, fused/foreach
AdamW, the fused LM loss in the loop, regional compile (one graph for every block), full and selective
checkpointing (same step; recomputed FLOPs against torch's flop counter), and no host synchronization inside a
queued step."""

import sys

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from andromeda.data import open_data
from andromeda.errors import ConfigError
from andromeda.measure.facts import facts_from_config
from andromeda.model import Andromeda, from_name, lm_loss
from andromeda.train import TrainConfig, Trainer
from andromeda.train.regional import BlockWrappers

DATA = open_data("synthetic:markov?n_symbols=32&successors=4")


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return Andromeda(from_name("tiny", **kw))


def _batches(pos):
    return torch.from_numpy(DATA.train_batch(4, 32, pos))


def _small(pos):
    return torch.from_numpy(DATA.train_batch(2, 16, pos))


def _cfg(**kw):
    return TrainConfig(**{**dict(steps=6, batch=4, seq_len=32, warmup_steps=2, log_every=3, eval_every=0), **kw})


def _losses(res):
    return [h["loss"] for h in res.history]


@pytest.mark.parametrize("kw,match", [
    (dict(precision="bf16-master-x"), "precision: one of fp32, bf16, bf16-autocast, fp16, bf16-master"),
    (dict(compile="all"), "compile: one of none, blocks"),
    (dict(checkpointing="some"), "checkpointing: one of none, full, selective"),
    (dict(fused_ce=1), "fused_ce: must be true or false"),
    (dict(fused_adamw=True, optimizer="adamw8bit"), "fused_adamw"),
    (dict(activation_checkpointing=True, checkpointing="selective"), "give one of the two"),
    (dict(health_every=-1), "health_every: must be >= 0"),
    (dict(spike_sigma=0), "spike_sigma: must be > 0"),
])
def test_config_refusals_name_the_field_and_the_allowed_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)


def test_config_spellings_are_stored_once():
    assert TrainConfig(precision="bf16-autocast").precision == "bf16"
    assert TrainConfig(activation_checkpointing=True).checkpointing == "full"
    assert TrainConfig(checkpointing="full").activation_checkpointing is True


def test_bf16_master_keeps_float32_masters_and_tied_weights():
    m = _model(tie_embeddings=True)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    t = Trainer(m, _cfg(precision="bf16-master", fused_adamw=True, batch=2, seq_len=16), _small)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters()) and m.head.weight is m.embed.token.weight
    assert all(x.dtype == torch.float32 for x in t.master.masters)
    state = t.master_state_dict()
    for n, v in before.items():  # the masters start from the float32 values, not their bf16 rounding
        assert torch.equal(state[n], v), n
    assert t.optimizer.defaults["foreach"] is True  # fused_adamw off CUDA: the foreach implementation
    res = t.run()
    for p, mw in zip(t.master.params, t.master.masters, strict=True):  # the parameters are the masters, rounded
        assert torch.equal(p, mw.to(torch.bfloat16))
    ref = Trainer(_model(tie_embeddings=True), _cfg(batch=2, seq_len=16), _small).run()
    assert _losses(res) == pytest.approx(_losses(ref), rel=2e-3)  # bf16 rounding of a float32 run


def test_bf16_master_resumes_exactly(tmp_path):
    cfg = dict(precision="bf16-master", checkpoint_every=3, grad_accum=2, batch=2, seq_len=16, steps=5)
    whole = Trainer(_model(), _cfg(checkpoint_dir=str(tmp_path / "a"), **cfg), _small).run()
    first = Trainer(_model(), _cfg(checkpoint_dir=str(tmp_path / "b"), **cfg), _small)
    first.run(until=4)
    again = Trainer(_model(seed=7), _cfg(checkpoint_dir=str(tmp_path / "b"), **cfg), _small)
    assert again.resume() and again.step == 3
    assert _losses(again.run()) == _losses(whole)


def test_fused_ce_in_the_loop_gives_the_unfused_losses_and_refuses_a_loss_fn():
    ref = Trainer(_model(), _cfg(), _batches).run()
    got = Trainer(_model(), _cfg(fused_ce=True), _batches).run()
    assert _losses(got) == pytest.approx(_losses(ref), rel=1e-5)
    with pytest.raises(ConfigError, match="fused_ce"):
        Trainer(_model(), _cfg(fused_ce=True), _batches, loss_fn=lambda t: t.sum())


def test_regional_compile_is_one_graph_for_every_block():
    m = _model(depth=4)
    counter = CompileCounter()
    w = BlockWrappers(m, compile=True, checkpointing="none", backend=counter)
    tokens = torch.randint(0, 320, (2, 16))
    lm_loss(m(tokens), tokens).backward()
    assert counter.frame_count == 1 and w.info["fullgraph"] is True  # sdpa on CPU: traced whole
    w.undo()
    assert not any("forward" in b.__dict__ for b in m.blocks)


def test_an_attention_kernel_dynamo_cannot_trace(monkeypatch):
    """An attention kernel hidden from dynamo (torch.compiler.disable; ours is a custom operator and traces): full
    graphs fall back to graph breaks around it, once, and say so; selective checkpointing, whose policy needs one
    graph, is refused with the reason."""
    from andromeda.errors import UnsupportedError
    from andromeda.model import backends

    cls = type(backends.get("sdpa"))
    monkeypatch.setattr(cls, "__call__", torch.compiler.disable(cls.__call__))
    tokens = torch.randint(0, 320, (2, 16))
    m = _model(depth=2)
    w = BlockWrappers(m, compile=True, checkpointing="full", backend="eager")
    lm_loss(m(tokens), tokens).backward()
    assert w.info["fullgraph"] is False and "disable" in w.info["fullgraph_failed"]
    w.undo()
    w = BlockWrappers(m, compile=True, checkpointing="selective", backend="eager")
    with pytest.raises(UnsupportedError, match="selective with compile: blocks needs each block traced as one graph"):
        m(tokens)
    w.undo()


@pytest.mark.parametrize("checkpointing", ["none", "full", "selective"])
def test_compiled_and_checkpointed_steps_equal_the_eager_step(checkpointing):
    ref = Trainer(_model(depth=3), _cfg(steps=3), _batches).run()
    counter = CompileCounter()
    t = Trainer(_model(depth=3), _cfg(steps=3, compile="blocks", checkpointing=checkpointing, fused_ce=True), _batches,
                compile_backend=counter)
    got = t.run()
    assert counter.frame_count >= 1  # the blocks (and the loss's chunk) went through the compiler
    assert _losses(got) == pytest.approx(_losses(ref), rel=1e-5)
    eager = Trainer(_model(depth=3), _cfg(steps=3, checkpointing=checkpointing), _batches).run()
    assert _losses(eager) == pytest.approx(_losses(ref), rel=1e-6)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_selective_checkpointing_recomputes_no_matmul(backend):
    """torch's flop counter over a real forward + backward: selective checkpointing (matmul and SDPA outputs
    kept) adds nothing, so its hardware FLOPs are the model FLOPs; full checkpointing adds the block forward."""
    counted = {}
    for mode in ("none", "selective", "full"):
        m = _model(attn_backend=backend)
        w = BlockWrappers(m, compile=False, checkpointing=mode) if mode != "none" else None
        tokens = torch.randint(0, 320, (2, 16))
        with FlopCounterMode(display=False) as fc:
            lm_loss(m(tokens), tokens).backward()
        counted[mode] = fc.get_total_flops()
        if w:
            w.undo()
    assert counted["selective"] == counted["none"] < counted["full"]
    m = _model(attn_backend=backend)
    t = Trainer(m, _cfg(checkpointing="selective"), _batches, facts=facts_from_config(m.cfg))
    assert t.hardware_flops_per_step == t.flops_per_step


_SYNCS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
          torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.nonzero}


class _NoHostReads(TorchFunctionMode):
    """Fails on any read of a tensor's value into Python (what synchronizes a GPU), except torch.optim's own
    reads of its CPU step counters (on CUDA they stay on the host unless the optimizer is fused/capturable)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCS and "torch/optim" not in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
            raise AssertionError(f"host read inside the step: {func.__name__}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kw", [dict(), dict(precision="bf16-master", fused_ce=True, checkpointing="selective"),
                                dict(grad_accum=2, precision="bf16", checkpointing="full", grad_clip=None)])
def test_a_queued_step_reads_nothing_back(kw):
    t = Trainer(_model(), _cfg(health_every=1, **kw), _batches)
    with t.wrapped(), _NoHostReads():
        t.run_step()  # health metrics due at this step: per-layer norms and activation hooks included
        t.run_step()
    with pytest.raises(AssertionError, match="host read"), _NoHostReads():
        torch.ones(2).sum().item()
    recs = t.collect()
    assert [r["step"] for r in recs] == [1, 2] and "activations" in recs[0] and "layer_grad_norm" in recs[1]
