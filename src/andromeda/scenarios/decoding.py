"""Token-by-token decoding driven uniformly over model kinds, for the generation scenario.

prefill(prompt) and step(token) return the next-token logits (B, V). With use_cache the model
keeps keys and values (Andromeda's static KV cache, HF's past_key_values) and a step feeds the model
the new token alone: the decoder keeps no token history, so a step's work beyond the model's own is
the same at every position (an Andromeda step grows only by attention over the cache; HF's default
DynamicCache also appends each new key and value to its tensors, which transformers does in
torch.cat). Without the cache, every step recomputes the whole prefix, which is what the cache
saves; the prefix is written into a buffer of max_len tokens in place, never concatenated.
"""

from __future__ import annotations

import inspect

import torch

from andromeda.errors import UnsupportedError

CACHE_KINDS = ("full", "int8", "int4")  # the KV cache a Decoder keeps: model dtype, or quantized per group


class Decoder:
    """cache: "full" (the model's dtype) or a quantized Andromeda cache, "int8" / "int4", with a scale per
    `group_size` features and the last `window` positions kept in full precision.

    cuda_graph: Andromeda steps replay one captured CUDA graph of the static decode step
    (andromeda.model.decode.GraphedDecoder; eager on a CPU model), whose kernels `kernels` picks ("auto",
    "torch", "triton"). It is captured here, before the prefill, so neither the prefill nor the steps pay
    for the capture."""

    def __init__(self, bundle, batch: int, max_len: int, use_cache: bool, *, cache: str = "full",
                 group_size: int = 64, window: int = 0, cuda_graph: bool = False, kernels: str = "auto"):
        self.bundle, self.use_cache = bundle, use_cache
        self.kind = bundle.info.get("kind")
        if use_cache and self.kind not in ("andromeda", "hf"):
            raise UnsupportedError(f"{bundle.source}: cached decoding is not wired for '{self.kind}' models")
        if cache not in CACHE_KINDS:
            raise ValueError(f"cache: must be one of {', '.join(CACHE_KINDS)}, got {cache!r}")
        if cache != "full" and not (use_cache and self.kind == "andromeda"):
            raise UnsupportedError(f"{bundle.source}: a {cache} KV cache is wired for Andromeda models with "
                                   "use_cache only")
        if cuda_graph and not (use_cache and self.kind == "andromeda" and cache == "full"):
            raise UnsupportedError(f"{bundle.source}: CUDA-graph decoding is wired for Andromeda models with "
                                   "use_cache and a full-precision cache only")
        self.cache = None
        if use_cache and self.kind == "andromeda":
            quant = {} if cache == "full" else {"quant": cache, "group_size": group_size, "window": window}
            self.cache = bundle.model.new_cache(batch, max_len, **quant)
        self.graph = None
        if cuda_graph:
            from andromeda.model.decode import GraphedDecoder

            self.graph = GraphedDecoder(bundle.model, self.cache, kernels=kernels)
        self.past = None
        self.max_len = max_len
        self.prefix: torch.Tensor | None = None  # without the cache: (B, max_len) tokens so far, filled to `filled`
        self.filled = 0
        # HF models that take logits_to_keep compute the LM head at the last position only, as Andromeda's
        # logits="last" does: a prefill pays for one row of logits, not prompt_len rows
        self.hf_last = ({"logits_to_keep": 1} if self.kind == "hf"
                        and "logits_to_keep" in inspect.signature(bundle.model.forward).parameters else {})

    @torch.inference_mode()
    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        if not self.use_cache:
            b, n = prompt.shape
            self.prefix = torch.empty(b, max(self.max_len, n), dtype=prompt.dtype, device=prompt.device)
            self.prefix[:, :n] = prompt
            self.filled = n
        return self._forward(prompt)

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        if self.graph is not None:  # the returned logits are the graph's buffer, valid until the next step
            return self.graph.step(token, clone=False)
        if not self.use_cache:
            if self.filled >= self.prefix.shape[1]:
                raise ValueError(f"decoding: more than max_len = {self.prefix.shape[1]} tokens")
            self.prefix[:, self.filled : self.filled + 1] = token
            self.filled += 1
        return self._forward(token)

    def _forward(self, new: torch.Tensor) -> torch.Tensor:
        model = self.bundle.model
        if not self.use_cache:
            return self.bundle.logits(self.prefix[:, : self.filled])[:, -1]
        if self.kind == "andromeda":
            return model(new, cache=self.cache, logits="last")[:, -1]
        out = model(input_ids=new, past_key_values=self.past, use_cache=True, **self.hf_last)
        self.past = out.past_key_values
        return out.logits[:, -1]

    @property
    def kernels(self) -> tuple[str, str] | None:
        """(the graphed step's kernels, why), or None without cuda_graph."""
        return None if self.graph is None else (self.graph.kernels, self.graph.kernels_reason)

    def cache_bytes(self) -> int:
        """Bytes the KV cache holds now (Andromeda: the filled part of its static buffers)."""
        if self.cache is not None:
            return self.cache.filled_bytes()
        if self.past is not None:
            return sum(t.nbytes for t in _tensors(self.past))
        return 0


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif hasattr(obj, "layers"):  # transformers Cache objects
        for layer in obj.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    yield t
    elif hasattr(obj, "key_cache"):
        yield from _tensors(list(obj.key_cache) + list(obj.value_cache))
