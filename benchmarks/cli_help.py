#!/usr/bin/env python
"""How fast each command answers ``--help`` (goal: under 1 s), and what ``import cellrcnn.cli`` costs.

Each command runs in a fresh process, ``--repeats`` times; the median wall time is
reported. torch and torchvision must not load for ``--help``: the package's names
load on first use and each command imports its heavy parts after the arguments
are checked.

    .venv/bin/python benchmarks/cli_help.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("finetune", "predict", "evaluate", "check-data")


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    loaded = subprocess.run([sys.executable, "-c", "import sys, cellrcnn.cli; print('torch' in sys.modules)"],
                            check=True, capture_output=True, text=True).stdout.strip()
    print(f"torch loaded by `import cellrcnn.cli`: {loaded}")
    rows = [("python -c pass (start-up alone)", [sys.executable, "-c", "pass"]),
            ("import cellrcnn.cli", [sys.executable, "-c", "import cellrcnn.cli"])]
    rows += [(f"cellrcnn-{c} --help", [str(bin_dir / f"cellrcnn-{c}"), "--help"]) for c in COMMANDS]
    for name, command in rows:
        median = statistics.median(timed(command) for _ in range(args.repeats))
        goal = "" if not name.endswith("--help") else f"  (goal < 1 s: {'meets' if median < 1 else 'misses'})"
        print(f"{name:40s} {median:6.2f} s{goal}")


if __name__ == "__main__":
    main()
