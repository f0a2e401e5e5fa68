"""Data sources: token files, text, datasets, splits, deterministic batches, and evaluation windows."""

import collections
import sys

import numpy as np
import pytest

from andromeda.data import load_text, load_tokens, open_data, parse_data_spec, plan_windows
from andromeda.data.loaders import load_hf_dataset
from andromeda.errors import AndromedaError, ConfigError
from andromeda.model import ByteTokenizer


def test_npy_one_and_two_dimensional(tmp_path):
    flat = np.arange(1000, dtype=np.uint16) % 300
    np.save(tmp_path / "flat.npy", flat)
    arr = load_tokens(tmp_path / "flat.npy")
    assert isinstance(arr, np.memmap) and np.array_equal(arr, flat)
    docs = open_data(f"npy:{tmp_path / 'flat.npy'}").documents()
    assert len(docs) == 1 and np.array_equal(docs.tokens[0], flat)
    rows = np.arange(40, dtype=np.int32).reshape(4, 10)
    np.save(tmp_path / "rows.npy", rows)
    docs = open_data(str(tmp_path / "rows.npy")).documents()  # kind from the suffix
    assert [list(d) for d in docs.tokens] == rows.tolist()


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_bin_memmap(tmp_path, dtype):
    ids = (np.arange(5000, dtype=np.int64) * 7919) % (70000 if dtype == "uint32" else 65535)
    ids.astype(dtype).tofile(tmp_path / "train.bin")
    arr = load_tokens(tmp_path / "train.bin", dtype)
    assert isinstance(arr, np.memmap) and arr.dtype == np.dtype(dtype)
    assert np.array_equal(arr.astype(np.int64), ids)
    src = open_data(f"bin:{tmp_path / 'train.bin'}?dtype={dtype}")
    assert np.array_equal(src.documents().tokens[0].astype(np.int64), ids)


def test_bin_of_wrong_size(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(AndromedaError, match="whole number"):
        load_tokens(tmp_path / "odd.bin", "uint16")


def test_text_file_bytes_words_and_bos(tmp_path):
    text = "Héllo wörld — ünïcode ∑ text\nsecond line here"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    docs = load_text(tmp_path / "a.txt", ByteTokenizer())
    assert docs.bos and list(docs.tokens[0]) == [256, *text.encode("utf-8")]
    assert docs.n_bytes == [len(text.encode("utf-8"))] and docs.n_words == [len(text.split())]
    lines = load_text(tmp_path / "a.txt", ByteTokenizer(), docs="line", add_bos=False)
    assert not lines.bos and [bytes(t.tolist()).decode() for t in lines.tokens] == text.splitlines()
    (tmp_path / "b.md").write_text("more", encoding="utf-8")
    both = open_data(f"text:{tmp_path}").documents()
    assert len(both) == 2 and both.n_bytes == [len(text.encode("utf-8")), 4]


def test_datasets_missing_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    (tmp_path / "d.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(AndromedaError, match="pip install datasets"):
        load_hf_dataset(tmp_path / "d.jsonl")


def test_datasets_jsonl(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "d.jsonl").write_text('{"text": "one two"}\n{"text": "three"}\n')
    docs = open_data(f"datasets:{tmp_path / 'd.jsonl'}?column=text").documents()
    assert docs.n_words == [2, 1] and docs.n_bytes == [7, 5]


@pytest.mark.parametrize("spec,msg", [
    ("npy:x.npy?bogus=1", "unknown option"),
    ("what.xyz", "cannot tell"),
    ("bin:x.bin?dtype=int8", "dtype"),
    ("synthetic:other", "synthetic:markov"),
    ("npy:x.npy?val_fraction=1.5", "val_fraction"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_data_spec(spec)


def test_splits_are_disjoint_and_batches_deterministic(tmp_path):
    rows = np.arange(200 * 50, dtype=np.int64).reshape(200, 50)  # every token unique
    np.save(tmp_path / "rows.npy", rows)
    src = open_data(f"npy:{tmp_path / 'rows.npy'}?val_fraction=0.1")
    train, val = src.documents("train"), src.documents("val")
    assert len(train) == 180 and len(val) == 20
    train_ids = set(np.concatenate(train.tokens).tolist())
    assert not train_ids & set(np.concatenate(val.tokens).tolist())
    a = src.train_batch(8, 16, position=3, seed=1)
    assert np.array_equal(a, src.train_batch(8, 16, position=3, seed=1))
    assert not np.array_equal(a, src.train_batch(8, 16, position=4, seed=1))
    for row in a:  # a contiguous slice of one training document
        assert set(row.tolist()) <= train_ids and (np.diff(row) == 1).all()


def test_single_token_file_split(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(1000, dtype=np.int64))
    src = open_data(f"npy:{tmp_path / 't.npy'}")
    tr, va = src.documents("train").tokens[0], src.documents("val").tokens[0]
    assert len(tr) + len(va) == 1000 and tr[-1] + 1 == va[0]
    assert src.train_batch(4, 32, 0).max() < len(tr)


def test_synthetic_source_spec():
    src = open_data("synthetic:markov?n_symbols=16&successors=3&val_docs=5&doc_len=40")
    docs = src.documents("val")
    assert len(docs) == 5 and all(len(t) == 40 for t in docs.tokens) and docs.n_bytes == [40] * 5
    assert docs.info["floor_ppl"] == pytest.approx(src.facts["floor_ppl"])
    assert not np.array_equal(np.stack(docs.tokens), np.stack(src.documents("train").tokens))
    assert src.train_batch(3, 20, 0).shape == (3, 20)
    with pytest.raises(ConfigError, match="integer"):
        open_data("synthetic:markov?n_symbols=abc")


@pytest.mark.parametrize("n,w,s", [(10, 4, None), (10, 4, 1), (10, 4, 3), (37, 8, 5), (3, 8, None),
                                   (2, 2, None), (100, 16, 7), (257, 64, 63), (257, 64, 64), (9, 1, None)])
def test_windows_score_every_token_once(n, w, s):
    windows = plan_windows([n, 1, n // 2 + 2], w, s)
    count = collections.Counter((x.doc, p) for x in windows for p in range(x.score_from, x.end))
    expected = {(d, p) for d, m in enumerate([n, 1, n // 2 + 2]) for p in range(1, m)}
    assert set(count) == expected and set(count.values()) == {1}
    for x in windows:  # w tokens fed at most; every target has context inside its window
        assert x.end - 1 - x.begin == x.length <= w and x.begin < x.score_from
        if x.score_from > w:  # past the first window: at least w - s + 1 tokens of context (s = w: one)
            assert x.score_from - x.begin >= w - (w if s is None else s) + 1
            assert x.length == w  # a window past the first feeds all w tokens


def test_windows_budget_and_stride_limits():
    windows = plan_windows([50, 50], 8, 3, max_targets=60)
    assert sum(x.n_targets for x in windows) == 60
    with pytest.raises(ConfigError, match="stride"):
        plan_windows([50], 8, 9)
    with pytest.raises(ConfigError, match="seq_len"):
        plan_windows([50], 0)
