"""The run's `threads` setting: validated in the manifest, resolved to the physical cores, fixed for a run."""

import pytest

from andromeda.bench.manifest import validate
from andromeda.errors import ConfigError

BASE = {"models": ["andromeda:tiny"], "scenarios": [{"scenario": "latency"}]}


def test_threads_is_auto_or_a_bounded_integer():
    assert validate(BASE).threads == "auto"
    assert validate({**BASE, "threads": 1}).threads == 1
    assert validate({**BASE, "threads": 4096}).threads == 4096
    for bad in (0, -1, 4097, True, 2.0, "4", "Auto", None, [2]):
        with pytest.raises(ConfigError) as e:
            validate({**BASE, "threads": bad})
        msg = str(e.value)
        assert msg.startswith("manifest: threads: must be auto") and "1 to 4096" in msg and "\n" not in msg
