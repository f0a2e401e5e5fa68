"""Sampling filters against their definitions; tokenizers round-trip."""

import numpy as np
import pytest
import torch
from scipy import stats

from andromeda.model.sampling import filter_logits, sample_next


def test_greedy_is_argmax():
    logits = torch.randn(5, 50)
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(3, 40)
    out = filter_logits(logits, top_k=7)
    for row, orig in zip(out, logits, strict=True):
        kept = torch.isfinite(row).nonzero().flatten().tolist()
        assert sorted(kept) == sorted(torch.topk(orig, 7).indices.tolist())
        assert torch.equal(row[kept], orig[kept])


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()
    for p, n_keep in [(0.5, 1), (0.55, 2), (0.7, 2), (0.71, 3), (0.9, 4), (0.99, 5)]:
        kept = torch.isfinite(filter_logits(logits, top_p=p)).sum().item()
        assert kept == n_keep, (p, kept)


def test_temperature_sampling_follows_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    t = 0.7
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, temperature=t, generator=g) for _ in range(4000)]).flatten()
    counts = np.bincount(draws.numpy(), minlength=4)
    p = (logits[0].double() / t).softmax(-1).numpy()
    expected = p / p.sum() * len(draws)
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_hf_tokenizer_adapter_from_local_dir(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from andromeda.model import HFTokenizer

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "andromeda": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]").save_pretrained(
        tmp_path)
    hf = HFTokenizer(tmp_path)
    assert hf.encode("hello andromeda world", add_bos=True) == [1, 3, 5, 4]
    assert hf.decode([3, 5]) == "hello andromeda"
    assert hf.vocab_size == 6 and hf.eos_id == 2
