"""Data sources: token arrays, text files and Hugging Face `datasets`, and the synthetic corpus.

A data source is named by a string, like a model source:

  synthetic:markov[?n_symbols=64&successors=8&alpha=1&seed=0&offset=0&val_docs=16&doc_len=512]
  npy:<path.npy>                token ids; 1-D (one document) or 2-D (one document per row); memory-mapped
  bin:<path.bin>[?dtype=uint16] raw token ids (uint16 or uint32, as nanoGPT writes them); memory-mapped
  text:<file or dir>[?docs=file|line]   UTF-8 text, tokenized with the model's tokenizer
  text:python-docs[?docs=file|line]     the standard library's documentation topics, built in (data/text.py)
  datasets:<path>[?split=train&column=text]  a local dataset: a save_to_disk directory or a
                                 .json/.jsonl/.csv/.parquet/.txt file (needs `pip install datasets`)

A bare path works too: its suffix picks the kind (.npy, .bin, .txt/.md, .json/.jsonl/.csv/.parquet).
Options common to file sources: `val_fraction` (default 0.1: the last documents, or the last
tokens of a single document, are the validation split).

Every source gives documents for evaluation (`documents(split)`) with the facts bits per byte
and word perplexity need (UTF-8 bytes and words of each document's text), and deterministic
training batches (`train_batch(batch, length, position, seed)`): the batch at a position is a
function of (seed, position) alone, so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from andromeda.data.synthetic import MarkovSource
from andromeda.data.text import BUILTIN_TEXTS, count_words, encode_texts, read_text, split_lines
from andromeda.errors import AndromedaError, ConfigError

KINDS = ("synthetic", "npy", "bin", "text", "datasets")
_SUFFIX_KIND = {".npy": "npy", ".bin": "bin", ".txt": "text", ".md": "text", ".json": "datasets",
                ".jsonl": "datasets", ".csv": "datasets", ".parquet": "datasets"}
_BIN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
_OPTIONS = {
    "synthetic": ("n_symbols", "successors", "alpha", "seed", "offset", "val_docs", "doc_len"),
    "npy": ("val_fraction",),
    "bin": ("dtype", "val_fraction"),
    "text": ("docs", "val_fraction"),
    "datasets": ("split", "column", "val_fraction"),
}
VAL_SEED = 1 << 40  # synthetic validation chains use seeds from here; training batches use seeds below


@dataclass
class Documents:
    """Documents to evaluate, with what bits per byte and word perplexity need."""

    tokens: list[np.ndarray]  # one 1-D integer array per document
    n_bytes: list[int] | None = None  # UTF-8 bytes of each document's text; None = unknown
    n_words: list[int] | None = None  # whitespace-separated words of each document's text
    bos: bool = False  # each document starts with a BOS token that stands for no text
    info: dict[str, Any] = field(default_factory=dict)
    n_words_lm_eval: list[int] | None = None  # words as lm-evaluation-harness counts them (data/text.py)

    def words(self, how: str = "whitespace") -> list[int] | None:
        """Words of each document, counted as `how` says ("whitespace" or "lm-eval"), or None if unknown."""
        return self.n_words if how == "whitespace" else self.n_words_lm_eval

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens))

    def subset(self, idx: list[int]) -> Documents:
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]
        return Documents([self.tokens[i] for i in idx], pick(self.n_bytes), pick(self.n_words), self.bos,
                         dict(self.info), pick(self.n_words_lm_eval))


# ---- parsing ----------------------------------------------------------------------------------
def parse_data_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """'bin:data/train.bin?dtype=uint32' -> ('bin', 'data/train.bin', {'dtype': 'uint32'})."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"data: expected a data source string, got {spec!r}")
    head, _, query = spec.partition("?")
    kind, sep, rest = head.partition(":")
    if not sep or kind not in KINDS:
        kind, rest = _kind_from_suffix(head), head
    if not rest:
        raise ConfigError(f"data: '{spec}' names nothing after '{kind}:'")
    pairs = parse_qsl(query, keep_blank_values=True)
    opts = {k: _value(v) for k, v in pairs}
    if len(opts) < len(pairs):
        raise ConfigError(f"data: '{spec}' sets an option twice; keep one of each")
    allowed = _OPTIONS[kind]
    for k in opts:
        if k not in allowed:
            raise ConfigError(f"data: '{spec}': unknown option '{k}' for {kind} data; allowed: {', '.join(allowed)}")
    if kind == "synthetic" and rest != "markov":
        raise ConfigError(f"data: '{spec}': the synthetic source is 'synthetic:markov'")
    if kind == "bin" and str(opts.get("dtype", "uint16")) not in _BIN_DTYPES:
        raise ConfigError(f"data: '{spec}': dtype must be one of {', '.join(_BIN_DTYPES)}")
    vf = opts.get("val_fraction", 0.1)
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf < 1:
        raise ConfigError(f"data: '{spec}': val_fraction must be a number in [0, 1), got {vf!r}")
    if kind == "text" and opts.get("docs", "file") not in ("file", "line"):
        raise ConfigError(f"data: '{spec}': docs must be 'file' (one document per file) or 'line'")
    return kind, rest, opts


