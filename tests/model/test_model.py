"""The whole model: flags take effect, causality, cached generation, checkpoints, errors, training."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from andromeda.errors import AndromedaError, ConfigError
from andromeda.model import (
    Andromeda,
    ByteTokenizer,
    EmbeddingProvider,
    ModelConfig,
    from_name,
    lm_loss,
    load_checkpoint,
    save_checkpoint,
)
from andromeda.model.positional import xpos_period

# A small config with every spec flag off; each test turns flags on.
PLAIN = dict(num_tokens=64, max_seq_len=64, dim=32, depth=2, heads=4, dim_head=8)


def _logits(cfg, tokens, state=None):
    m = Andromeda(cfg).eval()
    if state is not None:  # copy every weight both models share so only the flag differs
        own = m.state_dict()
        m.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    with torch.no_grad():
        return m(tokens), m.state_dict()


TOGGLES = {
    "alibi_pos_bias": dict(alibi_pos_bias=True),
    "alibi_num_heads": dict(alibi_pos_bias=True, alibi_num_heads=2),
    "rotary_xpos": dict(rotary_xpos=True),
    "rotary_pos_emb": dict(rotary_pos_emb=True),
    "xpos_scale_base": dict(rotary_xpos=True, xpos_scale_base=64),
    "rotary_theta": dict(rotary_pos_emb=True, rotary_theta=500.0),
    "ff_mult": dict(ff_mult=2.0),
    "ff_inner_dim": dict(ff_inner_dim=40),
    "pos_interpolation_factor": dict(rotary_pos_emb=True, pos_interpolation_factor=4.0),
    "shift_tokens": dict(shift_tokens=1),
    "kv_heads": dict(kv_heads=1),
    "qk_norm": dict(qk_norm=True),
    "deepnorm": dict(deepnorm=True),
    "parallel_block": dict(parallel_block=True),
    "use_abs_pos_emb": dict(use_abs_pos_emb=True),
    "norm": dict(norm="rmsnorm"),
    "ff_glu": dict(ff_glu=True),
}
# Flags whose "off" state is not the plain config (the flag refines another feature).
BASES = {
    "alibi_num_heads": dict(alibi_pos_bias=True),
    "xpos_scale_base": dict(rotary_xpos=True),
    "rotary_theta": dict(rotary_pos_emb=True),
    "pos_interpolation_factor": dict(rotary_pos_emb=True),
}


@pytest.mark.parametrize("flag", list(TOGGLES))
def test_every_flag_changes_logits(flag):
    tokens = torch.randint(0, 64, (2, 24))
    off = ModelConfig(**PLAIN, **BASES.get(flag, {}))
    on = ModelConfig(**{**PLAIN, **BASES.get(flag, {}), **TOGGLES[flag]})
    a, state = _logits(off, tokens)
    b, _ = _logits(on, tokens, state)
    assert (a - b).abs().max().item() > 1e-4, f"{flag} had no effect on the logits"


def test_qk_norm_dim_scale_gains_take_effect():
    cfg = ModelConfig(**PLAIN, qk_norm=True, qk_norm_dim_scale=True)
    m = Andromeda(cfg).eval()
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        a = m(tokens)
        m.blocks[0].attn.q_norm.gain.mul_(torch.rand_like(m.blocks[0].attn.q_norm.gain) + 0.5)
        b = m(tokens)
    assert (a - b).abs().max().item() > 1e-4
    assert not hasattr(Andromeda(ModelConfig(**PLAIN, qk_norm=True)).blocks[0].attn.q_norm.gain, "shape")


def test_qk_norm_uses_its_logit_scale():
    cfg = ModelConfig(**PLAIN, qk_norm=True)
    assert cfg.attn_scale == 10.0 and ModelConfig(**PLAIN).attn_scale == pytest.approx(8**-0.5)
    tokens = torch.randint(0, 64, (1, 16))
    a, state = _logits(cfg, tokens)
    b, _ = _logits(cfg.replace(qk_norm_scale=3.0), tokens, state)
    assert (a - b).abs().max().item() > 1e-4


def test_mqa_equals_mha_with_repeated_kv_weights():
    """MQA is MHA whose heads all share one K/V projection: copy it into every head of an MHA model."""
    mqa_cfg = ModelConfig(**PLAIN, kv_heads=1, alibi_pos_bias=True, rotary_xpos=True)
    mqa = Andromeda(mqa_cfg).eval()
    mha = Andromeda(mqa_cfg.replace(kv_heads=None)).eval()
    state = mqa.state_dict()
    for i in range(mqa_cfg.depth):
        for w in ("to_k", "to_v"):
            key = f"blocks.{i}.attn.{w}.weight"
            state[key] = state[key].repeat(mqa_cfg.heads, 1)  # (H * D, dim)
    mha.load_state_dict(state)
    tokens = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        assert torch.allclose(mqa(tokens), mha(tokens), atol=1e-5)


FEATURES = ["alibi_pos_bias", "rotary_xpos", "shift_tokens", "kv_heads", "qk_norm", "deepnorm", "parallel_block"]
ON = dict(alibi_pos_bias=dict(alibi_pos_bias=True, alibi_num_heads=2), rotary_xpos=dict(rotary_xpos=True),
          shift_tokens=dict(shift_tokens=2), kv_heads=dict(kv_heads=1),
          qk_norm=dict(qk_norm=True, qk_norm_dim_scale=True),
          deepnorm=dict(deepnorm=True), parallel_block=dict(parallel_block=True))


def _combos():
    for bits in itertools.product([0, 1], repeat=len(FEATURES)):
        flags = [f for f, b in zip(FEATURES, bits, strict=True) if b]
        if "deepnorm" in flags and "parallel_block" in flags:
            continue
        yield flags


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_causality_for_every_feature_combination(backend, flex_calls):
    tokens = torch.randint(0, 64, (1, 12))
    t = 7
    changed = tokens.clone()
    changed[:, t:] = torch.randint(0, 64, (1, 12 - t))
    for flags in _combos():
        kw = {k: v for f in flags for k, v in ON[f].items()}
        m = Andromeda(ModelConfig(**PLAIN, **kw, attn_backend=backend)).eval()
        with torch.no_grad():
            a, b = m(tokens), m(changed)
        assert torch.allclose(a[:, :t], b[:, :t], atol=1e-5), f"future tokens leaked with {flags}"
        assert (a[:, t:] - b[:, t:]).abs().max() > 1e-4
    assert set(flex_calls) == ({12} if backend == "flex" else set())  # flex's own kernel ran (no grad, Nq == Nk)


# Cached generation against a float64 reference, every backend: test_reference_parity.py.


def test_generation_without_cache_gives_same_tokens():
    m = Andromeda(from_name("tiny")).eval()
    prompt = torch.randint(0, 320, (2, 5))
    assert torch.equal(m.generate(prompt, 10), m.generate(prompt, 10, use_cache=False))


def test_generation_stops_at_eos():
    m = Andromeda(from_name("tiny")).eval()
    prompt = torch.randint(0, 320, (1, 4))
    first = int(m.generate(prompt, 1)[0, -1])
    out = m.generate(prompt, 20, eos_token=first)
    assert out.shape[1] == 5 and int(out[0, -1]) == first


@pytest.mark.parametrize("tied", [False, True])
def test_checkpoint_round_trip_exact(tmp_path, tied):
    m = Andromeda(from_name("tiny", tie_embeddings=tied))
    save_checkpoint(m, tmp_path / "ck")
    m2 = load_checkpoint(tmp_path / "ck")
    assert m2.cfg == m.cfg
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    if tied:
        assert m2.head.weight.data_ptr() == m2.embed.token.weight.data_ptr()
    tokens = torch.randint(0, 320, (1, 10))
    assert torch.equal(m(tokens), m2(tokens))


def test_checkpoint_weights_only_torch_file(tmp_path):
    m = Andromeda(from_name("tiny"))
    d = tmp_path / "ck"
    save_checkpoint(m, d)
    (d / "model.safetensors").unlink()
    torch.save(m.state_dict(), d / "model.pt")
    assert torch.equal(load_checkpoint(d).head.weight, m.head.weight)


def test_spec_preset_on_meta_device():
    cfg = from_name("andromeda")
    assert (cfg.num_tokens, cfg.max_seq_len, cfg.dim, cfg.depth, cfg.dim_head, cfg.heads) == (
        50432, 8192, 2560, 32, 128, 24)
    assert cfg.n_alibi_heads == 12 and cfg.rotary_xpos and cfg.shift_tokens == 1 and cfg.n_kv_heads == 1
    assert cfg.qk_norm and cfg.qk_norm_dim_scale and not cfg.use_abs_pos_emb
    with torch.device("meta"):
        m = Andromeda(cfg)
    n = m.num_params()
    # written out: per layer q, k, v, out projections (no bias), GELU FFN with biases, two LayerNorms,
    # QK-norm gains (24 + 1 heads x 128); plus embeddings, final norm and untied head.
    inner, kv = 24 * 128, 1 * 128
    per_layer = 2560 * inner + 2 * 2560 * kv + inner * 2560 + (2560 * 10240 + 10240) + (10240 * 2560 + 2560)
    per_layer += 2 * 2 * 2560 + (24 + 1) * 128
    expected = 32 * per_layer + 2 * 50432 * 2560 + 2 * 2560
    assert n == expected
    assert 2.4e9 <= n <= 2.5e9


def test_loss_matches_direct_cross_entropy():
    m = Andromeda(from_name("tiny")).eval()
    tokens = torch.randint(0, 320, (2, 16))
    labels = tokens.clone()
    labels[0, 5:9] = -100
    with torch.no_grad():
        logits = m(tokens).double()
        logp = logits.log_softmax(-1)[:, :-1]  # position t predicts t + 1
        tgt = labels[:, 1:]
        keep = tgt != -100
        ref = -(logp.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)[keep]).mean()
        assert float(m.loss(tokens, labels)) == pytest.approx(float(ref), rel=1e-5)
        assert float(lm_loss(m(tokens), tokens)) == pytest.approx(
            float(F.cross_entropy(logits[:, :-1].reshape(-1, 320), tokens[:, 1:].reshape(-1))), rel=1e-5)


class ScaledEmbedding(EmbeddingProvider):
    """A user's provider: its own table (filled by the user), scaled by 2, positions ignored."""

    def __init__(self, cfg, fill=None):
        super().__init__()
        self.table = torch.nn.Embedding(cfg.num_tokens, cfg.dim)
        if fill is not None:
            with torch.no_grad():
                self.table.weight.fill_(fill)
        self.calls = 0

    def forward(self, tokens, positions):
        self.calls += 1
        return self.table(tokens) * 2.0


