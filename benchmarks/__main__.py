"""Run the benchmarks and rewrite ``docs/benchmarks.md``.

python -m benchmarks            # every benchmark
python -m benchmarks --quick    # fewer repeats and task counts
python -m benchmarks --only hub # one part: accuracy, training, determinism, multitask, hub, storage
"""

from __future__ import annotations

import argparse
import importlib

from benchmarks.report import render

PARTS = ["accuracy", "training", "determinism", "multitask", "hub", "storage"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, for a check in minutes"
    )
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    args = parser.parse_args(argv)
    for part in args.only or PARTS:
        importlib.import_module(f"benchmarks.{part}").run(quick=args.quick)
    print(f"wrote {render()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