def _kind_from_suffix(path: str) -> str:
    p = Path(path)
    if p.suffix.lower() in _SUFFIX_KIND:
        return _SUFFIX_KIND[p.suffix.lower()]
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        return "datasets"
    if p.is_dir():
        return "text"
    raise ConfigError(
        f"data: cannot tell what '{path}' is; write kind:path with kind one of {', '.join(KINDS)} "
        "(e.g. npy:tokens.npy, bin:train.bin?dtype=uint16, text:corpus.txt, synthetic:markov)"
    )


def _value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def validate_data_spec(spec: str) -> None:
    """Cheap checks at manifest time: the spec parses; a synthetic source's options are valid."""
    kind, _, opts = parse_data_spec(spec)
    if kind == "synthetic":
        _markov(opts)


_NPY_MAGIC = b"\x93NUMPY"
_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")
_DATASET_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")


def check_data_files(spec: str) -> None:
    """Load-time check that the files a data source names exist and are of its kind (reading them is
    the run's work): a .npy file with NumPy's header, a whole number of uint16/uint32 tokens in a .bin,
    a non-empty text file or a directory with .txt/.md files, a datasets directory or data file."""
    kind, rest, opts = parse_data_spec(spec)
    if kind == "synthetic" or (kind == "text" and rest in BUILTIN_TEXTS):
        return
    p = Path(rest)
    if not p.exists():
        raise ConfigError(f"data: '{spec}': '{p}' does not exist")
    if kind in ("npy", "bin"):
        if not p.is_file():
            raise ConfigError(f"data: '{spec}': '{p}' is a directory; {kind} data is one token file")
        size = p.stat().st_size
        if kind == "npy":
            with open(p, "rb") as f:
                if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                    raise ConfigError(f"data: '{spec}': '{p}' is not a .npy file (no NumPy header); "
                                      "write token ids with numpy.save, or use bin: for raw tokens")
        else:
            name = str(opts.get("dtype", "uint16"))
            itemsize = np.dtype(_BIN_DTYPES[name]).itemsize
            if size == 0 or size % itemsize:
                raise ConfigError(f"data: '{spec}': '{p}' is {size} bytes, not a whole number (>= 1) of {name} "
                                  "tokens")
    elif kind == "text":
        if p.is_dir():
            if next((f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".txt", ".md")), None) is None:
                raise ConfigError(f"data: '{spec}': no .txt or .md files under '{p}'")
        elif p.stat().st_size == 0:
            raise ConfigError(f"data: '{spec}': '{p}' is empty")
    elif kind == "datasets":
        import importlib.util

        if importlib.util.find_spec("datasets") is None:
            raise ConfigError(f"data: '{spec}' needs the Hugging Face `datasets` package; install it with: "
                              "pip install datasets")
        if p.is_dir() and not any((p / n).is_file() for n in _DATASET_FILES):
            raise ConfigError(f"data: '{spec}': '{p}' is not a saved dataset (no {' or '.join(_DATASET_FILES[:2])}; "
                              "write it with Dataset.save_to_disk)")
        if p.is_file() and p.suffix.lower() not in _DATASET_SUFFIXES:
            raise ConfigError(f"data: '{spec}': datasets reads {', '.join(_DATASET_SUFFIXES)} files, not '{p.name}'")