def test_custom_embedding_provider_is_used_and_keeps_its_weights():
    cfg = from_name("tiny")
    emb = ScaledEmbedding(cfg)
    with torch.no_grad():
        emb.table.weight.copy_(torch.arange(cfg.num_tokens, dtype=torch.float32)[:, None] / 100 + torch.ones(cfg.dim))
    given = emb.table.weight.detach().clone()
    m = Andromeda(cfg, embedding=emb).eval()
    assert m.embed is emb
    assert torch.equal(emb.table.weight, given), "the model re-initialized the user's provider"
    filled = ScaledEmbedding(cfg, fill=1.0)
    Andromeda(cfg, embedding=filled)
    assert torch.all(filled.table.weight == 1.0)
    tokens = torch.randint(0, 320, (1, 8))
    with torch.no_grad():
        out = m(tokens)
    assert emb.calls == 1
    # the blocks saw the provider's vectors: the same model fed 2 * table through the default embedding agrees
    plain = Andromeda(cfg).eval()
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("embed.")}
    plain.load_state_dict({**state, "embed.token.weight": 2.0 * given})
    with torch.no_grad():
        assert torch.equal(plain(tokens), out)
    with pytest.raises(ConfigError, match="tie_embeddings"):
        Andromeda(from_name("tiny", tie_embeddings=True), embedding=ScaledEmbedding(cfg))
    with pytest.raises(ConfigError, match="nn.Module"):
        Andromeda(cfg, embedding=lambda tokens, positions: tokens)


