"""Command line: parses and dispatches; no logic of its own. User errors print one line, exit 2.

Exit codes: 0 every case ran (ok, oom and skipped are results); 1 a comparison gate failed; 2 a user
error before running (bad option, manifest, path); 3 some cases errored (3 wins over 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from datetime import datetime
from pathlib import Path

from andromeda.errors import AndromedaError

EXIT_CODES = {
    "run": "0 every case ran (oom and skipped are results, not errors); 1 a comparison gate of the manifest's "
           "compare: section failed (a candidate significantly worse than its baseline beyond the noise floor, "
           "or no comparison could "
           "be made); 2 a user error before running (bad option, manifest or path); 3 some cases errored "
           "(3 wins over 1)",
    "train": "0 every case ran (oom and skipped are results, not errors); 2 a user error before running (bad "
             "option, manifest or path); 3 some cases errored",
    "report": "0 the report was written; 2 a user error (no such run, a malformed record, a bad option)",
    "compare": "0 no significant regression (differences within either run's noise floor, or of a case flagged "
               "noisy, are inconclusive); 1 a significant regression beyond the threshold and the noise floor, or "
               "a case that ran in OLD and fails in NEW; 2 a user error (runs that do not match, a bad option)",
    "claims": "0 the claims report was written; 2 a user error",
    "other": "0 done; 2 a user error",
}


def _cmd_run(args: argparse.Namespace) -> int:
    from andromeda.bench.manifest import load_manifest  # torch-free: a bad manifest fails before torch loads

    if args.manifest and args.preset:
        raise AndromedaError("give a manifest file or --preset NAME, not both")
    preset = args.preset or (None if args.manifest else "quick")
    manifest = load_manifest(args.manifest, preset=preset, overrides=args.set)

    try:
        import torch  # noqa: F401  (the run needs it; the manifest above did not)
    except ImportError as e:
        raise AndromedaError(f"andromeda run needs torch, which failed to import ({e}); install it as the "
                             "README says (pip install torch==2.13.0 on a CPU machine)") from None
    from andromeda.bench.compare_run import compare_run
    from andromeda.bench.runner import run
    from andromeda.cli_progress import RichProgress, print_summary
    from andromeda.report import build_report

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
    _print_compared(compared)
    paths = build_report(out, manifest.report.formats)
    html = paths.get("html")
    for c in compared:
        if c.result is not None:
            print(f"comparison: {next(iter(c.paths.get('html', [])), out / 'compare')}")
    print(f"report: {html[0] if html else out}")
    return _exit_code(result, compared)


def _exit_code(result, compared) -> int:
    """3 if a case errored, else 1 if a comparison gate failed, else 0; said on stderr when not 0."""
    from andromeda.bench.compare_run import gate_exit_code

    code = result.exit_code or gate_exit_code(compared)
    if code == result.exit_code and code:
        print(f"exit {code}: {result.errors} record(s) with status error (see the report)", file=sys.stderr)
    elif code:
        print(f"exit {code}: the comparison gate failed", file=sys.stderr)
    return code


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
                                       resume=args.resume))


def _cmd_train(args: argparse.Namespace) -> int:
    from andromeda.train.command import train_command

    return train_command(args.manifest, preset=args.preset, out=args.out, resume=args.resume, device=args.device,
                         overrides=args.set)


def _cmd_report(args: argparse.Namespace) -> int:
    from andromeda.bench.compare_run import compare_run_dir
    from andromeda.report import build_report

    formats = args.formats.split(",") if args.formats else None
    compared = compare_run_dir(args.run_dir)  # a run with a compare: section gets its comparison rebuilt too
    for c in compared:
        if c.result is None:
            print(f"comparison against {c.baseline} not rebuilt: {c.error}", file=sys.stderr)
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


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the flag, the problem, where help is) and exit 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _number(kind, *, low=None, high=None, low_open=False, high_open=False, what=""):
    """An argparse type: a finite number of `kind` within bounds; the message says the range."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
        bad = ((isinstance(v, float) and not math.isfinite(v))
               or (low is not None and (v <= low if low_open else v < low))
               or (high is not None and (v >= high if high_open else v > high)))
        if bad:
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what}")
        return v

    return parse


