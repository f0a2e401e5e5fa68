"""Parameter counts per component and layer sum to the model's total; component counts match the
shapes of the config."""

import pytest
import torch

from andromeda.diagnostics import Diagnostics
from andromeda.model import Andromeda, from_name

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "use_abs_pos_emb": True, "ff_glu": True},
                                       {"parallel_block": True, "attn_bias": True}])
def test_component_counts_sum_to_num_params(overrides):
    model = Andromeda(from_name("tiny", **overrides))
    pc = Diagnostics(model).parameter_counts()
    assert pc.total == model.num_params() == sum(pc.by_component.values()) == sum(pc.by_layer.values())
    assert pc.trainable == pc.total
    cfg = model.cfg
    d, h, hkv, hd, L = cfg.dim, cfg.heads, cfg.n_kv_heads, cfg.dim_head, cfg.depth
    bias = cfg.attn_bias
    assert pc.by_component["attn.q"] == L * (d * h * hd + (h * hd if bias else 0))
    assert pc.by_component["attn.k"] == pc.by_component["attn.v"] == L * (d * hkv * hd + (hkv * hd if bias else 0))
    assert pc.by_component["attn.out"] == L * (h * hd * d + (d if bias else 0))
    assert pc.by_component["ff.out"] == L * (cfg.ff_hidden * d + d)
    assert pc.by_component.get("ff.gate", 0) == (L * (d * cfg.ff_hidden + cfg.ff_hidden) if cfg.ff_glu else 0)
    emb = cfg.num_tokens * d + (cfg.max_seq_len * d if cfg.use_abs_pos_emb else 0)
    assert pc.by_component["embedding"] == emb
    assert pc.by_component.get("head", 0) == (0 if cfg.tie_embeddings else cfg.num_tokens * d)
    assert bool(pc.tied) == cfg.tie_embeddings


def test_frozen_parameters_are_not_trainable():
    model = Andromeda(from_name("tiny"))
    model.embed.requires_grad_(False)
    pc = Diagnostics(model).parameter_counts()
    assert pc.trainable == pc.total - pc.by_component["embedding"]


def test_hf_llama_counts():
    pytest.importorskip("transformers")
    from andromeda.sources.models import build

    b = build("hf:llama?hidden_size=64&num_hidden_layers=2&num_attention_heads=4&num_key_value_heads=1"
              "&intermediate_size=128&vocab_size=300", torch.device("cpu"), torch.float32)
    pc = Diagnostics(b.model).parameter_counts()
    assert pc.total == b.facts.params == sum(pc.by_component.values())
    c = pc.by_component
    assert c["attn.q"] == 2 * 64 * 64 and c["attn.k"] == c["attn.v"] == 2 * 64 * 16 and c["attn.out"] == 2 * 64 * 64
    assert c["ff.gate"] == c["ff.in"] == c["ff.out"] == 2 * 64 * 128
    assert c["embedding"] == c["head"] == 300 * 64
    assert c["norm"] == 2 * 2 * 64 + 64
