"""The card's usage snippet: the code that builds the base model and loads the task onto it."""

from __future__ import annotations

import json
import textwrap

from ..base_registry import get_base, is_registered_base
from ..utils.names import TIMM_HUB_PREFIXES
from .summary import AdapterSummary


def _py(text: str) -> str:
    """A Python string literal (double quotes, escapes) for generated code."""
    return json.dumps(text)


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, width=94)]


def _pretrained_base(summary: AdapterSummary) -> tuple[list[str], list[str]] | None:
    """Import lines and code that create the base checkpoint (pretrained weights only)."""
    name = summary.base_name
    if summary.base_weights != "pretrained" or not name:
        return None
    if is_registered_base(name):  # a base known by name here, such as the offline demo backbone
        return get_base(name).usage()
    if summary.base_library == "timm":
        if summary.base_revision and name.startswith(TIMM_HUB_PREFIXES) and "@" not in name:
            name = f"{name}@{summary.base_revision}"  # timm names a Hub revision inside the id
        return ["import timm"], [f"base = timm.create_model({_py(name)}, pretrained=True)"]
    if summary.base_library == "transformers":
        revision = f", revision={_py(summary.base_revision)}" if summary.base_revision else ""
        return ["from transformers import AutoModelForImageClassification"], [
            f"base = AutoModelForImageClassification.from_pretrained({_py(name)}{revision})"
        ]
    return None


def _other_base(summary: AdapterSummary) -> tuple[list[str], list[str]]:
    """Import lines and code for a base that no checkpoint name creates: what the weights were,
    and the architecture (timm) or a placeholder to replace."""
    arch = summary.base_architecture or summary.base_name or "model"
    exact = "load the exact weights the adapter was trained on (their fingerprint is checked)"
    if summary.base_weights == "random":
        note = (
            f"The adapter was trained on a randomly initialised {arch}, not on pretrained "
            f"weights. A new random initialisation differs: {exact}."
        )
    elif summary.base_weights in ("modified", "unknown"):
        note = f"The adapter was trained on {arch} weights {summary.base_weights_text}: {exact}."
    elif summary.base_weights == "pretrained":  # a checkpoint no library here creates by name
        note = f"The adapter was trained on the weights of {summary.base_name}: {exact}."
    else:  # not recorded
        note = (
            f"This artifact does not record whether its base held the weights of "
            f"{summary.base_name or arch}: build the base it was trained on (its fingerprint is "
            "checked)."
        )
    if summary.base_library == "timm" and summary.base_weights in ("random", "modified", "unknown"):
        return ["import timm"], [
            *_comment(note),
            f"base = timm.create_model({_py(arch)}, pretrained=False)",
            "base.load_state_dict(...)",
        ]
    return [], [*_comment(note), "base = ..."]


def usage_snippet(summary: AdapterSummary, repo_id: str | None, subfolder: str | None) -> str:
    if summary.base_library not in ("timm", "transformers") and summary.base_weights is None:
        imports: list[str] = []
        build = [
            "# Build the base model exactly as it was when the adapter was trained:",
            "# its weights are checked against the fingerprint below.",
            "base = ...",
        ]
    else:
        imports, build = _pretrained_base(summary) or _other_base(summary)
    target = _py(repo_id or "path/to/this/folder")
    extra = f", subfolder={_py(subfolder)}" if subfolder else ""
    call = (
        "model(pixel_values=images).logits"
        if summary.base_library == "transformers"
        else ("model(images)")
    )
    lines = [
        *imports,
        "from pb_adapters import PiggybackModel",
        "",
        *build,
        f"model = PiggybackModel.from_pretrained(base, {target}{extra})",
        "model.eval()",
        f"logits = {call}  # images: a normalised float batch, as for the base model",
    ]
    return "\n".join(lines)
