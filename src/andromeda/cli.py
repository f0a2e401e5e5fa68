"""Command line: parses and dispatches; no logic of its own. User errors print one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from andromeda.errors import AndromedaError


def _cmd_run(args: argparse.Namespace) -> int:
    from andromeda.bench.manifest import load_manifest
    from andromeda.bench.runner import run
    from andromeda.cli_progress import RichProgress, print_summary
    from andromeda.report import build_report

    if args.manifest and args.preset:
        raise AndromedaError("give a manifest file or --preset NAME, not both")
    preset = args.preset or (None if args.manifest else "quick")
    manifest = load_manifest(args.manifest, preset=preset, overrides=args.set)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or manifest.out or f"runs/{manifest.name}-{stamp}")
    progress = RichProgress()
    try:
        result = run(manifest, out, resume=args.resume, device=args.device, progress=progress)
    except KeyboardInterrupt:
        print(f"interrupted: finished cases are kept in {out / 'results.jsonl'}; "
              f"finish with: andromeda run ... --out {out} --resume", file=sys.stderr)
        return 130
    print_summary(result)
    paths = build_report(out, manifest.report.formats)
    html = paths.get("html")
    print(f"report: {html[0] if html else out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from andromeda.report import build_report

    formats = args.formats.split(",") if args.formats else None
    paths = build_report(Path(args.run_dir), formats) if formats else build_report(Path(args.run_dir))
    for kind, files in paths.items():
        for f in files:
            print(f"{kind:5s} {f}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from andromeda.bench import scenarios, sources
    from andromeda.bench.manifest import preset_names
    from andromeda.model import PRESETS, backends

    console = Console()
    t = Table(title="andromeda list")
    t.add_column("kind")
    t.add_column("name")
    t.add_column("notes")
    for name in preset_names():
        t.add_row("run preset", name, "andromeda run --preset " + name)
    for name in scenarios.names():
        cls = scenarios.get(name).Config
        t.add_row("scenario", name, "sweeps: " + ", ".join(cls.SWEEP))
    for name in PRESETS:
        t.add_row("model preset", f"andromeda:{name}", "")
    for pattern, note in sources.describe().items():
        t.add_row("model source", pattern, note)
    for name in backends.names():
        t.add_row("attention backend", name, "")
    console.print(t)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from andromeda.bench.manifest import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from andromeda.demo import demo

    demo(args.model, args.prompt, args.tokens, args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="andromeda", description="The Andromeda model and benchmark suite.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="measure models as a manifest (or a built-in preset) says; write the report")
    r.add_argument("manifest", nargs="?", help="YAML manifest (default: the built-in 'quick' preset)")
    r.add_argument("--preset", help="a built-in manifest: quick, full, paper (see andromeda list)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a manifest field, e.g. --set timing.budget_s=0.5 --set models=[andromeda:small]")
    r.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (overrides the manifest)")
    r.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    r.add_argument("--resume", action="store_true", help="finish an interrupted run in --out, skipping finished cases")
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="rebuild every artifact of a run from its results.jsonl")
    rep.add_argument("run_dir")
    rep.add_argument("--formats", help="comma-separated subset of csv,json,png,md,html,tex")
    rep.set_defaults(func=_cmd_report)

    sub.add_parser("list", help="presets, scenarios, model sources and attention backends").set_defaults(func=_cmd_list)
    sub.add_parser("schema", help="print the manifest JSON Schema (for editor completion)").set_defaults(
        func=_cmd_schema)

    d = sub.add_parser("demo", help="parameter counts of every preset, and a short generation")
    d.add_argument("--model", default="tiny", help="model preset (default: tiny)")
    d.add_argument("--prompt", default="Andromeda is")
    d.add_argument("--tokens", type=int, default=32)
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AndromedaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
