"""`andromeda train`: run a manifest's training scenarios through the normal runner, with
checkpoints under <out>/checkpoints, then write the report. The CLI only parses and calls this.
Returns the exit code: 0, or 3 when a case errored (2, user errors, come as AndromedaError)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from andromeda.errors import ConfigError

DEFAULT_PRESET = "train-quick"


def train_command(manifest: str | None = None, *, preset: str | None = None, out: str | None = None,
                  resume: bool = False, device: str | None = None, overrides: list[str] | None = None,
                  force: bool = False, resume_hint=None) -> int:
    """Train, print a line per logged step (step/total, loss, tokens/s, MFU or TFLOP/s, ETA) and, at the end,
    each case's final losses, perplexity and bits per byte against the data's floor where it is known."""
    from andromeda.cli_progress import RichProgress, print_log_note, print_summary, print_training_summary
    from andromeda.records import RecordStore
    from andromeda.report import build_report
    from andromeda.runs.manifest import load_manifest
    from andromeda.runs.runner import RESULTS, run

    if manifest and preset:
        raise ConfigError("give a manifest file or --preset NAME, not both")
    m = load_manifest(manifest, preset=preset or (None if manifest else DEFAULT_PRESET), overrides=overrides)
    if not any(e.scenario == "training" for e in m.scenarios):
        raise ConfigError(f"andromeda train: manifest '{m.name}' has no `scenario: training` entry; "
                          "use andromeda run for other scenarios")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out or m.out or f"runs/{m.name}-{stamp}")
    m = with_checkpoints(m, out_dir / "checkpoints")
    try:
        result = run(m, out_dir, resume=resume, device=device, progress=RichProgress(), force=force,
                     capture_output=True)
    except KeyboardInterrupt:
        again = resume_hint(out_dir) if resume_hint else f"andromeda train --out {out_dir} --resume (with the " \
                                                            "same manifest or preset)"
        print(f"interrupted: finished cases are in {out_dir / 'results.jsonl'}, training state in "
              f"{out_dir / 'checkpoints'}; continue with: {again}", file=sys.stderr)
        return 130
    print_summary(result)
    print_log_note(result)
    print_training_summary(RecordStore(out_dir / RESULTS).read())
    paths = build_report(out_dir, m.report.formats)
    html = paths.get("html")
    print(f"report: {html[0] if html else out_dir}")
    if result.exit_code:  # 3: some case errored (oom and skipped are results)
        print(f"exit {result.exit_code}: {result.errors} record(s) with status error (see the report)",
              file=sys.stderr)
    return result.exit_code


def with_checkpoints(manifest, directory: Path):
    """The manifest with checkpoint_dir set on every training entry that has none."""
    entries = [e.model_copy(update={"checkpoint_dir": str(directory)})
               if e.scenario == "training" and e.checkpoint_dir is None else e for e in manifest.scenarios]
    return manifest.model_copy(update={"scenarios": entries})


__all__ = ["train_command", "with_checkpoints", "DEFAULT_PRESET"]
