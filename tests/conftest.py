import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _quiet_machine(request, monkeypatch):
    """Runs inside tests see a quiet machine: no case is flagged noisy for the load other processes put on
    the CPU (measure/host_load.py), so a test that plants samples to make a gate fail or pass gets the same verdict
    on an idle and on a busy machine. Tests of the flagging itself are marked real_load."""
    if request.node.get_closest_marker("real_load"):
        return
    from andromeda.runs import runner

    monkeypatch.setattr(runner, "noisy_reason", lambda load: None)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    if not torch.cuda.is_available():
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


def pytest_configure(config):
    """Under pytest-xdist (`-n auto`, the README's command), a module's tests go to one worker, so a module-scoped
    fixture runs once: the quick preset's run behind tests/runs/test_runner.py takes ~80 s on CI's machine, and
    split over two workers it ran twice. Plain load scheduling becomes loadscope; other --dist modes are kept."""
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadscope"
