"""iopfd benchmarks: `python -m bench.run [--quick]` writes bench/results/latest.{json,md}."""
