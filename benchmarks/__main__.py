"""Run every benchmark: CPU always, CUDA too when a GPU is visible."""

import importlib
import pkgutil
from pathlib import Path

for module in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
    if module.startswith("bench_"):
        importlib.import_module(f"benchmarks.{module}").main()
