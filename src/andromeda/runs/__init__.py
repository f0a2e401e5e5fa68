"""The run machinery: a manifest (manifest.py, with its launcher: section in launcher.py; built-in ones in presets/)
planned into cases (plan.py), run case by case into results.jsonl (runner.py; cases.py, progress.py, context.py:
what a scenario gets), in this process or across processes through torchrun (launch.py, worker.py); library
output goes to the run's log (run_log.py)."""
