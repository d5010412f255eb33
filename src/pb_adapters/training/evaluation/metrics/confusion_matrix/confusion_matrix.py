"""Confusion matrix: counts of (reference class, predicted class) pairs."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The confusion matrix M has one row per reference class and one column per predicted class:
M[i][j] is the number of samples of class i predicted as class j. The diagonal holds the correct
predictions; each row sums to the support of its class.
"""

_INPUTS = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): reference class indices.
    num_classes (`int`, optional): number of classes (default: 1 + the largest index seen).
Returns:
    confusion_matrix (`list` of `list` of `int`): num_classes rows of num_classes counts.
Examples:
    >>> metric = evaluate.load("path/to/confusion_matrix")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'confusion_matrix': [[1, 1], [0, 1]]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class ConfusionMatrix(evaluate.Metric):
    """Counts of every (reference, prediction) pair."""

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
        counts = np.bincount(references * n + predictions, minlength=n * n).reshape(n, n)
        return {"confusion_matrix": counts.tolist()}
