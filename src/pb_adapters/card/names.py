"""The names of the card files written beside an artifact, and the library's name on the Hub."""

from __future__ import annotations

CARD_NAME = "README.md"
PLOT_NAME = "mask_sparsity.png"
HUB_CONFIG_NAME = "config.json"
LIBRARY_NAME = "pb-adapters"
