"""bf16-master precision: the model's parameters are bfloat16 (forward and backward run in bf16, with no
per-step casts of the weights), and the optimizer updates float32 master copies, which are copied back to the
bf16 parameters after each step.

Why this and not FSDP2's MixedPrecisionPolicy on one GPU: it needs no process group, keeps the optimizer a
plain torch (or bitsandbytes) optimizer over ordinary tensors, runs the same on CPU (so it is tested here),
and costs per step one cast of the gradients to float32 and one copy of the weights back to bf16: two passes
over the parameters (about 12 bytes each) against AdamW's own (about 28). FSDP2 on one GPU would still cast the
float32 weights to bf16 at every forward (what autocast does) and adds its hooks around every block.

Gradients: each micro-batch's bf16 gradients are added into the masters' float32 gradients and freed at once
(accumulation in float32, one bf16 gradient set alive at a time). Clipping, the gradient norms and the
optimizer see the float32 gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MasterWeights:
    """Float32 master copies of `params`, which are cast to `dtype` in place (a parameter keeps its identity, so
    tied weights stay tied and modules see the same objects)."""

    def __init__(self, params: Sequence[nn.Parameter], dtype: torch.dtype = torch.bfloat16):
        self.params = list(params)
        self.dtype = dtype
        self.masters = []
        with torch.no_grad():
            for p in self.params:
                # a float32 parameter's own storage becomes its master (no copy); the parameter gets a bf16 one
                master = p.detach() if p.dtype == torch.float32 else p.detach().to(torch.float32)
                p.data = master.to(dtype)
                self.masters.append(master.requires_grad_(True))

    def accumulate_grads(self) -> None:
        """Add the parameters' gradients (from one backward) into the masters' float32 gradients; free them."""
        for p, m in zip(self.params, self.masters, strict=True):
            g = p.grad
            if g is None:
                continue
            if m.grad is None:
                m.grad = g.to(torch.float32)
            else:
                m.grad.add_(g)
            p.grad = None

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """The masters (after an optimizer step) rounded into the model's parameters."""
        torch._foreach_copy_(self.params, self.masters)

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach() for m in self.masters]

    @torch.no_grad()
    def load_state_dict(self, masters: Sequence[torch.Tensor]) -> None:
        if len(masters) != len(self.masters):
            raise ValueError(f"master weights: the checkpoint has {len(masters)} tensors, the model "
                             f"{len(self.masters)}")
        for m, saved in zip(self.masters, masters, strict=True):
            m.copy_(saved)
        self.copy_to_params()


__all__ = ["MasterWeights"]
