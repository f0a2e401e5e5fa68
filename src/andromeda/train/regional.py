"""Per-block speed options of the training step: regional torch.compile of each transformer block and activation
checkpointing of each block, full (the block's forward runs again in backward) or selective (a policy saves the
matmul and attention-kernel outputs and recomputes the rest: norms, activations, rotary, token shift).

Blocks are Andromeda's `model.blocks` or a transformers model's `base_model.layers`. Each block gets an instance
`forward` that wraps the class's (the state dict is unchanged; undo() removes it). One compiled function serves
every block (the block is its argument: its parameters are graph inputs), so a model compiles once per shape,
not once per layer. Andromeda's block takes its layer index for the KV cache; a training call (no cache) leaves
it out, so it does not specialize the graph. Calls with a cache or without gradients (generation, validation)
run the block eagerly.

fullgraph: a block whose attention kernel dynamo traces compiles as one graph: eager and sdpa (aten ops) and our
Triton kernel (the custom op andromeda::flash_attention_fwd, model/backends/triton_op.py: one node of the graph). A
block whose full-graph trace fails anyway falls back to graph breaks, once, and says so (BlockWrappers.info).

Composition: full checkpointing wraps the compiled block (its recompute runs the compiled forward); selective
checkpointing is inside the compiled region, where the partitioner applies the policy (outside it the policy
could not see the compiled ops).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from andromeda.errors import UnsupportedError
from andromeda.model.backends import triton_op  # noqa: F401  (registers torch.ops.andromeda.flash_attention_fwd)

aten = torch.ops.aten
# outputs selective checkpointing keeps: the matmuls, torch's attention kernels and ours (the custom op's out and
# log-sum-exp); recomputing them would cost FLOPs. Everything else is recomputed from them, so selective
# checkpointing recomputes no matmul or attention FLOPs (train/loop.py's hardware FLOPs: ATTENTION_SAVED_BY_POLICY).
SAVED_OPS = frozenset(op for op in (  # overload packets: every overload of each
    aten.mm, aten.addmm, aten.bmm, aten.baddbmm,
    getattr(aten, "_scaled_dot_product_flash_attention", None),
    getattr(aten, "_scaled_dot_product_efficient_attention", None),
    getattr(aten, "_scaled_dot_product_cudnn_attention", None),
    getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None),
    torch.ops.andromeda.flash_attention_fwd,
) if op is not None)
# attention implementations whose work is ops in SAVED_OPS (so selective checkpointing keeps it)
ATTENTION_SAVED_BY_POLICY = ("eager", "sdpa", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "triton")
# attention backends dynamo traces (aten ops, or one custom op), so a block with them can be one graph
TRACEABLE_ATTENTION = ("eager", "sdpa", "triton")


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    keep = getattr(op, "overloadpacket", op) in SAVED_OPS
    return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE


def selective_context():
    """The (forward, recompute) contexts of selective checkpointing (torch's selective activation checkpoint)."""
    return create_selective_checkpoint_contexts(_policy)


def model_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(qualified name, the ModuleList of transformer blocks): Andromeda's `blocks`, a transformers model's
    `base_model.layers`; looks through DistributedDataParallel. None when there is none."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    found = getattr(inner, "blocks", None)
    if not isinstance(found, nn.ModuleList):
        base = getattr(inner, "base_model", None)
        found = getattr(base, "layers", None) if isinstance(base, nn.Module) else None
    if not isinstance(found, nn.ModuleList) or not len(found):
        return None
    name = next(n for n, m in model.named_modules() if m is found)
    return name, found


def _andromeda_block(blk: nn.Module) -> bool:
    from andromeda.model.layers import Block

    return isinstance(blk, Block)


def _call(blk: nn.Module, *args, **kwargs):
    """The block's own (class) forward."""
    return type(blk).forward(blk, *args, **kwargs)


def _call_selective(blk: nn.Module, *args, **kwargs):
    return checkpoint(_call, blk, *args, use_reentrant=False, context_fn=selective_context, **kwargs)


_SELECTIVE_NEEDS_ONE_GRAPH = (
    "checkpointing: selective with compile: blocks needs each block traced as one graph (the policy is applied "
    "inside it), but this model's attention kernel is opaque to torch.compile (outside one graph the policy's "
    "dispatch mode would turn compilation off and the blocks would run eagerly). Use checkpointing: full, "
    "compile: none, or an attention backend dynamo traces (" + ", ".join(TRACEABLE_ATTENTION) + ")")
_COMPILED: dict = {}


def _compiled(selective: bool, fullgraph: bool, backend) -> Callable:
    """One torch.compile wrapper per (selective, fullgraph, backend) for the process: every model and Trainer with
    those settings shares its compiled graphs (a new wrapper would fail dynamo's backend guard and recompile)."""
    key = (selective, fullgraph, backend)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_call_selective if selective else _call, fullgraph=fullgraph, dynamic=False,
                                       backend=backend)
    return _COMPILED[key]


