"""Runs a file of interpreter cases in a child pytest with TRITON_INTERPRET=1 (Triton decides at import
whether @triton.jit interprets, so the cases cannot run in this process), and what those cases share. Not
collected: no test_ prefix."""

import os
import subprocess
import sys
from pathlib import Path


def run_interpreter_cases(name: str, passed: int, timeout: int = 600) -> None:
    """Runs tests/model/`name` under the interpreter; every case must pass, `passed` of them."""
    child = Path(__file__).with_name(name)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(child)],
                       env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert f"{passed} passed" in r.stdout, r.stdout[-2000:]


class KeepGraphs:
    """A torch.compile backend that keeps dynamo's graphs and runs them through aot_eager (the interpreter cases'
    check that a custom op compiles as one node, without a graph break)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        import torch

        self.graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)
