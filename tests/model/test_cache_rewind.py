"""KVCache.rewind: a prefix kept, the tail re-run, gives the logits of the whole sequence's forward."""

import pytest
import torch

from andromeda.errors import ConfigError
from andromeda.model import Andromeda, from_name
from andromeda.model.cache import KVCache


def test_rewound_cache_reruns_the_tail_as_the_full_forward():
    torch.manual_seed(0)
    cfg = from_name("tiny", shift_tokens=0)
    model = Andromeda(cfg).double().eval()
    tokens = torch.randint(0, cfg.num_tokens, (2, 40))
    other = tokens.clone()
    other[:, 25:] = torch.randint(0, cfg.num_tokens, (2, 15))  # a different tail over the rewound positions
    with torch.no_grad():
        full = model(other, logits="all")
        cache = model.new_cache(2, 40)
        model(tokens, cache=cache, logits="none")
        cache.rewind(25)
        assert cache.position == 25
        tail = model(other[:, 25:], cache=cache, logits="all")
    torch.testing.assert_close(tail, full[:, 25:], rtol=1e-9, atol=1e-9)


def test_rewind_refuses_lengths_it_does_not_hold():
    cfg = from_name("tiny")
    cache = KVCache(cfg, 1, 16)
    cache.advance(8)
    for bad in (-1, 9):
        with pytest.raises(ConfigError, match="cache.rewind"):
            cache.rewind(bad)