class BlockWrappers:
    """Regional compile and per-block checkpointing on `model`'s blocks; undo() restores them.

    compile: torch.compile each block's forward (dynamic=False: one static graph per shape); backend: the
    torch.compile backend (tests use a cheap one). checkpointing: "none" | "full" | "selective".
    fullgraph: None = decided per the attention kernel (see the module docstring).
    """

    def __init__(self, model: nn.Module, *, compile: bool, checkpointing: str, fullgraph: bool | None = None,
                 backend: str | Callable = "inductor"):
        found = model_blocks(model)
        if found is None:
            if not compile and checkpointing == "full" and hasattr(model, "gradient_checkpointing_enable"):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                self._undo_hf = model.gradient_checkpointing_disable
                self.blocks, self.info = [], {"checkpointing": "full (gradient_checkpointing_enable)"}
                return
            raise UnsupportedError(f"compile / checkpointing: {type(model).__name__} has no `blocks` list (nor "
                                   "base_model.layers) to wrap")
        self._undo_hf = None
        self.name, self.blocks = found
        self.compile, self.checkpointing, self.backend = compile, checkpointing, backend
        self.fullgraph = _traceable_attention(model) if fullgraph is None else fullgraph
        self.info: dict = {"compile": "blocks" if compile else "none", "checkpointing": checkpointing,
                           "blocks": f"{self.name} ({len(self.blocks)})"}
        if compile:
            self.info["fullgraph"] = self.fullgraph
            if checkpointing == "selective" and not self.fullgraph:
                raise UnsupportedError(_SELECTIVE_NEEDS_ONE_GRAPH)
        self._compiled = self._make_compiled() if compile else None
        for blk in self.blocks:
            blk.forward = functools.partial(self._forward, blk)

    def _make_compiled(self) -> Callable:
        return _compiled(self.checkpointing == "selective", self.fullgraph, self.backend)

    def _run_compiled(self, blk, *args, **kwargs):
        try:
            return self._compiled(blk, *args, **kwargs)
        except torch._dynamo.exc.Unsupported as e:  # raised while tracing, before anything ran
            if not self.fullgraph:
                raise
            if self.checkpointing == "selective":
                raise UnsupportedError(_SELECTIVE_NEEDS_ONE_GRAPH + f" ({str(e).splitlines()[0][:200]})") from None
            self.fullgraph = False
            self.info.update(fullgraph=False, fullgraph_failed=str(e).splitlines()[0][:300])
            self._compiled = self._make_compiled()
            return self._compiled(blk, *args, **kwargs)

    def _forward(self, blk: nn.Module, *args, **kwargs):
        andromeda = _andromeda_block(blk)
        if andromeda:
            cache = args[3] if len(args) > 3 else kwargs.get("cache")
            if cache is not None or not torch.is_grad_enabled():
                return _call(blk, *args, **kwargs)
            args, kwargs = args[:3], {k: v for k, v in kwargs.items() if k not in ("cache", "layer")}
            if self._compiled is not None:
                _resolve_backend(blk, args[0])
        elif not torch.is_grad_enabled() or kwargs.get("use_cache"):
            return _call(blk, *args, **kwargs)
        if self._compiled is not None:
            if self.checkpointing == "full":
                return checkpoint(self._run_compiled, blk, *args, use_reentrant=False, **kwargs)
            return self._run_compiled(blk, *args, **kwargs)
        if self.checkpointing == "full":
            return checkpoint(_call, blk, *args, use_reentrant=False, **kwargs)
        if self.checkpointing == "selective":
            return _call_selective(blk, *args, **kwargs)
        return _call(blk, *args, **kwargs)

    def undo(self) -> None:
        if self._undo_hf is not None:
            self._undo_hf()
        for blk in self.blocks:
            blk.__dict__.pop("forward", None)


def _resolve_backend(blk: nn.Module, x: torch.Tensor) -> None:
    """Pick the block's attention kernel before a compiled call: Attention.backend() caches its choice in a dict on
    first use, a side effect dynamo refuses inside a checkpointed (higher-order) region."""
    blk.attn.backend(x.device, blk.attn.math_dtype(x))


def _traceable_attention(model: nn.Module) -> bool:
    """Whether dynamo traces the model's attention kernel (TRACEABLE_ATTENTION), so a block can be one graph."""
    from andromeda.measure.recompute import model_attention_impl

    p = next(iter(model.parameters()), None)
    if p is None:
        return False
    impl = model_attention_impl(model, p.device, p.dtype if p.dtype != torch.float32 else torch.bfloat16)
    return impl in TRACEABLE_ATTENTION


def enable_activation_checkpointing(model: nn.Module) -> Callable[[], None]:
    """Recompute each block's activations in backward (torch.utils.checkpoint, non-reentrant).

    Andromeda: every module of `model.blocks` gets a checkpointed forward (the state dict is unchanged).
    Hugging Face models: their decoder layers the same way, else gradient_checkpointing_enable(). Returns a
    function that undoes it.
    """
    return BlockWrappers(model, compile=False, checkpointing="full").undo


def recompute_stops_early(model: nn.Module) -> bool:
    """Whether the checkpointed blocks' recompute skips their FFN output projection (flops.recomputed_forward_flops):
    torch's early stop is on and the block ends in `x + W_out(h)`: an Andromeda block without DeepNorm or
    dropout, a transformers Llama decoder layer. Other models are charged the whole block forward."""
    from torch.utils import checkpoint as ckpt

    if getattr(ckpt, "_enable_checkpoint_early_stop", None) is False:  # None (the default) or True: on
        return False
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "deepnorm"):
        return not cfg.deepnorm and cfg.dropout == 0
    return getattr(getattr(model, "config", None), "model_type", None) == "llama"


__all__ = ["BlockWrappers", "model_blocks", "selective_context", "SAVED_OPS", "ATTENTION_SAVED_BY_POLICY",
           "TRACEABLE_ATTENTION", "enable_activation_checkpointing", "recompute_stops_early"]
