"""The command line's grammar: every subcommand, its arguments (each with help), an example and its exit codes.

cli.py dispatches on the parsed `command`; nothing here runs anything.
"""

from __future__ import annotations

import argparse
import math
import re
import textwrap

from andromeda.version import __version__

EXIT_CODES = {
    "run": "0 every case ran (oom and skipped are results, not errors); 1 a comparison gate failed: a compare: "
           "entry with gate: true found a candidate significantly worse than its baseline beyond the noise floor, "
           "or could not be made (a comparison of models without gate: true reports faster / slower and never "
           "fails the run); 2 a user error before running (bad option, manifest or path, or a GPU-sized preset "
           "on a CPU without --force); 3 some cases errored (3 wins over 1)",
    "train": "0 every case ran (oom and skipped are results, not errors); 2 a user error before running (bad "
             "option, manifest or path); 3 some cases errored",
    "report": "0 the report was written; 2 a user error (no such run, a malformed record, a bad option)",
    "compare": "0 no significant regression (differences within either run's noise floor, or of a case flagged "
               "noisy, are inconclusive), and always for a comparison of models (--baseline) without --gate; "
               "1 a significant regression beyond the threshold and the noise floor, or a case that ran in OLD "
               "and fails in NEW; 2 a user error (runs that do not match, a bad option)",
    "claims": "0 the claims report was written; 2 a user error",
    "other": "0 done; 2 a user error",
}

EXAMPLES = {
    "run": ["andromeda run --preset quick",
            "andromeda run my.yml --set timing.budget_s=0.5 --out runs/mine",
            "andromeda run my.yml --out runs/mine --resume      # finish an interrupted run"],
    "profile": ["andromeda profile attention", "andromeda profile attention --full --device cuda"],
    "train": ["andromeda train --preset train-quick", "andromeda train --set scenarios.0.steps=200 --out runs/t"],
    "report": ["andromeda report runs/quick-20261206-120000",
               "andromeda report runs/mine --formats html,md"],
    "compare": ["andromeda compare runs/old runs/new              # regression gate: exit 1 on a regression",
                "andromeda compare runs/mine --baseline andromeda:small   # models of one run: faster / slower"],
    "claims": ["andromeda claims --no-measure", "andromeda claims --device cuda --max-preset 1b"],
    "list": ["andromeda list", "andromeda list | grep preset"],
    "schema": ["andromeda schema > manifest.schema.json"],
    "demo": ["andromeda demo", "andromeda demo --model small --prompt 'Once upon a time' --tokens 64"],
}


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the flag, the problem, where help is) and exit 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def number(kind, *, low=None, high=None, low_open=False, high_open=False, what=""):
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


def override(text: str) -> str:
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


def epilog(command: str, codes: str | None = None) -> str:
    """The examples, then what the exit codes mean for this command (wrapped; newlines kept)."""
    lines = ["examples:", *(f"  {e}" for e in EXAMPLES[command]), ""]
    lines += textwrap.wrap(f"exit codes: {EXIT_CODES[codes or command]}.", 100)
    return "\n".join(lines)