def test_absolute_positions_with_a_custom_provider_are_refused():
    """The position table is part of the default embedding: with a provider in its place it would silently be
    absent, so the config's use_abs_pos_emb would do nothing."""
    cfg = from_name("tiny", use_abs_pos_emb=True)
    with pytest.raises(ConfigError, match=r"model\.use_abs_pos_emb: .*use_abs_pos_emb: false") as e:
        Andromeda(cfg, embedding=ScaledEmbedding(cfg))
    assert "\n" not in str(e.value)


def test_checkpoint_with_custom_embedding_provider_round_trips(tmp_path):
    cfg = from_name("tiny")
    m = Andromeda(cfg, embedding=ScaledEmbedding(cfg, fill=0.5)).eval()
    with torch.no_grad():
        m.embed.table.weight.add_(torch.randn_like(m.embed.table.weight))
    save_checkpoint(m, tmp_path / "ck")
    with pytest.raises(AndromedaError, match=r"ScaledEmbedding.*embedding=ScaledEmbedding\(") as e:
        load_checkpoint(tmp_path / "ck")  # the provider is the user's code: it must be given
    assert "\n" not in str(e.value)
    m2 = load_checkpoint(tmp_path / "ck", embedding=ScaledEmbedding(cfg))
    assert isinstance(m2.embed, ScaledEmbedding)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    tokens = torch.randint(0, 320, (1, 10))
    with torch.no_grad():
        assert torch.equal(m(tokens), m2.eval()(tokens))
    # a default-embedding checkpoint does not fit a provider with other weights: one line, not a key dump
    save_checkpoint(Andromeda(cfg), tmp_path / "plain")
    assert not (tmp_path / "plain" / "embedding.json").exists()

    class Other(EmbeddingProvider):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(1, cfg.dim)

    with pytest.raises(AndromedaError, match="do not fit the model.*default token embedding") as e:
        load_checkpoint(tmp_path / "plain", embedding=Other())
    assert "\n" not in str(e.value)


