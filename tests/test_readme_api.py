"""The README's Python API example runs as written, in a fresh directory, and does what its comments say."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    section = README.read_text(encoding="utf-8").split("## The suite from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_api_example(), str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    for run in ("api-old", "api-new"):
        assert (tmp_path / "runs" / run / "results.jsonl").is_file()
        assert (tmp_path / "runs" / run / "report.json").is_file() and (tmp_path / "runs" / run / "csv").is_dir()
        assert (tmp_path / "runs" / run / "compare" / "compare.json").is_file()
    assert "runs/api-new/results.jsonl" in out and "metrics.latency_ms" in out
    assert "verdict vs andromeda:tiny: andromeda:tiny?attn_backend=eager" in out
    assert re.search(r"^result: (PASS 0|FAIL .* 1)$", out, re.M)
