"""Verdicts: comparison statistics (comparison.py: ratio with a bootstrap CI, Welch and Mann-Whitney, Cohen's d,
corrections, the verdict against thresholds), the A/A noise floor (noise.py), equal work (work.py), whole
comparisons of records (regress.py: models of one run against a baseline, or a regression gate between two runs,
whose result is run_comparison.py; per candidate: summary.py), a run's compare: section (compare_spec.py,
compare_run.py) and the spec's claims (claims_file.py, claims.py). Results are plain torch-free data the report
layer reads: comparison.py, run_comparison.py, summary.py."""
