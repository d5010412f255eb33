"""The recipe search behind the defaults: a small grid scored on the VALIDATION split.

Each candidate (a method and its options) trains with the accuracy benchmark's budget
(:data:`benchmarks.accuracy.BUDGETS`) on the tasks and seeds it lists; the result file keeps
every run's validation accuracy (the choice), and its test accuracy only for the record. The
accuracy benchmark's rows and the methods' defaults come from the best candidates here.

python -m benchmarks.recipes [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.accuracy import BUDGETS, Variant, summarize, task_sources, train_once
from benchmarks.common import RESULTS_DIR, write_result

RESULT_NAME = "recipes-cpu"

#: (candidate, tasks, seeds). Piggyback's mask learning rate sets how many Adam steps a score
#: needs to cross the threshold ((mask_init - threshold) / lr: 50 at 1e-4, 17 at 3e-4).
GRID: list[tuple[Variant, tuple[str, ...], int]] = [
    *[
        (Variant(f"piggyback lr {lr}", "piggyback", ("--mask-lr", lr)), ("mnist-5k",), 2)
        for lr in ("1e-4", "2e-4", "3e-4", "5e-4")
    ],
    *[
        (Variant(f"piggyback lr {lr} init {init}", "piggyback", ("--mask-lr", lr, "--mask-init", init)), ("mnist-5k",), 2)
        for lr, init in (("3e-4", "2e-2"), ("1e-3", "5e-2"))
    ],
    (
        Variant("piggyback lr 3e-4 ternary", "piggyback", ("--mask-lr", "3e-4", "--mask-type", "ternary")),
        ("mnist-5k",),
        1,
    ),
    (
        Variant("piggyback lr 2e-4 no depthwise", "piggyback", ("--mask-lr", "2e-4", "--exclude-modules", ".*conv_dw")),
        ("mnist-5k",),
        2,
    ),
    (
        Variant("piggyback lr 3e-4 no depthwise", "piggyback", ("--mask-lr", "3e-4", "--exclude-modules", ".*conv_dw")),
        ("mnist-5k",),
        2,
    ),
    *[
        (Variant(f"ksm lr {lr}", "ksm", ("--mask-lr", lr)), ("mnist-5k",), 1)
        for lr in ("1e-4", "1e-3")
    ],
    (Variant("lora r=4", "lora", rank=4), ("mnist-5k",), 2),
    *[
        (Variant(f"packnet prune {r}", "packnet", ("--prune-ratio", r)), ("mnist-5k", "rotated-digits"), 1)
        for r in ("0.25", "0.5")
    ],
]  # fmt: skip


def run(quick: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    """Train every grid candidate; write ``recipes-cpu.json``."""
    budget = BUDGETS[quick]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pb-bench-recipes-") as tmp:
        sources = task_sources(Path(tmp), quick)
        for variant, tasks, seeds in GRID:
            if only and variant.name not in only:
                continue
            for task in tasks:
                runs = []
                for seed in range(seeds):
                    out = Path(tmp) / "runs" / f"{len(rows)}-{task}-{seed}"
                    # a candidate's own options come last and win over the task's defaults
                    summary = train_once(variant, task, sources[task], seed, budget, out)
                    runs.append(summary)
                    print(
                        f"{task:>15} {variant.name:>28} seed {seed}: val "
                        f"{summary.get('validation_accuracy') or 0:.2%} test "
                        f"{summary['test_accuracy']:.2%} zeros "
                        f"{summary.get('mask_zeros_fraction', 0):.2%} "
                        f"({summary['train_seconds']:.0f}s)",
                        flush=True,
                    )
                rows.append(summarize(task, variant, runs, backbone_weights=1))
    payload = {"budget": budget, "quick": quick, "rows": _merged(rows, quick) if only else rows}
    write_result(RESULT_NAME + ("-quick" if quick else ""), payload)
    return payload


def _merged(rows: list[dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    """``rows`` over those of the existing result file (a run of some candidates only)."""
    path = RESULTS_DIR / f"{RESULT_NAME}{'-quick' if quick else ''}.json"
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    new = {(r["method"], r["task"]) for r in rows}
    order = [v.name for v, _, _ in GRID]
    merged = [r for r in old if (r["method"], r["task"]) not in new] + rows
    return sorted(merged, key=lambda r: order.index(r["method"]) if r["method"] in order else 99)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.recipes [--quick] [--only NAME...]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny budget, a smoke test")
    parser.add_argument("--only", nargs="+", help="only these candidates")
    args = parser.parse_args(argv)
    run(quick=args.quick, only=args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
