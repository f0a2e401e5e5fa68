"""Text documents: reading files as their bytes, counting words, the built-in `python-docs` corpus.

Files are read as bytes and decoded as UTF-8 with no newline translation, so a document's byte
count (what bits per byte divides by) is the file's: a CRLF file keeps its CRs.

Words are counted two ways (the perplexity scenario's `words`):

  whitespace   len(text.split()): runs of whitespace separate words, none is empty
  lm-eval      len(re.split(r"\\s+", text)): lm-evaluation-harness's count, which also counts the
               empty word before leading and after trailing whitespace

Built-in text (`text:<name>`), shipped with Python itself, so nothing downloads:

  python-docs  the standard library's documentation topics (`pydoc_data.topics.topics`, what
               `help("assert")` shows): one document per topic, in the order of the topic names;
               79 topics, about 466 KB of English with code, on Python 3.11
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from andromeda.errors import AndromedaError

WORD_COUNTS = ("whitespace", "lm-eval")
_WS = re.compile(r"\s+")
_LINE_END = re.compile(r"\r\n|\n")


def count_words(text: str, how: str = "whitespace") -> int:
    """Words of a text, counted as `how` says (see the module docstring)."""
    if how == "whitespace":
        return len(text.split())
    if how == "lm-eval":
        return len(_WS.split(text))
    raise ValueError(f"words: must be one of {', '.join(WORD_COUNTS)}, got {how!r}")


def read_text(path: str | Path) -> str:
    """A file's text: its bytes decoded as UTF-8, line endings as they are (no newline translation)."""
    p = Path(path)
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise AndromedaError(f"data: '{p}' is not UTF-8 text (byte {e.start}: {e.reason}); "
                             "convert it to UTF-8, e.g. iconv -t UTF-8") from e


def split_lines(text: str) -> list[str]:
    """Non-blank lines without their line ending (LF or CRLF); nothing else splits a line."""
    return [line for line in _LINE_END.split(text) if line.strip()]


def python_docs() -> list[str]:
    """The standard library's documentation topics, one text per topic, in the order of the topic names."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # a Python built without its pydoc data
        raise AndromedaError("data: text:python-docs needs the standard library's pydoc_data package, which "
                             "this Python lacks; use another text source") from e
    return [topics[name] for name in sorted(topics)]


BUILTIN_TEXTS: dict[str, Callable[[], list[str]]] = {"python-docs": python_docs}


def prefix_token(tokenizer: Any) -> int | None:
    """The token that starts a document and stands for no text: the tokenizer's BOS, or its EOS where it has
    no BOS (lm-evaluation-harness's rule for the first context), or None."""
    bos = getattr(tokenizer, "bos_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_id", None)


def encode_texts(tokenizer: Any, texts: list[str], add_bos: bool) -> tuple[list[np.ndarray], bool]:
    """Token ids of each text (default tokenizer: bytes), prefixed with prefix_token when add_bos and there
    is one; returns (documents, whether they start with it)."""
    if tokenizer is None:
        from andromeda.model.tokenizer import ByteTokenizer

        tokenizer = ByteTokenizer()
    first = prefix_token(tokenizer) if add_bos else None
    head = [] if first is None else [int(first)]
    docs = [np.asarray(head + list(tokenizer.encode(t, add_bos=False)), dtype=np.int64) for t in texts]
    return docs, first is not None


__all__ = ["WORD_COUNTS", "BUILTIN_TEXTS", "count_words", "read_text", "split_lines", "python_docs",
           "prefix_token", "encode_texts"]
