"""The report layer: records (results.jsonl) -> CSV, JSON, PNG, Markdown, HTML and LaTeX artifacts.

Never imports torch, directly or indirectly: a report can be built later, on another machine,
from the JSONL alone. Entry point: `build_report(run_dir, formats)`.
"""

from andromeda.report.build import FORMATS, build_report

__all__ = ["FORMATS", "build_report"]
