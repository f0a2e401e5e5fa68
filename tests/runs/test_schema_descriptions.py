"""`andromeda schema` describes every manifest field, so an editor's completion shows what each does."""

import json

from andromeda.cli import main


def _properties(schema):
    """(where, name, property) for every property of the manifest and of every model it holds."""
    yield from (("Manifest", k, v) for k, v in schema.get("properties", {}).items())
    for name, d in schema.get("$defs", {}).items():
        yield from ((name, k, v) for k, v in d.get("properties", {}).items())


def test_every_field_of_the_schema_has_a_description(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    props = list(_properties(schema))
    assert len(props) > 150  # the manifest and every scenario's config, not an empty walk
    missing = [f"{where}.{name}" for where, name, p in props if not str(p.get("description", "")).strip()]
    assert not missing, f"fields without a description: {', '.join(missing)}"
    scenarios = {d["properties"]["scenario"]["const"] for n, d in schema["$defs"].items()
                 if "scenario" in d.get("properties", {}) and "const" in d["properties"]["scenario"]}
    assert {"latency", "throughput", "generation", "memory", "scaling", "training", "perplexity"} <= scenarios


def test_a_description_says_what_the_field_does(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    timing = schema["$defs"]["TimingSpec"]["properties"]
    assert "warm" in timing["warmup"]["description"].lower()
    assert "gpu" in schema["properties"]["sized_for"]["description"].lower()