# ---- array helpers -----------------------------------------------------------------------------
def load_tokens(path: str | Path, dtype: str | None = None) -> np.ndarray:
    """Token ids from .npy (np.load, memory-mapped) or raw .bin (np.memmap of uint16/uint32)."""
    p = Path(path)
    if not p.is_file():
        raise AndromedaError(f"data: token file '{p}' does not exist")
    if p.suffix.lower() == ".npy":
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    else:
        name = dtype or "uint16"
        if name not in _BIN_DTYPES:
            raise ConfigError(f"data: dtype must be one of {', '.join(_BIN_DTYPES)}, got {name!r}")
        itemsize = np.dtype(_BIN_DTYPES[name]).itemsize
        if p.stat().st_size % itemsize:
            raise AndromedaError(f"data: '{p}' is {p.stat().st_size} bytes, not a whole number of {name} tokens")
        arr = np.memmap(p, dtype=_BIN_DTYPES[name], mode="r")
    if not np.issubdtype(arr.dtype, np.integer):
        raise AndromedaError(f"data: '{p}' holds {arr.dtype} values; token ids must be integers")
    if arr.ndim not in (1, 2):
        raise AndromedaError(f"data: '{p}' has shape {arr.shape}; expected (tokens,) or (documents, tokens)")
    return arr


def token_bytes(tokenizer: Any, ids: np.ndarray | list[int]) -> int:
    """UTF-8 bytes the tokens stand for. Byte tokenizers: ids < 256 are one byte each (exact);
    others: the length of the decoded text (exact for whole documents)."""
    if _is_byte_tokenizer(tokenizer):
        return int((np.asarray(ids) < 256).sum())
    return len(tokenizer.decode([int(i) for i in ids]).encode("utf-8"))


def _is_byte_tokenizer(tokenizer: Any) -> bool:
    from andromeda.model.tokenizer import ByteTokenizer

    return tokenizer is None or isinstance(tokenizer, ByteTokenizer)


def text_documents(texts: list[str], tokenizer: Any = None, *, add_bos: bool = True,
                   info: dict[str, Any] | None = None) -> Documents:
    """Tokenize texts with the model's tokenizer; count each text's UTF-8 bytes and words (both ways).

    add_bos: start each document with the tokenizer's BOS (or its EOS where it has no BOS, as
    lm-evaluation-harness does), so that every token of the text is scored and bits per byte covers
    all of its bytes.
    """
    texts = [t for t in texts if t]
    docs, bos = encode_texts(tokenizer, texts, add_bos)
    return Documents(docs, [len(t.encode("utf-8")) for t in texts], [count_words(t) for t in texts], bos,
                     dict(info or {}), [count_words(t, "lm-eval") for t in texts])


def load_text(path: str | Path, tokenizer: Any = None, *, docs: str = "file", add_bos: bool = True) -> Documents:
    """A UTF-8 text file, or a directory of .txt/.md files (sorted by name), read as bytes (no newline
    translation): one document per file, or per non-blank line (without its LF or CRLF) with docs="line".
    A name of BUILTIN_TEXTS ("python-docs") is that built-in text, one document per topic."""
    if str(path) in BUILTIN_TEXTS:
        texts, info = BUILTIN_TEXTS[str(path)](), {"builtin": str(path)}
    else:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".txt", ".md"))
            if not files:
                raise AndromedaError(f"data: no .txt or .md files under '{p}'")
        elif p.is_file():
            files = [p]
        else:
            raise AndromedaError(f"data: text path '{p}' does not exist")
        texts, info = [read_text(f) for f in files], {"files": len(files)}
    if docs == "line":
        texts = [line for t in texts for line in split_lines(t)]
    return text_documents(texts, tokenizer, add_bos=add_bos, info=info)


