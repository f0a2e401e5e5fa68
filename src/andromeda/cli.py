"""Command line: parses (cli_parser.py), calls the api (api.py) and prints what it returns; no logic of its own. User
errors print one line, exit 2.

Exit codes: 0 every case ran (ok, oom and skipped are results); 1 a comparison gate failed; 2 a user
error before running (bad option, manifest, path); 3 some cases errored (3 wins over 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

from andromeda.cli_parser import EXIT_CODES, build_parser  # noqa: F401  (EXIT_CODES: the help's text, re-exported)
from andromeda.errors import AndromedaError


def resume_command(command: str, args: argparse.Namespace, out: Path) -> str:
    """The command that finishes an interrupted run: the same manifest or preset, overrides and device."""
    words = ["andromeda", command]
    if getattr(args, "manifest", None):
        words.append(args.manifest)
    elif getattr(args, "preset", None):
        words += ["--preset", args.preset]
    for item in getattr(args, "set", None) or []:
        words += ["--set", item]
    if getattr(args, "device", None):
        words += ["--device", args.device]
    if getattr(args, "force", False):
        words.append("--force")
    return shlex.join([*words, "--out", str(out), "--resume"])


def _cmd_run(args: argparse.Namespace) -> int:
    from andromeda import api  # torch-free: a bad manifest fails before torch loads

    if args.manifest and args.preset:
        raise AndromedaError("give a manifest file or --preset NAME, not both")
    preset = args.preset or (None if args.manifest else "quick")
    manifest = api.load_manifest(args.manifest, preset=preset, overrides=args.set)

    try:
        import torch  # noqa: F401  (the run needs it; the manifest above did not)
    except ImportError as e:
        raise AndromedaError(f"andromeda run needs torch, which failed to import ({e}); install it as the "
                             "README says (pip install torch==2.13.0 on a CPU machine)") from None
    from andromeda.cli_progress import RichProgress, print_log_note, print_summary

    out = api.run_dir(manifest, args.out)
    if args.preset is None and args.manifest is None:
        args.preset = preset
    try:
        done = api.benchmark(manifest, out, resume=args.resume, device=args.device, progress=RichProgress(),
                             force=getattr(args, "force", False), capture_output=True)
    except KeyboardInterrupt:
        print(f"interrupted: finished cases are kept in {out / 'results.jsonl'}; "
              f"finish with: {resume_command('run', args, out)}", file=sys.stderr)
        return 130
    print_summary(done.run)
    print_log_note(done.run)
    _print_compared(done.comparisons)
    html = done.report.get("html")
    for c in done.comparisons:
        if c.result is not None:
            print(f"comparison: {next(iter(c.paths.get('html', [])), out / 'compare')}")
    print(f"report: {html[0] if html else out}")
    if done.exit_code == done.run.exit_code and done.exit_code:
        print(f"exit {done.exit_code}: {done.run.errors} record(s) with status error (see the report)",
              file=sys.stderr)
    elif done.exit_code:
        print(f"exit {done.exit_code}: the comparison gate failed", file=sys.stderr)
    return done.exit_code


def _print_compared(compared) -> None:
    for c in compared:
        if c.result is not None:
            print("\n".join(c.result.summary_lines()))
        else:
            print(f"comparison against {c.baseline} not made: {c.error}", file=sys.stderr)


def _cmd_profile(args: argparse.Namespace) -> int:
    """`andromeda profile attention --full` is `andromeda run --preset attention-full`."""
    preset = f"{args.target}-{'full' if args.full else 'quick'}"
    return _cmd_run(argparse.Namespace(manifest=None, preset=preset, set=[], device=args.device, out=args.out,
                                       resume=args.resume, force=args.force))


def _cmd_train(args: argparse.Namespace) -> int:
    from andromeda.train.command import train_command

    return train_command(args.manifest, preset=args.preset, out=args.out, resume=args.resume, device=args.device,
                         overrides=args.set, force=args.force,
                         resume_hint=lambda out: resume_command("train", args, out))


def _cmd_report(args: argparse.Namespace) -> int:
    from andromeda.api import report

    formats = args.formats.split(",") if args.formats else None
    compared, paths = report(args.run_dir, formats)  # a run with a compare: section gets its comparison rebuilt too
    for c in compared:
        if c.result is None:
            print(f"comparison against {c.baseline} not rebuilt: {c.error}", file=sys.stderr)
    for kind, files in paths.items():
        for f in files:
            print(f"{kind:5s} {f}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from andromeda.api import catalog

    # a pipe has no width: rich would wrap every cell at 80 columns; give it room for one line a row
    console = Console(width=None if sys.stdout.isatty() else 220)
    t = Table(title="andromeda list")
    t.add_column("kind", no_wrap=True)
    t.add_column("name", no_wrap=True)
    t.add_column("notes")
    for kind, name, notes in catalog():
        t.add_row(kind, escape(name), escape(notes))
    console.print(t)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from andromeda.api import manifest_schema

    print(json.dumps(manifest_schema(), indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from andromeda.demo import demo

    demo(args.model, args.prompt, args.tokens, args.device)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from andromeda import api

    thresholds = {"speedup": args.threshold, "memory": args.memory_threshold, "max_abs_diff": args.max_abs_diff}
    result = api.compare(args.old, args.new, baseline=args.baseline, candidates=args.candidate,
                         allow_mismatch=args.allow_mismatch, metric=args.metric or ["latency_ms"],
                         thresholds=thresholds, correction=args.correction, alpha=args.alpha, seed=args.seed,
                         gate=args.gate)
    if args.out:
        paths = api.write_comparison(result, args.out, args.formats.split(",") if args.formats else None)
        for kind, files in paths.items():
            for f in files:
                print(f"{kind:5s} {f}")
    print("\n".join(result.summary_lines()))
    return result.exit_code


def _cmd_claims(args: argparse.Namespace) -> int:
    from andromeda.api import claims

    out = Path(args.out or f"runs/claims-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    result, paths = claims(args.claims, out=out, device=args.device, peak_tflops=args.peak_tflops,
                           max_preset=args.max_preset, measure=not args.no_measure)
    print("\n".join(result.summary_lines()))
    print(f"report: {paths['md'][0]} (and {paths['json'][0].name})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func = globals()[f"_cmd_{args.command}"]  # looked up at call time, so a test can replace one
    try:
        return func(args)
    except AndromedaError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a user's path (--out, a manifest, a run): one line; our own files: a bug, re-raised
        if not _user_path(e):
            raise
        name = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
        print(f"error: {name}: {e.strerror or e}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text else text


def _user_path(e: OSError) -> bool:
    """An OSError about a path outside this package and the Python installation: the user's file."""
    if e.filename is None or not isinstance(e.filename, (str, bytes, os.PathLike)):
        return False
    path = os.path.abspath(os.fsdecode(e.filename))
    ours = [os.path.dirname(os.path.abspath(__file__)), sys.prefix, sys.base_prefix]
    ours = [d.rstrip(os.sep) for d in ours if os.path.dirname(d) != d]  # never the file-system root
    return not any(path == d or path.startswith(d + os.sep) for d in ours)


if __name__ == "__main__":
    sys.exit(main())
