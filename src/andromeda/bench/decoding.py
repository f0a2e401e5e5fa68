"""Token-by-token decoding driven uniformly over model kinds, for the generation scenario.

prefill(prompt) and step(token) return the next-token logits (B, V). With use_cache the model
keeps keys and values (Andromeda's static KV cache, HF's past_key_values); without, every step
recomputes the whole prefix, which is what the cache saves.
"""

from __future__ import annotations

import torch

from andromeda.errors import UnsupportedError


class Decoder:
    def __init__(self, bundle, batch: int, max_len: int, use_cache: bool):
        self.bundle, self.use_cache = bundle, use_cache
        self.kind = bundle.info.get("kind")
        if use_cache and self.kind not in ("andromeda", "hf"):
            raise UnsupportedError(f"{bundle.source}: cached decoding is not wired for '{self.kind}' models")
        self.cache = bundle.model.new_cache(batch, max_len) if use_cache and self.kind == "andromeda" else None
        self.past = None
        self.tokens: torch.Tensor | None = None

    @torch.inference_mode()
    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        self.tokens = prompt
        return self._forward(prompt)

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.tokens = torch.cat([self.tokens, token], dim=1)
        return self._forward(token)

    def _forward(self, new: torch.Tensor) -> torch.Tensor:
        model = self.bundle.model
        if not self.use_cache:
            return self.bundle.logits(self.tokens)[:, -1]
        if self.kind == "andromeda":
            return model(new, cache=self.cache, logits="last")[:, -1]
        out = model(input_ids=new, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1]

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
