"""Fixtures of the model tests."""

import pytest


@pytest.fixture
def flex_calls(monkeypatch):
    """The query lengths of the calls that really reach torch's flex_attention (backends/flex.py hands some
    calls to SDPA or eager on CPU; a test that names flex asserts flex ran)."""
    from andromeda.model.backends import flex

    real, calls = flex._flex(), []

    def spy(*args, **kwargs):
        calls.append(args[0].shape[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(flex, "_flex", lambda: spy)
    return calls


@pytest.fixture
def tune():
    """tune(TritonTuning(...), ...): these kernel tuning settings for the rest of the test (set_tuning), the ones
    active before it restored after it."""
    from andromeda.model.backends import set_tuning

    replaced = []

    def set_(*settings):
        replaced.append(set_tuning(*settings))

    yield set_
    for before in reversed(replaced):
        set_tuning(*before)
