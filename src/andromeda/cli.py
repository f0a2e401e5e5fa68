"""Command line: parses and dispatches; no logic of its own. User errors print one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from andromeda.errors import AndromedaError


def _cmd_run(args: argparse.Namespace) -> int:
    from andromeda.bench.compare_run import compare_run
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
    compared = compare_run(out, manifest)
    for c in compared:
        if c.result is not None:
            print("\n".join(c.result.summary_lines()))
        else:
            print(f"comparison against {c.baseline} not made: {c.error}", file=sys.stderr)
    paths = build_report(out, manifest.report.formats)
    html = paths.get("html")
    for c in compared:
        if c.result is not None:
            print(f"comparison: {next(iter(c.paths.get('html', [])), out / 'compare')}")
    print(f"report: {html[0] if html else out}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    """`andromeda profile attention --full` is `andromeda run --preset attention-full`."""
    preset = f"{args.target}-{'full' if args.full else 'quick'}"
    return _cmd_run(argparse.Namespace(manifest=None, preset=preset, set=[], device=args.device, out=args.out,
                                       resume=args.resume))


def _cmd_train(args: argparse.Namespace) -> int:
    from andromeda.train.command import train_command

    return train_command(args.manifest, preset=args.preset, out=args.out, resume=args.resume, device=args.device,
                         overrides=args.set)


def _cmd_report(args: argparse.Namespace) -> int:
    from andromeda.report import build_report

    formats = args.formats.split(",") if args.formats else None
    manifest_file = Path(args.run_dir) / "manifest.yml"
    if manifest_file.is_file():  # a run with a compare: section gets its comparison rebuilt too
        from andromeda.bench.compare_run import compare_run
        from andromeda.bench.manifest import load_manifest

        compare_run(args.run_dir, load_manifest(manifest_file))
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
        fields = cls.model_fields
        t.add_row("scenario", name, "sweeps: " + ", ".join(fields[k].alias or k if k in fields else k
                                                            for k in cls.SWEEP))
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from andromeda.bench.compare import Thresholds
    from andromeda.bench.regress import compare
    from andromeda.report.compare_report import write_compare_report

    thresholds = Thresholds(speedup=args.threshold, memory=args.memory_threshold, max_abs_diff=args.max_abs_diff)
    result = compare(args.old, args.new, baseline=args.baseline, candidates=args.candidate,
                     allow_mismatch=args.allow_mismatch, metric=args.metric or ["latency_ms"], thresholds=thresholds,
                     correction=args.correction, alpha=args.alpha, seed=args.seed)
    if args.out:
        formats = args.formats.split(",") if args.formats else None
        paths = write_compare_report(result, args.out, *([formats] if formats else []))
        for kind, files in paths.items():
            for f in files:
                print(f"{kind:5s} {f}")
    print("\n".join(result.summary_lines()))
    return result.exit_code


def _cmd_claims(args: argparse.Namespace) -> int:
    from andromeda.bench.claims import check_claims
    from andromeda.report.compare_report import write_claims_report

    result = check_claims(args.claims, device=args.device, peak_tflops=args.peak_tflops,
                          max_preset=args.max_preset, measure=not args.no_measure)
    out = Path(args.out or f"runs/claims-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    paths = write_claims_report(result.to_dict(), out)
    print("\n".join(result.summary_lines()))
    print(f"report: {paths['md'][0]} (and {paths['json'][0].name})")
    return 0


def _run_options(p: argparse.ArgumentParser, *, set_example: str | None, out_help: str, resume_help: str,
                 device_help: str = "auto | cpu | cuda | cuda:N | mps (overrides the manifest)") -> None:
    """--set (unless set_example is None), --device, --out and --resume: the options every
    manifest-running command takes."""
    if set_example is not None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a manifest field, e.g. {set_example}")
    p.add_argument("--device", help=device_help)
    p.add_argument("--out", help=out_help)
    p.add_argument("--resume", action="store_true", help=resume_help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="andromeda", description="The Andromeda model and benchmark suite.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="measure models as a manifest (or a built-in preset) says; write the report")
    r.add_argument("manifest", nargs="?", help="YAML manifest (default: the built-in 'quick' preset)")
    r.add_argument("--preset", help="a built-in manifest: quick, full, paper (see andromeda list)")
    _run_options(r, set_example="--set timing.budget_s=0.5 --set models=[andromeda:small]",
                 out_help="run directory (default: runs/<name>-<time>)",
                 resume_help="finish an interrupted run in --out, skipping finished cases")
    r.set_defaults(func=_cmd_run)

    pr = sub.add_parser("profile", help="run a built-in profile: attention (preset attention-quick or -full)")
    pr.add_argument("target", choices=["attention"])
    size = pr.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CPU, seconds (the default)")
    size.add_argument("--full", action="store_true", help="GPU, bf16, up to 128K tokens")
    _run_options(pr, set_example=None, out_help="run directory (default: runs/<name>-<time>)",
                 resume_help="finish an interrupted run in --out",
                 device_help="auto | cpu | cuda | cuda:N | mps (overrides the preset)")
    pr.set_defaults(func=_cmd_profile)

    t = sub.add_parser("train", help="pre-train as a manifest's training scenarios say (default: train-quick)")
    t.add_argument("manifest", nargs="?", help="YAML manifest with a training scenario (default: --preset train-quick)")
    t.add_argument("--preset", help="a built-in manifest, e.g. train-quick")
    _run_options(t, set_example="--set scenarios.0.steps=200",
                 out_help="run directory (default: runs/<name>-<time>); checkpoints go to <out>/checkpoints",
                 resume_help="continue an interrupted run in --out from its checkpoints")
    t.set_defaults(func=_cmd_train)

    rep = sub.add_parser("report", help="rebuild every artifact of a run from its results.jsonl")
    rep.add_argument("run_dir")
    rep.add_argument("--formats", help="comma-separated subset of csv,json,png,md,html,tex")
    rep.set_defaults(func=_cmd_report)

    c = sub.add_parser("compare", help="compare two runs case by case (exit 1 on a significant regression), "
                       "or the sources of one run against --baseline")
    c.add_argument("old", metavar="OLD_RUN", help="baseline run directory (or its results.jsonl)")
    c.add_argument("new", metavar="NEW_RUN", nargs="?", help="candidate run directory (or its results.jsonl)")
    c.add_argument("--metric", action="append", metavar="NAME",
                   help="metric to compare (repeatable; default latency_ms); its name says which way is better")
    c.add_argument("--threshold", type=float, default=1.2,
                   help="factor a significant time/throughput change must reach to count (default 1.2 = 1.2x)")
    c.add_argument("--memory-threshold", type=float, default=0.05,
                   help="relative change a memory metric must exceed to count (default 0.05 = 5%%)")
    c.add_argument("--max-abs-diff", type=float, default=1e-5, help="tolerance of *abs_diff metrics (default 1e-5)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    c.add_argument("--correction", choices=["holm", "bh", "none"], default="holm",
                   help="multiple-comparison correction across all comparisons (default holm)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    c.add_argument("--baseline", metavar="SOURCE", help="compare the sources of OLD_RUN against this source")
    c.add_argument("--candidate", action="append", metavar="SOURCE",
                   help="with --baseline: a source to compare (repeatable; default every other source)")
    c.add_argument("--allow-mismatch", action="store_true",
                   help="with --baseline: compare models of different shapes (parameter and FLOP ratios shown)")
    c.add_argument("--out", help="write compare.{md,html,tex,csv,json,png} into this directory")
    c.add_argument("--formats", help="comma-separated subset of md,html,tex,csv,json,png")
    c.set_defaults(func=_cmd_compare)

    cl = sub.add_parser("claims", help="check the spec's claims: physical floors, and measurements on a CUDA GPU")
    cl.add_argument("claims", nargs="?", metavar="CLAIMS.yml", help="claims file (default: the built-in one)")
    cl.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    cl.add_argument("--peak-tflops", type=float, help="peak matmul rate to use instead of measuring / the table")
    cl.add_argument("--max-preset", help="largest model preset to build and measure (e.g. 1b)")
    cl.add_argument("--no-measure", action="store_true", help="floors only, even on a GPU")
    cl.add_argument("--out", help="write claims.md and claims.json here (default runs/claims-<time>)")
    cl.set_defaults(func=_cmd_claims)

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
