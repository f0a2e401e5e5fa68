"""benchmarks/train_variants.py: the tuned-compile rows hand their inductor options to compile_fx for the
block's graphs (a stand-in compile_fx records them; the real one is the GPU run's), and train_speed uses them
only with the inductor backend."""


import torch
from bench_scripts import load


def test_inductor_backend_passes_its_options_and_runs_the_graph(monkeypatch):
    import torch._inductor.compile_fx as cfx

    tv = load("train_variants")
    seen = []

    def fake_compile_fx(gm, example_inputs, config_patches=None):
        seen.append(config_patches)
        return gm.forward

    monkeypatch.setattr(cfx, "compile_fx", fake_compile_fx)
    monkeypatch.setattr(tv, "_BACKENDS", {})
    backend = tv.inductor_backend({"coordinate_descent_tuning": True})
    assert backend is tv.inductor_backend({"coordinate_descent_tuning": True})
    assert backend is not tv.inductor_backend({"max_autotune_gemm": True})
    torch._dynamo.reset()
    x = torch.randn(8)
    y = torch.compile(lambda t: torch.nn.functional.gelu(t) * 2, backend=backend)(x)
    torch.testing.assert_close(y, torch.nn.functional.gelu(x) * 2)
    assert seen == [{"coordinate_descent_tuning": True}]


def test_tuned_rows_are_the_fast_step_with_inductor_options():
    tv = load("train_variants")
    for name, option in (("+gemm-autotune", "max_autotune_gemm"), ("+coord-descent", "coordinate_descent_tuning")):
        v = tv.BY_NAME[name]
        assert v.train == tv.FAST and v.extra["inductor"] == {option: True}
        assert hasattr(torch._inductor.config, option)  # the option exists in this torch
        assert name in tv.THEN
