"""A cached decode step's work does not grow with the tokens generated, beyond attention over the cache.

Counted, not timed: every aten operation a Decoder.step runs is recorded (TorchDispatchMode) with the shapes
of its tensors and whether it ran inside an attention module. Steps at three positions are compared: they
run the same operations; outside attention every shape is the same; inside attention the only dimensions
that change are the cache length (n, or n - 1 before the new key is written), and the elements touched grow
by exactly the same amount per cached token (affine in n, never quadratic).
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from andromeda.scenarios.decoding import Decoder
from andromeda.sources.models import build

CPU = torch.device("cpu")
PROMPT, MAX_LEN = 8, 64
AT = (4, 16, 40)  # decode steps recorded: the step after `k` earlier steps caches PROMPT + k + 1 positions
HF_LLAMA = ("hf:llama?hidden_size=64&num_hidden_layers=2&num_attention_heads=4&num_key_value_heads=1"
            "&intermediate_size=128&vocab_size=300")


class OpLog(TorchDispatchMode):
    def __init__(self, inside: list[int]):
        super().__init__()
        self.ops: list[tuple[str, tuple[tuple[int, ...], ...], bool]] = []
        self.inside = inside
        self.views: set[str] = set()  # operations that return a view and do no work

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = tuple(tuple(t.shape) for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor))
        self.ops.append((str(func), shapes, self.inside[0] > 0))
        if func.is_view:
            self.views.add(str(func))
        return out


def _record_steps(bundle) -> dict[int, list]:
    inside = [0]  # attention modules entered and not yet left
    for m in bundle.model.modules():
        if type(m).__name__.endswith("Attention"):
            m.register_forward_pre_hook(lambda *a: inside.__setitem__(0, inside[0] + 1))
            m.register_forward_hook(lambda *a: inside.__setitem__(0, inside[0] - 1))
    dec = Decoder(bundle, 1, MAX_LEN, use_cache=True)
    nxt = dec.prefill(torch.randint(0, 256, (1, PROMPT), generator=torch.Generator().manual_seed(0)))
    nxt = nxt.argmax(-1, keepdim=True)
    logs = {}
    for k in range(max(AT) + 1):
        log = OpLog(inside)
        with log:
            logits = dec.step(nxt)
        if k in AT:
            logs[PROMPT + k + 1] = log.ops
        nxt = logits.argmax(-1, keepdim=True)
    return logs


def _elements(shapes) -> int:
    return sum(torch.Size(s).numel() for s in shapes)


@pytest.mark.parametrize("source", ["andromeda:tiny", HF_LLAMA])
def test_a_cached_step_grows_only_by_attention_over_the_cache(source):
    if source.startswith("hf:"):
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    logs = _record_steps(build(source, CPU, torch.float32))
    (n1, a), (n2, b), (n3, c) = sorted(logs.items())
    assert [op for op, _, _ in a] == [op for op, _, _ in b] == [op for op, _, _ in c]  # the same operations
    growing = 0
    for (op, s1, inside), (_, s2, _), (_, s3, _) in zip(a, b, c, strict=True):
        if s1 == s2 == s3:
            continue
        growing += 1
        assert inside, f"{op} outside attention changes shape with the position: {s1} -> {s2}"
        for t1, t2, t3 in zip(s1, s2, s3, strict=True):
            for d1, d2, d3 in zip(t1, t2, t3, strict=True):  # a dimension that changes is the cache length
                assert d1 == d2 == d3 or (n1 - d1 == n2 - d2 == n3 - d3 and n1 - d1 in (0, 1)), (op, s1, s2)
    assert growing > 0  # attention does read the cache
    e1, e2, e3 = (sum(_elements(s) for _, s, inside in log if inside) for log in (a, b, c))
    assert (e2 - e1) * (n3 - n2) == (e3 - e2) * (n2 - n1)  # the same elements per cached token: linear in n
    out1, out3 = (sum(_elements(s) for _, s, inside in log if not inside) for log in (a, c))
    assert out1 == out3  # everything else: the same work at every position


def test_without_the_cache_a_step_feeds_the_whole_prefix_without_copying_it():
    """use_cache false recomputes the prefix (what the cache saves); the decoder writes the new token into a
    buffer in place: outside the model, a step's operations (views aside) and shapes are the same at every
    position."""
    torch.manual_seed(0)
    bundle = build("andromeda:tiny", CPU, torch.float32)
    fed, inside = [], [0]

    def enter(module, args):
        fed.append(tuple(args[0].shape))
        inside[0] = 1

    bundle.model.register_forward_pre_hook(enter)
    bundle.model.register_forward_hook(lambda *a: inside.__setitem__(0, 0))
    dec = Decoder(bundle, 2, 16, use_cache=False)
    dec.prefill(torch.randint(0, 256, (2, 5)))
    outside = []
    for _ in range(3):
        log = OpLog(inside)
        with log:
            dec.step(torch.zeros(2, 1, dtype=torch.long))
        # views (slicing the buffer to the tokens so far, the last row of logits) copy nothing: left out
        outside.append([(op, shapes) for op, shapes, in_model in log.ops if not in_model and op not in log.views])
    assert fed == [(2, 5), (2, 6), (2, 7), (2, 8)]
    assert outside[0] == outside[1] == outside[2] and outside[0]