def load_hf_dataset(path: str | Path, tokenizer: Any = None, *, split: str = "train", column: str = "text",
                    add_bos: bool = True) -> Documents:
    """A local Hugging Face dataset: a save_to_disk directory, or a json/jsonl/csv/parquet/txt file.

    `column` holds text (tokenized with the model's tokenizer) or lists of token ids.
    """
    try:
        import datasets
    except ImportError as e:
        raise AndromedaError(
            "the Hugging Face `datasets` package is not installed; install it with: pip install datasets"
        ) from e
    p = Path(path)
    if not p.exists():
        raise AndromedaError(f"data: dataset path '{p}' does not exist")
    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
    else:
        builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(
            p.suffix.lower())
        if builder is None:
            raise AndromedaError(f"data: cannot load '{p}' with datasets; use .json/.jsonl/.csv/.parquet/.txt")
        ds = datasets.load_dataset(builder, data_files=str(p))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ConfigError(f"data: dataset '{p}' has no split '{split}'; splits: {', '.join(ds)}")
        ds = ds[split]
    if column not in ds.column_names:
        raise ConfigError(f"data: dataset '{p}' has no column '{column}'; columns: {', '.join(ds.column_names)}")
    values = ds[column]
    if values and isinstance(values[0], str):
        return text_documents(list(values), tokenizer, add_bos=add_bos, info={"rows": len(values)})
    docs = [np.asarray(v, dtype=np.int64) for v in values if len(v)]
    return Documents(docs, info={"rows": len(values)})


# ---- sources ---------------------------------------------------------------------------------
class DataSource:
    """Documents for evaluation and deterministic batches for training."""

    spec: str = ""
    kind: str = ""

    def documents(self, split: str = "all") -> Documents:  # pragma: no cover - interface
        raise NotImplementedError

    def train_batch(self, batch: int, length: int, position: int, seed: int = 0) -> np.ndarray:  # noqa: B027
        raise NotImplementedError

    @property
    def facts(self) -> dict[str, float]:
        """Known properties of the data (the synthetic source's entropy floor)."""
        return {}

    def max_token(self) -> int:
        raise NotImplementedError


class SyntheticData(DataSource):
    """The Markov corpus: training batches are fresh chains; validation is fixed chains of doc_len."""

    kind = "synthetic"

    def __init__(self, source: MarkovSource, *, val_docs: int = 16, doc_len: int = 512, spec: str = ""):
        if val_docs < 1 or doc_len < 2:
            raise ConfigError(f"data: val_docs must be >= 1 and doc_len >= 2, got {val_docs}, {doc_len}")
        self.source, self.val_docs, self.doc_len = source, val_docs, doc_len
        self.spec = spec or "synthetic:markov"

    def documents(self, split: str = "all") -> Documents:
        seed = VAL_SEED + (1 if split == "train" else 0)
        arr = self.source.sample_batch(self.val_docs, self.doc_len, seed=seed)  # (docs, doc_len)
        docs = list(arr)
        # one token is one byte; the text of a Markov chain has no words
        return Documents(docs, [len(d) for d in docs], None, False, {"synthetic": True, **self.facts})

    def train_batch(self, batch: int, length: int, position: int, seed: int = 0) -> np.ndarray:
        if position >= VAL_SEED:
            raise ConfigError(f"data: training position {position} collides with the validation chains")
        return self.source.sample_batch(batch, length, seed=position + (seed << 41))

    @property
    def facts(self) -> dict[str, float]:
        return self.source.facts()

    def max_token(self) -> int:
        return self.source.offset + self.source.n_symbols - 1


class DocumentData(DataSource):
    """Documents in memory or memory-mapped, split into train and validation."""

    def __init__(self, docs: Documents, *, kind: str, spec: str, val_fraction: float = 0.1):
        if not docs.tokens:
            raise AndromedaError(f"data: '{spec}' holds no documents")
        self.docs, self.kind, self.spec, self.val_fraction = docs, kind, spec, val_fraction

    def _split(self, split: str) -> Documents:
        if split == "all" or self.val_fraction == 0:
            return self.docs
        n = len(self.docs)
        if n >= 2:
            n_val = min(n - 1, max(1, round(n * self.val_fraction)))
            idx = list(range(n - n_val, n)) if split == "val" else list(range(n - n_val))
            return self.docs.subset(idx)
        # one document (a token file): the last val_fraction of its tokens is the validation split
        tokens = self.docs.tokens[0]
        cut = len(tokens) - max(2, int(len(tokens) * self.val_fraction))
        part = tokens[cut:] if split == "val" else tokens[:cut]
        bos = self.docs.bos and split != "val"
        return Documents([part], None, None, bos, dict(self.docs.info))

    def documents(self, split: str = "all") -> Documents:
        if split not in ("all", "train", "val"):
            raise ConfigError(f"data: split must be all, train or val, got {split!r}")
        return self._split(split)

    def train_batch(self, batch: int, length: int, position: int, seed: int = 0) -> np.ndarray:
        docs = self._split("train").tokens
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        usable = np.clip(lengths - length + 1, 0, None)  # window start positions per document
        if usable.sum() == 0:
            raise ConfigError(
                f"data: '{self.spec}': no training document has {length} tokens; use a shorter seq_len"
            )
        rng = np.random.default_rng([seed, position])
        which = rng.choice(len(docs), size=batch, p=usable / usable.sum())
        starts = (rng.random(batch) * usable[which]).astype(np.int64)
        return np.stack([np.asarray(docs[d][s : s + length], dtype=np.int64) for d, s in zip(which, starts,
                                                                                              strict=True)])

    def max_token(self) -> int:
        return int(max(int(np.max(d)) for d in self.docs.tokens if len(d)))


