"""Per-class F1 (with precision, recall and support) and their macro average."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
For each class c: precision = TP / (TP + FP), recall = TP / (TP + FN) and
F1 = 2 TP / (2 TP + FP + FN), where TP counts samples of class c predicted as c, FP samples of
other classes predicted as c and FN samples of class c predicted as another class. A ratio whose
denominator is 0 is undefined and reported as None (F1: the class neither occurs nor is
predicted). macro_f1 is the mean F1 over the classes where it is defined.
"""

_INPUTS = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): reference class indices.
    num_classes (`int`, optional): number of classes (default: 1 + the largest index seen).
Returns:
    f1, precision, recall (`list` of `float` or None): one entry per class.
    support (`list` of `int`): number of reference samples of each class.
    macro_f1 (`float` or None): mean of the defined per-class F1 values.
Examples:
    >>> metric = evaluate.load("path/to/f1_per_class")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_classes=3)["f1"]
    [0.6666666666666666, 0.6666666666666666, None]
"""


def _ratio(numerator, denominator):
    return [float(n) / float(d) if d else None for n, d in zip(numerator, denominator, strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class F1PerClass(evaluate.Metric):
    """F1, precision and recall of every class."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_classes=None):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        seen = int(max(predictions.max(initial=-1), references.max(initial=-1))) + 1
        n = seen if num_classes is None else int(num_classes)
        if seen > n:
            raise ValueError(f"class index {seen - 1} is out of range for {n} classes")
        true_positive = np.bincount(references[predictions == references], minlength=n)
        predicted = np.bincount(predictions, minlength=n)
        support = np.bincount(references, minlength=n)
        false_positive = predicted - true_positive
        false_negative = support - true_positive
        f1 = _ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative)
        defined = [v for v in f1 if v is not None]
        return {
            "f1": f1,
            "precision": _ratio(true_positive, predicted),
            "recall": _ratio(true_positive, support),
            "support": [int(s) for s in support],
            "macro_f1": float(np.mean(defined)) if defined else None,
        }
