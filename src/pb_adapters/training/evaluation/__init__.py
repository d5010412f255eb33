"""Scoring tasks on datasets with ``evaluate`` metric modules that ship in the package.

Typical use::

    from pb_adapters.training.evaluation import evaluate_adapter, write_evaluation

    result = evaluate_adapter("outputs/flowers", "path/to/flowers", split="test")
    print(result.metrics())        # {"accuracy": ..., "top5_accuracy": ..., "macro_f1": ...}
    result.save("eval-flowers")    # evaluation.json and confusion_matrix.png
    write_evaluation("outputs/flowers", result)  # into the card's model-index

The same from the command line: ``pb-adapters evaluate outputs/flowers --dataset path/to/flowers
--output-dir eval-flowers --write-card``. The metric scripts (accuracy, top-k accuracy, per-class
F1, confusion matrix) load with ``evaluate.load`` from the installed package, never from the Hub.
"""

from pb_adapters.training.evaluation.modules import METRIC_NAMES, load_metric, metric_path
from pb_adapters.training.evaluation.records import evaluation_record, write_evaluation
from pb_adapters.training.evaluation.result import EvaluationResult, plot_confusion_matrix
from pb_adapters.training.evaluation.runner import (
    SPLITS,
    EvaluationError,
    evaluate_adapter,
    load_task,
)

__all__ = [
    "METRIC_NAMES",
    "SPLITS",
    "EvaluationError",
    "EvaluationResult",
    "evaluate_adapter",
    "evaluation_record",
    "load_metric",
    "load_task",
    "metric_path",
    "plot_confusion_matrix",
    "write_evaluation",
]