# the synthetic source's integer options: n_symbols + offset <= 256 (MarkovSource checks it); seeds as numpy's
_MARKOV_INT_RANGES = {"n_symbols": (2, 256), "successors": (1, 256), "seed": (0, 2**32 - 1), "offset": (0, 254),
                      "val_docs": (1, 100_000), "doc_len": (2, 1 << 20)}
_MARKOV_MAX_TOKENS = 1 << 27  # validation tokens the synthetic source generates (1 GiB as int64)


def _markov(opts: dict[str, Any]) -> tuple[MarkovSource, dict[str, int]]:
    keys = ("n_symbols", "successors", "alpha", "seed", "offset")
    kw = {k: opts[k] for k in keys if k in opts}
    for k, v in kw.items():
        want = float if k == "alpha" else int
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not isinstance(v, int)):
            raise ConfigError(f"data: synthetic option {k} must be {'a number' if want is float else 'an integer'}"
                              f", got {v!r}")
    for k, (lo, hi) in _MARKOV_INT_RANGES.items():
        v = kw.get(k)
        if isinstance(v, int) and not lo <= v <= hi:
            raise ConfigError(f"data: synthetic option {k} must be from {lo} to {hi}, got {v}")
    extra = {k: opts[k] for k in ("val_docs", "doc_len") if k in opts}
    for k, v in extra.items():
        lo, hi = _MARKOV_INT_RANGES[k]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"data: synthetic option {k} must be an integer from {lo} to {hi}, got {v!r}")
    docs, length = extra.get("val_docs", 16), extra.get("doc_len", 512)
    if docs * length > _MARKOV_MAX_TOKENS:
        raise ConfigError(f"data: synthetic val_docs x doc_len = {docs * length} tokens; at most {_MARKOV_MAX_TOKENS}")
    return MarkovSource(**{"n_symbols": 64, "successors": 8, **kw}), extra


def open_data(spec: str, tokenizer: Any = None, *, add_bos: bool = True) -> DataSource:
    """Open a data source by its spec string; text is tokenized with `tokenizer` (default: bytes)."""
    kind, rest, opts = parse_data_spec(spec)
    vf = float(opts.get("val_fraction", 0.1))
    if kind == "synthetic":
        source, extra = _markov(opts)
        return SyntheticData(source, spec=spec, **extra)
    if kind in ("npy", "bin"):
        arr = load_tokens(rest, None if kind == "npy" else str(opts.get("dtype", "uint16")))
        tokens = list(arr) if arr.ndim == 2 else [arr]
        docs = Documents(tokens, info={"file": rest, "dtype": str(arr.dtype)})
        if _is_byte_tokenizer(tokenizer):  # token ids < 256 are bytes: bits per byte is exact
            docs.n_bytes = [token_bytes(tokenizer, t) for t in tokens]
        return DocumentData(docs, kind=kind, spec=spec, val_fraction=vf)
    if kind == "text":
        docs = load_text(rest, tokenizer, docs=str(opts.get("docs", "file")), add_bos=add_bos)
        return DocumentData(docs, kind=kind, spec=spec, val_fraction=vf)
    docs = load_hf_dataset(rest, tokenizer, split=str(opts.get("split", "train")),
                           column=str(opts.get("column", "text")), add_bos=add_bos)
    return DocumentData(docs, kind=kind, spec=spec, val_fraction=vf)


__all__ = [
    "Documents", "DataSource", "SyntheticData", "DocumentData", "open_data", "parse_data_spec",
    "validate_data_spec", "check_data_files", "load_tokens", "load_text", "load_hf_dataset", "text_documents",
    "token_bytes", "KINDS",
]