BAD = [
    (dict(kv_heads=3), "kv_heads"),
    (dict(kv_heads=0), "kv_heads"),
    (dict(causal=False), "rotary_xpos"),
    (dict(alibi_num_heads=9), "alibi_num_heads"),
    (dict(deepnorm=True, parallel_block=True), "deepnorm"),
    (dict(qk_norm=False), "qk_norm_dim_scale"),
    (dict(dim=-4), "dim"),
    (dict(depth="12"), "depth"),
    (dict(rotary_xpos=1), "rotary_xpos"),
    (dict(norm="batchnorm"), "norm"),
    (dict(dropout=1.5), "dropout"),
    (dict(pos_interpolation_factor=0.5), "pos_interpolation_factor"),
    (dict(rotary_dim=15), "rotary_dim"),
    (dict(shift_tokens=-1), "shift_tokens"),
    (dict(attn_backend="fast"), "attn_backend"),
    # refinements set without the feature they refine would change nothing: refused, with the fix
    (dict(rotary_xpos=False, xpos_scale_base=64), "xpos_scale_base"),
    (dict(qk_norm=False, qk_norm_dim_scale=False, qk_norm_scale=3.0), "qk_norm_scale"),
    (dict(rotary_xpos=False, rotary_theta=500.0), "rotary_theta"),
    (dict(ff_inner_dim=100, ff_mult=2.0), "ff_mult"),
]


