"""Model cards for adapter artifacts: ``README.md``, a sparsity plot and a small ``config.json``.

Everything is derived from ``adapter_config.json`` (and, when present, the header of
``adapter_model.safetensors`` for exact sizes), so a card can be rebuilt from any artifact folder.
The card's YAML metadata is made with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard`
so the Hub can index it (library, base model, task, datasets, evaluation results).

The modules, from the bottom up: :mod:`.names` (file names), :mod:`.values` and :mod:`.sizes`
(reading an artifact's records and weights header), :mod:`.summary` (what an artifact says
about itself), :mod:`.plot` and :mod:`.usage` (the plot, the usage snippet), :mod:`.render`
(metadata and Markdown) and :mod:`.files` (what is written beside an artifact).
"""

from __future__ import annotations

from .files import hub_config, render_card_files, write_hub_config, write_model_card
from .names import CARD_NAME, HUB_CONFIG_NAME, PLOT_NAME
from .plot import plot_mask_sparsity
from .render import build_model_card
from .summary import AdapterSummary, summarize_adapter

__all__ = [
    "CARD_NAME",
    "HUB_CONFIG_NAME",
    "PLOT_NAME",
    "AdapterSummary",
    "build_model_card",
    "hub_config",
    "plot_mask_sparsity",
    "render_card_files",
    "summarize_adapter",
    "write_hub_config",
    "write_model_card",
]
