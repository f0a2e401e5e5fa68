"""RecordStore: a torn last line (a crash mid-write) never swallows the next record; wrong-typed
records are one-line errors naming the line and the field."""

import json

import pytest

from andromeda.records import Record, RecordError, RecordStore


def _rec(case_id: str, i: int = 0) -> Record:
    return Record(case_id=case_id, scenario="latency", source="andromeda:tiny", params={"seq_len": 8, "i": i},
                  metrics={"latency_ms": 1.0 + i}, samples={"latency_ms": [1.0, 1.1]})


def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    store = RecordStore(tmp_path / "results.jsonl")
    store.append([_rec("a")])
    full = _rec("b").to_json()
    with open(store.path, "a") as f:
        f.write(full[: len(full) // 2])  # a crash mid-write: no newline at the end
    assert store.ends_torn()
    store.append([_rec("c")])
    lines = store.path.read_text().splitlines()
    assert json.loads(lines[-1])["case_id"] == "c"  # on its own line, not glued to the fragment
    assert [r.case_id for r in store.read()] == ["a", "c"]
    assert store.scan().torn == 1 and not store.ends_torn()


def test_a_torn_case_is_unfinished_with_every_record_of_its_write(tmp_path):
    # a case that writes several records (training steps): the crash cut its write after two of three
    store = RecordStore(tmp_path / "results.jsonl")
    store.append([_rec("a")])
    text = "\n".join(_rec("b", i).to_json() for i in range(3))
    with open(store.path, "a") as f:
        f.write(text[: text.rindex("\n") + 40])  # two whole records of b and the start of the third
    assert store.case_ids() == {"a"}  # b did not finish: --resume reruns it whole
    store.append([_rec("b", i) for i in range(3)])  # the rerun
    scan = store.scan()
    assert [(r.case_id, r.params["i"]) for r in scan.records] == [("a", 0), ("b", 0), ("b", 1), ("b", 2)]
    assert (scan.torn, scan.left_out) == (1, 2)


def test_a_fragment_too_short_to_name_its_case_loses_only_itself(tmp_path):
    store = RecordStore(tmp_path / "results.jsonl")
    store.append([_rec("a"), _rec("a", 1)])
    with open(store.path, "a") as f:
        f.write('{"case_id": "b')
    assert [r.case_id for r in store.read()] == ["a", "a"]


@pytest.mark.parametrize("change,fragment", [
    ({"metrics": "fast"}, "field 'metrics' must be an object, got a string"),
    ({"metrics": {"latency_ms": "1.0"}}, "metrics.latency_ms must be a number or null, got a string"),
    ({"samples": {"latency_ms": [1.0, "x"]}}, "samples.latency_ms must be a list of numbers"),
    ({"params": [1, 2]}, "field 'params' must be an object, got a list"),
    ({"case_id": 7}, "field 'case_id' must be a string, got a number"),
    ({"status": "great"}, "field 'status'"),
    ({"message": {"a": 1}}, "field 'message' must be a string or null"),
    ({"metrics": {"latency_ms": 10**400}}, "metrics.latency_ms must be a number or null, got an integer too large"),
])
def test_wrong_types_are_one_line_errors_with_the_line(tmp_path, change, fragment):
    store = RecordStore(tmp_path / "results.jsonl")
    store.append([_rec("a")])
    with open(store.path, "a") as f:
        f.write(json.dumps({**json.loads(_rec("b").to_json()), **change}) + "\n")
    with pytest.raises(RecordError) as e:
        store.read()
    msg = str(e.value)
    assert fragment in msg and "line 2" in msg and "\n" not in msg


def test_a_json_value_that_is_not_an_object(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(RecordError, match="line 1: a record is a JSON object, got a list"):
        RecordStore(path).read()
