"""Command line: parses and dispatches; no logic of its own. User errors print one line, exit 2."""

from __future__ import annotations

import argparse
import sys

from andromeda.errors import AndromedaError


def _cmd_demo(args: argparse.Namespace) -> int:
    from andromeda.demo import demo

    demo(args.model, args.prompt, args.tokens, args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="andromeda", description="The Andromeda model and benchmark suite.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="build a preset, report its parameter count and generate a few tokens")
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
