"""Model sources: Andromeda checkpoints as sources, and Andromeda fields shaping hf:matched."""

import pytest
import torch

from andromeda.errors import ConfigError
from andromeda.model import Andromeda, from_name, save_checkpoint
from andromeda.sources.models import andromeda_config, build, validate_source


def test_checkpoint_directory_is_a_source_with_overrides(tmp_path):
    torch.manual_seed(3)
    trained = Andromeda(from_name("tiny"))
    save_checkpoint(trained, tmp_path / "ckpt")
    src = f"andromeda:{tmp_path / 'ckpt'}?max_seq_len=512&pos_interpolation_factor=2"
    validate_source(src)
    cfg = andromeda_config(src)
    assert cfg.max_seq_len == 512 and cfg.pos_interpolation_factor == 2 and cfg.dim == trained.cfg.dim
    bundle = build(src, torch.device("cpu"), torch.float32)
    got = bundle.model.state_dict()
    for k, v in trained.state_dict().items():
        assert torch.equal(got[k], v), k
    assert bundle.facts.max_seq_len == 512
    with pytest.raises(ConfigError):
        validate_source(f"andromeda:{tmp_path / 'missing'}")


def test_hf_matched_takes_andromeda_fields_and_llama_keys():
    pytest.importorskip("transformers")
    src = "hf:matched:tiny?max_seq_len=1024&rope_theta=5000"
    validate_source(src)
    assert andromeda_config(src).max_seq_len == 1024
    bundle = build(src, torch.device("cpu"), torch.float32)
    c = bundle.model.config
    assert c.max_position_embeddings == 1024
    assert (getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]) == 5000
    assert c.hidden_size == from_name("tiny").dim


def test_hf_matched_builds_heads_times_head_dim_unequal_to_dim():
    """The spec default's attention is 24 heads x 128 = 3072 wide over dim 2560; transformers' config
    check refuses that shape, the Llama modules do not."""
    pytest.importorskip("transformers")
    bundle = build("hf:matched:tiny?dim=48&heads=5&dim_head=16&kv_heads=1", torch.device("cpu"), torch.float32)
    attn = bundle.model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (5 * 16, 48) and attn.k_proj.weight.shape == (16, 48)
    assert attn.o_proj.weight.shape == (48, 5 * 16)
    assert bundle.model.config.num_attention_heads == 5 and bundle.model.config.num_key_value_heads == 1
    assert bundle.logits(torch.zeros(1, 8, dtype=torch.long)).shape[:2] == (1, 8)
