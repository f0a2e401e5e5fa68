#!/usr/bin/env bash
# Wheels, into .whl/ (ignored by git), of the dependencies a GPU machine without internet may lack: its Python
# (3.12, x86-64) comes with torch, triton and transformers but, on the image seen on 2026-12-06, not pydantic,
# which the suite's manifests, records and tests/conftest.py import. Run here (where pip reaches a registry);
# on the GPU machine, before the tests or benchmarks:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
# Extra package names may be given as arguments (e.g. rich pyyaml) when the machine lacks them too.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl pydantic "$@"
ls .whl
