"""Writing evaluation results into a task's artifact, where its model card and model-index read them.

The artifact's ``metrics`` object keeps what training recorded (``test_accuracy``...) and gets an
``evaluations`` list: one entry per (dataset, split) scored, replaced when scored again. The list
is stored inside ``metrics`` because that object is what every save and load carries along
unchanged, so the results outlive re-saving the task. The card (:mod:`pb_adapters.card`) turns each
entry into model-index results for its own dataset and split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pb_adapters.card import write_model_card
from pb_adapters.hub import is_local_reference
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME, read_adapter_config
from pb_adapters.training.evaluation.result import EvaluationResult
from pb_adapters.training.evaluation.runner import EvaluationError
from pb_adapters.utils.files import atomic_write_bytes

__all__ = ["EVALUATIONS_KEY", "evaluation_record", "write_evaluation"]

#: Where in the artifact's ``metrics`` the evaluation entries live.
EVALUATIONS_KEY = "evaluations"


def evaluation_record(result: EvaluationResult) -> dict[str, Any]:
    """The artifact entry of ``result``: dataset, split, sample count and headline metrics."""
    return {
        "dataset": result.dataset,
        "split": result.split,
        "num_samples": result.num_samples,
        "metrics": result.metrics(),
    }


def write_evaluation(
    folder: str | Path,
    result: EvaluationResult,
    *,
    repo_id: str | None = None,
    subfolder: str | None = None,
) -> Path:
    """Record ``result`` in the task folder's ``adapter_config.json`` and rewrite its card.

    ``repo_id`` and ``subfolder`` name the task's Hub repository in the card (as
    :func:`~pb_adapters.card.write_model_card` does); by default its usage snippet shows a path.

    Only a local artifact folder can be updated (a Hub task: download it with
    ``pb-adapters download REPO --local-dir DIR``, evaluate the folder, push it). The config is
    validated first and replaced atomically; nothing but ``metrics`` changes. Returns the path of
    the rewritten ``README.md``.
    """
    if not is_local_reference(folder) or not Path(folder).is_dir():
        raise EvaluationError(
            f"{folder} is not a local task folder; only a local artifact's card can be updated "
            "(download it with: pb-adapters download REPO_ID --local-dir DIR)"
        )
    folder = Path(folder)
    read_adapter_config(folder)  # refuse anything that is not a valid artifact
    path = folder / ARTIFACT_CONFIG_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    metrics = data.get("metrics") or {}
    previous = metrics.get(EVALUATIONS_KEY)
    entries = [
        entry
        for entry in (previous if isinstance(previous, list) else [])
        if isinstance(entry, dict)
        and (entry.get("dataset"), entry.get("split")) != (result.dataset, result.split)
    ]
    metrics[EVALUATIONS_KEY] = [*entries, evaluation_record(result)]
    data["metrics"] = metrics
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return write_model_card(folder, repo_id=repo_id, subfolder=subfolder)
