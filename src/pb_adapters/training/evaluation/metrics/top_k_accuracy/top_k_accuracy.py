"""Top-k accuracy: the fraction of samples whose reference class is among the k best scores."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy is the fraction of samples whose reference class is among the k classes with the
highest scores. Classes with equal scores are ranked by class index (the lower index first), the
order in which `argmax` picks the top-1 class, so top-1 accuracy equals accuracy on `argmax`
predictions. A k of at least the number of classes counts every sample as correct.
"""

_INPUTS = """
Args:
    predictions (`list` of `list` of `float`): one score (logit or probability) per class, per
        sample.
    references (`list` of `int`): reference class indices.
    k (`int`, default 5): how many of the best-scored classes count as a hit.
Returns:
    top_k_accuracy (`float`): in [0, 1]; 0.0 for no samples.
    k (`int`): the k used.
Examples:
    >>> metric = evaluate.load("path/to/top_k_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]], references=[2, 2], k=2)
    {'top_k_accuracy': 0.5, 'k': 2}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class TopKAccuracy(evaluate.Metric):
    """Top-k accuracy over per-class scores."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, k=5):
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        references = np.asarray(references, dtype=np.int64)
        if references.size == 0:
            return {"top_k_accuracy": 0.0, "k": int(k)}
        scores = np.asarray(predictions, dtype=np.float32)
        # Stable sort of the negated scores: equal scores keep the lower class index first.
        order = np.argsort(-scores, axis=1, kind="stable")[:, : int(k)]
        hits = (order == references[:, None]).any(axis=1)
        return {"top_k_accuracy": float(np.mean(hits)), "k": int(k)}