@pytest.mark.parametrize("override,field", BAD)
def test_bad_configs_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        from_name("tiny", **override)
    assert f"model.{field}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override,fix", [
    (dict(rotary_xpos=False, xpos_scale_base=64), "rotary_xpos: true"),
    (dict(qk_norm=False, qk_norm_dim_scale=False, qk_norm_scale=3.0), "qk_norm: true"),
    (dict(rotary_xpos=False, rotary_theta=500.0), "rotary_pos_emb or rotary_xpos: true"),
    (dict(ff_inner_dim=100, ff_mult=2.0), "one of ff_mult and ff_inner_dim"),
])
def test_settings_that_would_do_nothing_are_refused_with_the_fix(override, fix):
    with pytest.raises(ConfigError, match="has no effect") as e:
        from_name("tiny", **override)
    assert fix in str(e.value)
    # at their defaults, or with the feature they refine, the same settings are accepted
    from_name("tiny", **{k: v for k, v in override.items() if k not in ("xpos_scale_base", "qk_norm_scale",
                                                                      "rotary_theta", "ff_mult")})
    feature = {"xpos_scale_base": dict(rotary_xpos=True), "qk_norm_scale": dict(qk_norm=True),
               "rotary_theta": dict(rotary_pos_emb=True), "ff_mult": dict(ff_inner_dim=None)}
    for key in feature:
        if key in override:
            from_name("tiny", **{**override, **feature[key]})


def test_every_preset_validates():
    from andromeda.model import PRESETS

    for name in PRESETS:
        assert from_name(name).to_dict() == {**ModelConfig().to_dict(), **PRESETS[name]}


def test_unknown_keys_and_presets():
    with pytest.raises(ConfigError, match=r"model\.heds: unknown config field \(did you mean 'heads'\?\)"):
        ModelConfig.from_dict({"heds": 4})
    with pytest.raises(ConfigError, match="available: tiny"):
        from_name("huge")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "Andromeda — ἀνδρομέδα, 仙女座 🌌 x=1+2"
    ids = tok.encode(text, add_bos=True)
    assert ids[0] == tok.bos_id and ids[1:] == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_tiny_with_all_spec_features_overfits_one_batch():
    cfg = from_name("tiny")  # every spec feature on
    assert cfg.n_alibi_heads and cfg.rotary_xpos and cfg.shift_tokens and cfg.kv_heads == 1 and cfg.qk_norm_dim_scale
    torch.manual_seed(0)
    m = Andromeda(cfg)
    batch = torch.randint(0, cfg.num_tokens, (4, 32))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(300):  # ~20 steps suffice; a step budget, not a wall-clock one, holds on a loaded machine
        loss = m.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after 300 steps"


def test_xpos_past_one_anchor_block_is_finite_with_and_without_a_cache():
    # scale base 8: scores of (query 0, key p) carry 3.5^(p/8), past 8 * ln(1e30)/ln(3.5) = 441 positions near
    # inf under one fixed reference. XPos anchors blocks of 384 positions (positional.XPos): 641 tokens span two,
    # finite in every backend, and a prefill through the cache gives the forward's logits (their values
    # against float64: tests/model/test_long_positions.py).
    cfg = from_name("tiny", xpos_scale_base=8, max_seq_len=1024)
    m = Andromeda(cfg).eval()
    assert xpos_period(8) == 384 and 441 < 641 < 2 * 384
    tokens = torch.randint(0, 256, (1, 641))
    with torch.no_grad():
        want = m(tokens)
        for backend in ("eager", "sdpa", "flex"):
            mb = Andromeda(cfg.replace(attn_backend=backend)).eval()
            mb.load_state_dict(m.state_dict())
            out = mb(tokens)
            assert torch.isfinite(out).all(), backend
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
            cached = mb(tokens, cache=mb.new_cache(1, tokens.shape[1]))
            torch.testing.assert_close(cached, want, rtol=1e-4, atol=1e-4)


def test_absolute_positions_past_max_seq_len_are_refused():
    m = Andromeda(from_name("tiny", use_abs_pos_emb=True, max_seq_len=32)).eval()
    with torch.no_grad():
        m(torch.randint(0, 256, (1, 32)))
        with pytest.raises(ConfigError, match="max_seq_len 32"):
            m(torch.randint(0, 256, (1, 33)))
