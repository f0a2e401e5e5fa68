"""report.html: one self-contained page (CSS inline, charts as base64 PNG data URIs, no scripts)."""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from andromeda.report.context import ReportData
from andromeda.report.tables import MISSING_NOTE, text_rows

TEMPLATES = Path(__file__).parent / "templates"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(data: ReportData) -> str:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["data_uri"] = data_uri
    env.globals["text_rows"] = text_rows
    return env.get_template("report.html.j2").render(d=data, missing_note=MISSING_NOTE)