def _sub(sub, name: str, help: str, codes: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog(name, codes),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _run_options(p: argparse.ArgumentParser, *, set_example: str | None, out_help: str, resume_help: str,
                 device_help: str = "auto | cpu | cuda | cuda:N | mps (overrides the manifest)",
                 force: bool = True) -> None:
    """--set (unless set_example is None), --device, --out, --resume and --force: the options every
    manifest-running command takes."""
    if set_example is not None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=override,
                       help=f"override a manifest field, e.g. {set_example}")
    p.add_argument("--device", help=device_help)
    p.add_argument("--out", help=out_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    if force:
        p.add_argument("--force", action="store_true",
                       help="run a preset sized for a GPU on a CPU anyway (it may take hours; without --force "
                            "the command stops and names the preset's CPU counterpart)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="andromeda", description="The Andromeda model and benchmark suite.",
                epilog="exit codes: 0 ok; 1 a comparison gate failed; 2 a user error before running; "
                       "3 some cases errored. Each command's --help says what they mean for it, with examples.")
    p.add_argument("--version", action="version", version=f"andromeda {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = _sub(sub, "run", "measure models as a manifest (or a built-in preset) says; write the report")
    r.add_argument("manifest", nargs="?", help="YAML manifest (default: the built-in 'quick' preset)")
    r.add_argument("--preset", help="a built-in manifest: quick, full, compare, ... (andromeda list shows them all)")
    _run_options(r, set_example="--set timing.budget_s=0.5 --set models=[andromeda:small]",
                 out_help="run directory (default: runs/<name>-<time>)",
                 resume_help="finish an interrupted run in --out, skipping finished cases")

    pr = _sub(sub, "profile", "run a built-in profile: attention (preset attention-quick or -full)", "run")
    pr.add_argument("target", choices=["attention"], help="what to profile: attention (every attention kernel "
                                                          "and sparse pattern: speed, memory, accuracy)")
    size = pr.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CPU, seconds (the default)")
    size.add_argument("--full", action="store_true", help="GPU, bf16, up to 128K tokens")
    _run_options(pr, set_example=None, out_help="run directory (default: runs/<name>-<time>)",
                 resume_help="finish an interrupted run in --out",
                 device_help="auto | cpu | cuda | cuda:N | mps (overrides the preset)")

    t = _sub(sub, "train", "pre-train as a manifest's training scenarios say (default: train-quick)")
    t.add_argument("manifest", nargs="?", help="YAML manifest with a training scenario (default: --preset train-quick)")
    t.add_argument("--preset", help="a built-in manifest, e.g. train-quick")
    _run_options(t, set_example="--set scenarios.0.steps=200",
                 out_help="run directory (default: runs/<name>-<time>); checkpoints go to <out>/checkpoints",
                 resume_help="continue an interrupted run in --out from its checkpoints")

    rep = _sub(sub, "report", "rebuild every artifact of a run from its results.jsonl (torch not needed)")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (the --out of andromeda run), holding "
                                                        "results.jsonl; the artifacts are written beside it")
    rep.add_argument("--formats", help="comma-separated subset of csv,json,png,md,html,tex (default: all)")

    c = _sub(sub, "compare", "compare two runs case by case (a regression gate: exit 1 on a significant "
                             "regression), or the models of one run against --baseline (faster / slower)")
    c.add_argument("old", metavar="OLD_RUN", help="baseline run directory (or its results.jsonl)")
    c.add_argument("new", metavar="NEW_RUN", nargs="?", help="candidate run directory (or its results.jsonl)")
    c.add_argument("--metric", action="append", metavar="NAME",
                   help="metric to compare (repeatable; default latency_ms); its name says which way is better")
    c.add_argument("--threshold", type=number(float, low=1.0, what="a factor >= 1 (1.2 = 1.2x)"), default=1.2,
                   help="factor a significant time/throughput change must reach to count (default 1.2 = 1.2x)")
    c.add_argument("--memory-threshold", type=number(float, low=0.0, what="a fraction >= 0 (0.05 = 5%%)"),
                   default=0.05,
                   help="relative change a memory metric must exceed to count (default 0.05 = 5%%)")
    c.add_argument("--max-abs-diff", type=number(float, low=0.0, what="a tolerance >= 0"), default=1e-5,
                   help="tolerance of *abs_diff metrics (default 1e-5)")
    c.add_argument("--alpha", type=number(float, low=0.0, high=1.0, low_open=True, high_open=True,
                                          what="a significance level between 0 and 1, e.g. 0.05"),
                   default=0.05, help="significance level (default 0.05)")
    c.add_argument("--correction", choices=["holm", "bh", "none"], default="holm",
                   help="multiple-comparison correction across all comparisons (default holm)")
    c.add_argument("--seed", type=number(int, low=0, high=2**63 - 1, what="an integer from 0 to 2**63-1"),
                   default=0, help="bootstrap seed (default 0)")
    c.add_argument("--baseline", metavar="SOURCE", help="compare the models (sources) of OLD_RUN against this one")
    c.add_argument("--candidate", action="append", metavar="SOURCE",
                   help="with --baseline: a source to compare (repeatable; default every other source)")
    c.add_argument("--allow-mismatch", action="store_true",
                   help="with --baseline: compare models of different shapes (every comparison shows both sides' "
                        "parameters and FLOPs per token and the ratio at equal work)")
    c.add_argument("--gate", action="store_true",
                   help="with --baseline: treat the comparison as a gate (exit 1 when a candidate is significantly "
                        "worse); two runs are always a gate")
    c.add_argument("--out", help="write compare.{md,html,tex,csv,json,png} into this directory")
    c.add_argument("--formats", help="comma-separated subset of md,html,tex,csv,json,png")

    cl = _sub(sub, "claims", "check the spec's claims: physical floors, and measurements on a CUDA GPU")
    cl.add_argument("claims", nargs="?", metavar="CLAIMS.yml", help="claims file (default: the built-in one)")
    cl.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    cl.add_argument("--peak-tflops", type=number(float, low=0.0, low_open=True, what="a rate > 0 in TFLOP/s"),
                    help="peak matmul rate to use instead of measuring / the table")
    cl.add_argument("--max-preset", help="largest model preset to build and measure (e.g. 1b)")
    cl.add_argument("--no-measure", action="store_true", help="floors only, even on a GPU")
    cl.add_argument("--out", help="write claims.md and claims.json here (default runs/claims-<time>)")

    _sub(sub, "list", "presets (with the device each is sized for), scenarios, model sources and attention "
                      "backends", "other")
    _sub(sub, "schema", "print the manifest JSON Schema, every field described (for editor completion)", "other")

    d = _sub(sub, "demo", "parameter counts of every preset, and a short generation", "other")
    d.add_argument("--model", default="tiny", help="model preset (default: tiny)")
    d.add_argument("--prompt", default="Andromeda is", help="text the generation continues (default: 'Andromeda is'; "
                                                            "byte-level tokens, random weights: expect noise)")
    d.add_argument("--tokens", type=number(int, low=1, high=100_000, what="a count from 1 to 100000"), default=32,
                   help="tokens to generate (default 32)")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    return p


__all__ = ["build_parser", "EXIT_CODES", "EXAMPLES", "number", "override", "epilog"]
