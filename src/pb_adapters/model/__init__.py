"""``PiggybackModel``: the method-agnostic wrapper that owns adapters, heads and artifacts.

The wrapper injects one method's layers into a timm or transformers model, keeps every base
weight frozen and shared, and gives each task (adapter) its own masks, head and, optionally, norm
layers. Which method is used is decided by the adapter's config through the registry in
:mod:`pb_adapters.methods`; nothing here is specific to one method.

One module per concern: :mod:`.wrapper` (the class, adapter lifecycle and forward),
:mod:`.saving`, :mod:`.loading` (plan, then apply), :mod:`.merging` (merge, unmerge, unload),
:mod:`.identity` (which base, its fingerprint), :mod:`.stats` (reports), :mod:`.task_modules`
(per-task heads and norms), :mod:`.state` (``state_dict`` with each tensor once) and
:mod:`.transformers_compat` (outputs with a loss, pipelines).
"""

from .stats import AdapterInfo, MaskStats
from .wrapper import BASE_ADAPTER_NAME, PiggybackModel, get_piggyback_model

__all__ = ["BASE_ADAPTER_NAME", "AdapterInfo", "MaskStats", "PiggybackModel", "get_piggyback_model"]
