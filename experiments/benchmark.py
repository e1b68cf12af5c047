"""The speed benchmarks, by their former name: `--epoch` runs benchmarks/epoch.py, anything
else benchmarks/throughput.py, with the same flags (benchmarks/README.md)."""

import runpy
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

if __name__ == "__main__":
  args = sys.argv[1:]
  script = "epoch.py" if "--epoch" in args else "throughput.py"
  sys.argv = [str(BENCHMARKS / script)] + [a for a in args if a != "--epoch"]
  sys.path.insert(0, str(BENCHMARKS))
  runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
