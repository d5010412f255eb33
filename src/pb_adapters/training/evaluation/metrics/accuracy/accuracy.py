"""Accuracy: the fraction of predictions equal to their reference label."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the fraction of samples whose predicted class equals the reference class:
(number of correct predictions) / (number of samples).
"""

_INPUTS = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): reference class indices.
Returns:
    accuracy (`float`): in [0, 1]; 0.0 for no samples.
Examples:
    >>> metric = evaluate.load("path/to/accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class Accuracy(evaluate.Metric):
    """Top-1 accuracy over class indices."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if predictions.size == 0:
            return {"accuracy": 0.0}
        return {"accuracy": float(np.mean(predictions == references))}
