"""Tokenizers: byte-level by default (no downloads), and an adapter for a local HF tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from andromeda.errors import AndromedaError, missing_extra


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; 256 = BOS, 257 = EOS, 258 = PAD. Needs num_tokens >= 259."""

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def bytes_per_token(self, text: str) -> float:
        return 1.0


class HFTokenizer:
    """A Hugging Face tokenizer loaded from a local directory (never downloads)."""

    def __init__(self, path: str | Path):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise missing_extra("transformers", "hf") from e
        if not Path(path).exists():
            raise AndromedaError(f"tokenizer: path '{path}' does not exist; give a local tokenizer directory")
        self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.vocab_size = len(self.tok)
        self.bos_id = self.tok.bos_token_id
        self.eos_id = self.tok.eos_token_id

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False)
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
