"""Data for quality and training: token arrays, text, local HF datasets, and a synthetic corpus
whose entropy rate (the perplexity floor) is known exactly. Never imports the scenarios, runs, verdicts or
report above it."""

from andromeda.data.loaders import (
    DataSource,
    DocumentData,
    Documents,
    SyntheticData,
    check_data_files,
    load_hf_dataset,
    load_text,
    load_tokens,
    open_data,
    parse_data_spec,
    text_documents,
    token_bytes,
    validate_data_spec,
)
from andromeda.data.synthetic import MarkovSource, entropy_rate, stationary_distribution
from andromeda.data.text import BUILTIN_TEXTS, WORD_COUNTS, count_words, python_docs, read_text
from andromeda.data.windows import Window, plan_windows

__all__ = [
    "DataSource", "Documents", "DocumentData", "SyntheticData", "open_data", "parse_data_spec",
    "validate_data_spec", "check_data_files", "load_tokens", "load_text", "load_hf_dataset", "text_documents",
    "token_bytes", "MarkovSource", "entropy_rate", "stationary_distribution", "Window", "plan_windows",
    "BUILTIN_TEXTS", "WORD_COUNTS", "count_words", "python_docs", "read_text",
]