def _override(text: str) -> str:
    """--set KEY=VALUE: the syntax and the value's YAML are checked here, the key by the manifest."""
    import yaml

    key, sep, raw = text.partition("=")
    shown = text if len(text) <= 60 else text[:57] + "..."
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{shown}': use key.path=value, e.g. timing.budget_s=0.5")
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise argparse.ArgumentTypeError(f"'{shown}': the key is a dotted path of field names and list indices "
                                         "(letters, digits, '_', '-'), e.g. scenarios.0.batch")
    try:
        yaml.safe_load(raw)
    except Exception as e:  # noqa: BLE001 - any parse failure of a user's value (YAMLError, ValueError of a tag)
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise argparse.ArgumentTypeError(f"'{shown}': the value is not valid YAML ({problem})") from None
    return text


def _epilog(command: str) -> str:
    return f"exit codes: {EXIT_CODES[command]}."


def _run_options(p: argparse.ArgumentParser, *, set_example: str | None, out_help: str, resume_help: str,
                 device_help: str = "auto | cpu | cuda | cuda:N | mps (overrides the manifest)") -> None:
    """--set (unless set_example is None), --device, --out and --resume: the options every
    manifest-running command takes."""
    if set_example is not None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=_override,
                       help=f"override a manifest field, e.g. {set_example}")
    p.add_argument("--device", help=device_help)
    p.add_argument("--out", help=out_help)
    p.add_argument("--resume", action="store_true", help=resume_help)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="andromeda", description="The Andromeda model and benchmark suite.",
                epilog="exit codes: 0 ok; 1 a comparison gate failed; 2 a user error before running; "
                       "3 some cases errored. Each command's --help says what they mean for it.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="measure models as a manifest (or a built-in preset) says; write the report",
                       epilog=_epilog("run"))
    r.add_argument("manifest", nargs="?", help="YAML manifest (default: the built-in 'quick' preset)")
    r.add_argument("--preset", help="a built-in manifest: quick, full, paper (see andromeda list)")
    _run_options(r, set_example="--set timing.budget_s=0.5 --set models=[andromeda:small]",
                 out_help="run directory (default: runs/<name>-<time>)",
                 resume_help="finish an interrupted run in --out, skipping finished cases")
    r.set_defaults(func=_cmd_run)

    pr = sub.add_parser("profile", help="run a built-in profile: attention (preset attention-quick or -full)",
                        epilog=_epilog("run"))
    pr.add_argument("target", choices=["attention"])
    size = pr.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CPU, seconds (the default)")
    size.add_argument("--full", action="store_true", help="GPU, bf16, up to 128K tokens")
    _run_options(pr, set_example=None, out_help="run directory (default: runs/<name>-<time>)",
                 resume_help="finish an interrupted run in --out",
                 device_help="auto | cpu | cuda | cuda:N | mps (overrides the preset)")
    pr.set_defaults(func=_cmd_profile)

    t = sub.add_parser("train", help="pre-train as a manifest's training scenarios say (default: train-quick)",
                       epilog=_epilog("train"))
    t.add_argument("manifest", nargs="?", help="YAML manifest with a training scenario (default: --preset train-quick)")
    t.add_argument("--preset", help="a built-in manifest, e.g. train-quick")
    _run_options(t, set_example="--set scenarios.0.steps=200",
                 out_help="run directory (default: runs/<name>-<time>); checkpoints go to <out>/checkpoints",
                 resume_help="continue an interrupted run in --out from its checkpoints")
    t.set_defaults(func=_cmd_train)

    rep = sub.add_parser("report", help="rebuild every artifact of a run from its results.jsonl (torch not needed)",
                         epilog=_epilog("report"))
    rep.add_argument("run_dir")
    rep.add_argument("--formats", help="comma-separated subset of csv,json,png,md,html,tex")
    rep.set_defaults(func=_cmd_report)

    c = sub.add_parser("compare", help="compare two runs case by case (exit 1 on a significant regression), "
                       "or the sources of one run against --baseline", epilog=_epilog("compare"))
    c.add_argument("old", metavar="OLD_RUN", help="baseline run directory (or its results.jsonl)")
    c.add_argument("new", metavar="NEW_RUN", nargs="?", help="candidate run directory (or its results.jsonl)")
    c.add_argument("--metric", action="append", metavar="NAME",
                   help="metric to compare (repeatable; default latency_ms); its name says which way is better")
    c.add_argument("--threshold", type=_number(float, low=1.0, what="a factor >= 1 (1.2 = 1.2x)"), default=1.2,
                   help="factor a significant time/throughput change must reach to count (default 1.2 = 1.2x)")
    c.add_argument("--memory-threshold", type=_number(float, low=0.0, what="a fraction >= 0 (0.05 = 5%%)"),
                   default=0.05,
                   help="relative change a memory metric must exceed to count (default 0.05 = 5%%)")
    c.add_argument("--max-abs-diff", type=_number(float, low=0.0, what="a tolerance >= 0"), default=1e-5,
                   help="tolerance of *abs_diff metrics (default 1e-5)")
    c.add_argument("--alpha", type=_number(float, low=0.0, high=1.0, low_open=True, high_open=True,
                                           what="a significance level between 0 and 1, e.g. 0.05"),
                   default=0.05, help="significance level (default 0.05)")
    c.add_argument("--correction", choices=["holm", "bh", "none"], default="holm",
                   help="multiple-comparison correction across all comparisons (default holm)")
    c.add_argument("--seed", type=_number(int, low=0, high=2**63 - 1, what="an integer from 0 to 2**63-1"),
                   default=0, help="bootstrap seed (default 0)")
    c.add_argument("--baseline", metavar="SOURCE", help="compare the sources of OLD_RUN against this source")
    c.add_argument("--candidate", action="append", metavar="SOURCE",
                   help="with --baseline: a source to compare (repeatable; default every other source)")
    c.add_argument("--allow-mismatch", action="store_true",
                   help="with --baseline: compare models of different shapes (every comparison shows both sides' "
                        "parameters and FLOPs per token and the ratio at equal work)")
    c.add_argument("--out", help="write compare.{md,html,tex,csv,json,png} into this directory")
    c.add_argument("--formats", help="comma-separated subset of md,html,tex,csv,json,png")
    c.set_defaults(func=_cmd_compare)

    cl = sub.add_parser("claims", help="check the spec's claims: physical floors, and measurements on a CUDA GPU",
                        epilog=_epilog("claims"))
    cl.add_argument("claims", nargs="?", metavar="CLAIMS.yml", help="claims file (default: the built-in one)")
    cl.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    cl.add_argument("--peak-tflops", type=_number(float, low=0.0, low_open=True, what="a rate > 0 in TFLOP/s"),
                    help="peak matmul rate to use instead of measuring / the table")
    cl.add_argument("--max-preset", help="largest model preset to build and measure (e.g. 1b)")
    cl.add_argument("--no-measure", action="store_true", help="floors only, even on a GPU")
    cl.add_argument("--out", help="write claims.md and claims.json here (default runs/claims-<time>)")
    cl.set_defaults(func=_cmd_claims)

    sub.add_parser("list", help="presets, scenarios, model sources and attention backends",
                   epilog=_epilog("other")).set_defaults(func=_cmd_list)
    sub.add_parser("schema", help="print the manifest JSON Schema (for editor completion)",
                   epilog=_epilog("other")).set_defaults(func=_cmd_schema)

    d = sub.add_parser("demo", help="parameter counts of every preset, and a short generation", epilog=_epilog("other"))
    d.add_argument("--model", default="tiny", help="model preset (default: tiny)")
    d.add_argument("--prompt", default="Andromeda is")
    d.add_argument("--tokens", type=_number(int, low=1, high=100_000, what="a count from 1 to 100000"), default=32)
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
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
