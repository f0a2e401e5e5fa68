"""Andromeda: embed -> blocks -> norm -> LM head. Loss and cached generation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from andromeda.errors import ConfigError
from andromeda.model.cache import KVCache
from andromeda.model.config import ModelConfig
from andromeda.model.decode import GraphedDecoder, decode_step
from andromeda.model.embedding import TokenEmbedding
from andromeda.model.layers import Block
from andromeda.model.norms import deepnorm_beta, make_norm
from andromeda.model.positional import anchored_xpos, head_slopes, rotary_tables
from andromeda.model.sampling import sample_next

IGNORE_INDEX = -100


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Causal LM cross-entropy: position t predicts labels[t + 1]; `ignore_index` labels count for nothing."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=ignore_index
    )


class Andromeda(nn.Module):
    def __init__(self, cfg: ModelConfig, embedding: nn.Module | None = None):
        """`embedding`: a provider (embedding.EmbeddingProvider) in place of the default token embedding.
        It keeps the weights it comes with: reset_parameters initializes only the model's own modules."""
        super().__init__()
        self.cfg = cfg
        if embedding is not None and not isinstance(embedding, nn.Module):
            raise ConfigError(f"embedding: a provider must be an nn.Module (subclass embedding.EmbeddingProvider), "
                              f"got {type(embedding).__name__}")
        if embedding is not None and cfg.use_abs_pos_emb:  # the position table belongs to the default embedding
            raise ConfigError("model.use_abs_pos_emb: a custom embedding provider replaces the default embedding and "
                              "its position table (it receives the positions); set use_abs_pos_emb: false")
        self.custom_embedding = embedding is not None
        self.embed = embedding if embedding is not None else TokenEmbedding(cfg)
        self.emb_drop = nn.Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        # post-norm (DeepNorm) blocks end normalized; pre-norm stacks need a final norm
        self.final_norm = nn.Identity() if cfg.deepnorm else make_norm(cfg.norm, cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_tokens, bias=False)
        self.register_buffer("alibi_slopes", self._slopes(), persistent=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            if not isinstance(self.embed, TokenEmbedding):
                raise ConfigError("model.tie_embeddings: needs the default token embedding, not a custom provider")
            self.head.weight = self.embed.token.weight

    def _slopes(self, device: torch.device | None = None) -> torch.Tensor | None:
        cfg = self.cfg
        if not cfg.n_alibi_heads:
            return None
        return head_slopes(cfg.heads, cfg.n_alibi_heads, cfg.pos_interpolation_factor).to(device)

    def _apply(self, fn, recurse=True):
        # ALiBi slopes stay float32 whatever dtype the model is cast to: bf16 would round them.
        super()._apply(fn, recurse)
        if self.alibi_slopes is not None:
            self.alibi_slopes = self._slopes(self.alibi_slopes.device)
        return self

    # ---- initialisation -------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights and zero biases (DeepNorm: its scaled Xavier init in the blocks).

        A user-supplied embedding provider is left as it is: its weights are the user's.
        """
        std = self.cfg.init_std
        own = set(self.embed.modules()) if self.custom_embedding else set()
        for m in self.modules():
            if m in own:
                continue
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
        if self.cfg.deepnorm:
            beta = deepnorm_beta(self.cfg.depth)
            for blk in self.blocks:
                for lin, gain in [
                    (blk.attn.to_q, 1.0), (blk.attn.to_k, 1.0), (blk.attn.to_v, beta), (blk.attn.to_out, beta),
                    (blk.ff.w_in, beta), (blk.ff.w_out, beta),
                ] + ([(blk.ff.w_gate, beta)] if blk.ff.w_gate is not None else []):
                    nn.init.xavier_normal_(lin.weight, gain=gain)

    # ---- facts ----------------------------------------------------------------------------
    def num_params(self, exclude_embeddings: bool = False) -> int:
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        if exclude_embeddings:
            total -= sum(p.numel() for p in self.embed.parameters())
        return total

    # ---- forward --------------------------------------------------------------------------
    def check_positions(self, last: int) -> None:
        """Refuse a last position the config cannot represent (a Python int: no device sync). Only absolute
        position embeddings have a limit; xPos is anchored per block (positional.XPos) and has none."""
        cfg = self.cfg
        if cfg.use_abs_pos_emb and last >= cfg.max_seq_len:
            raise ConfigError(
                f"input: position {last} is past max_seq_len {cfg.max_seq_len}, which absolute position "
                "embeddings cannot represent; shorten the input"
            )

    def rope(self, first: int, n: int, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32):
        """cos, sin (n, rot_dim) and the positional.XPos (or None) of positions first .. first + n - 1; `dtype`,
        that of the keys (a KV cache's), sets the xPos anchor period."""
        cfg = self.cfg
        if not cfg.use_rotary:
            return None
        positions = torch.arange(first, first + n, device=device)
        cos, sin = rotary_tables(positions, cfg.rot_dim, theta=cfg.rotary_theta,
                                 interpolation_factor=cfg.pos_interpolation_factor)
        xpos = None
        if cfg.rotary_xpos:
            xpos = anchored_xpos(first, n, cfg.rot_dim, cfg.xpos_scale_base, cfg.pos_interpolation_factor,
                                 dtype=dtype, device=device)
        return cos, sin, xpos

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cache: KVCache | None = None,
        logits: Literal["all", "last", "none"] = "all",
        start: int = 0,
    ) -> torch.Tensor:
        """tokens (B, N) -> logits (B, N, V), (B, 1, V) for "last", or hidden states (B, N, dim) for "none".

        With a cache, the tokens continue the cached sequence and the cache advances by N. Without one, they
        sit at positions start .. start + N - 1 (an earlier context that is not there). xPos is exact at any
        position (positional.XPos).
        """
        if tokens.dim() != 2:
            raise ConfigError(f"input: tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        if start < 0 or (start and cache is not None):
            raise ConfigError(f"input: start must be >= 0 and is for a forward without a cache (with one, positions "
                              f"continue the cache's; see new_cache(start=)), got start={start}")
        n = tokens.shape[1]
        start = cache.position if cache is not None else start
        self.check_positions(start + n - 1)
        positions = torch.arange(start, start + n, device=tokens.device)
        x = self.emb_drop(self.embed(tokens, positions))  # (B, N, dim)
        key_dtype = cache.dtype if cache is not None else (
            torch.get_autocast_dtype(tokens.device.type) if torch.is_autocast_enabled(tokens.device.type)
            else self.head.weight.dtype)
        rope = self.rope(start, n, tokens.device, key_dtype)
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope, self.alibi_slopes, cache, i)
        if cache is not None:
            cache.advance(n)
        if logits == "none":
            return x
        x = self.final_norm(x[:, -1:] if logits == "last" else x)
        return self.head(x)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """Mean next-token cross-entropy; labels default to the tokens themselves."""
        return lm_loss(self(tokens), tokens if labels is None else labels, ignore_index)

    def decode_step(self, token: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """A static-shape, sync-free single-token step (model/decode.py): logits (B, V) at device position
        `pos` (1,), which must hold cache.length; both advance by one. Full-precision caches only."""
        return decode_step(self, token, pos, cache)

    # ---- generation -----------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None, *, quant: str = "none",
                  group_size: int = 64, window: int = 0, start: int = 0) -> KVCache:
        """A static cache for `batch` sequences of up to `max_len` positions from position `start` (see KVCache
        for quant and start)."""
        ref = self.head.weight
        return KVCache(self.cfg, batch, max_len, device=ref.device, dtype=dtype or ref.dtype, quant=quant,
                       group_size=group_size, window=window, start=start)

    @torch.no_grad()  # not inference_mode: its tensors could not be fed back into training
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token: int | None = None,
        use_cache: bool = True,
        cache_quant: str = "none",
        generator: torch.Generator | None = None,
        return_logits: bool = False,
        cuda_graph: bool = False,
    ):
        """Extend prompt (B, N) by up to max_new_tokens. temperature 0 is greedy.

        Returns tokens (B, N + new); with return_logits, also the (B, new, V) logits each token
        was drawn from. Without a cache every step recomputes the whole prefix (to show the
        cache's value in benchmarks). cache_quant "int8"/"int4" stores the cache quantized.
        cuda_graph runs the steps after the prefill as one captured CUDA graph (model/decode.py;
        eagerly on CPU); it needs use_cache and a full-precision cache.
        """
        if prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ConfigError(f"generate: prompt must be (batch, seq) with seq >= 1, got {tuple(prompt.shape)}")
        if max_new_tokens < 0:
            raise ConfigError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if cuda_graph and not (use_cache and cache_quant == "none"):
            raise ConfigError("generate: cuda_graph needs use_cache=True and cache_quant='none', got "
                              f"use_cache={use_cache}, cache_quant='{cache_quant}'")
        b, n = prompt.shape
        cache = self.new_cache(b, n + max_new_tokens, quant=cache_quant) if use_cache else None
        tokens, step_logits = prompt, []
        done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
        next_input, graphed = prompt, None
        for i in range(max_new_tokens):
            if cuda_graph and i > 0:  # the prompt went through the normal forward; the steps are graphed
                if graphed is None:
                    graphed = GraphedDecoder(self, cache)
                logits = graphed.step(next_input, clone=return_logits)  # (B, V)
            else:
                logits = self(next_input if use_cache else tokens, cache=cache, logits="last")[:, -1]  # (B, V)
            nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_token is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token), nxt)
                done |= nxt == eos_token
            step_logits.append(logits)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            next_input = nxt[:, None]
            if eos_token is not None and bool(done.all()):
                break
        if return_logits:
            empty = prompt.new_zeros((b, 0, self.cfg.num_tokens), dtype=torch.float32)
            return tokens, torch.stack(step_logits, dim=1) if step_logits else empty
        return tokens
