"""Text read as the file's bytes (CRLF kept), word counts both ways, the built-in python-docs source."""

import numpy as np
import pytest

from andromeda.data import count_words, load_text, open_data
from andromeda.data.loaders import check_data_files, parse_data_spec
from andromeda.model import ByteTokenizer


def test_a_crlf_file_keeps_its_bytes(tmp_path):
    raw = "Première ligne\r\nsecond line\r\n\r\nthird\n".encode()
    (tmp_path / "crlf.txt").write_bytes(raw)
    docs = open_data(f"text:{tmp_path / 'crlf.txt'}").documents()
    assert docs.n_bytes == [(tmp_path / "crlf.txt").stat().st_size] == [len(raw)]
    assert list(docs.tokens[0]) == [ByteTokenizer.bos_id, *raw]  # every byte of the file, CRs included
    lines = load_text(tmp_path / "crlf.txt", ByteTokenizer(), docs="line", add_bos=False)
    assert [bytes(t.tolist()) for t in lines.tokens] == [b"Premi\xc3\xa8re ligne", b"second line", b"third"]


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    from andromeda.errors import AndromedaError

    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(AndromedaError, match=r"'.*latin\.txt' is not UTF-8 text.*convert it"):
        load_text(tmp_path / "latin.txt")


@pytest.mark.parametrize("text,whitespace,lm_eval", [
    ("one two", 2, 2),
    ("one two\n", 2, 3),            # lm-eval: an empty word after the final newline
    ("  one\t\ttwo  \n three \n", 3, 5),  # and before leading whitespace
    ("", 0, 1),
    ("a\u00a0b", 2, 2),             # a no-break space separates words both ways
])
def test_word_counts(text, whitespace, lm_eval):
    assert count_words(text) == count_words(text, "whitespace") == whitespace
    assert count_words(text, "lm-eval") == lm_eval


def test_documents_carry_both_word_counts(tmp_path):
    (tmp_path / "a.txt").write_text(" lead and trail \n", encoding="utf-8")
    docs = load_text(tmp_path / "a.txt")
    assert docs.words("whitespace") == [3] and docs.words("lm-eval") == [5]


def test_python_docs_is_a_text_source_that_needs_no_file():
    from pydoc_data.topics import topics

    assert parse_data_spec("text:python-docs?docs=line") == ("text", "python-docs", {"docs": "line"})
    check_data_files("text:python-docs")  # no file to find
    src = open_data("text:python-docs")
    docs = src.documents()
    names = sorted(topics)
    assert len(docs) == len(names) and docs.bos and docs.info == {"builtin": "python-docs"}
    assert docs.n_bytes == [len(topics[k].encode("utf-8")) for k in names]
    assert bytes(docs.tokens[0][1:].tolist()).decode("utf-8") == topics[names[0]]
    val = src.documents("val")  # the last tenth of the topics, by name
    assert len(val) == round(len(names) * 0.1) and val.n_bytes == docs.n_bytes[-len(val):]
    assert np.array_equal(val.tokens[-1], docs.tokens[-1])
