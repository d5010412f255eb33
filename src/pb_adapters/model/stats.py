"""What the wrapper reports about its adapters: mask sparsity, the adapter list, parameter counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..mask_coding import order0_entropy_bits

__all__ = ["AdapterInfo", "MaskStats", "StatsMixin"]


@dataclass
class MaskStats:
    """How much of the base each mask removes.

    Attributes:
        per_layer: Fraction of zeros in each masked layer's mask.
        total: Fraction of zeros over every masked weight.
        zeros: Number of masked-out entries.
        num_masked: Number of mask entries (masked weights, for per-weight methods).
        entropy_bits: Empirical order-0 entropy of the masks (zero versus nonzero), summed over
            layers: ``entries * H(zeros / entries)`` per layer. No lossless coder that treats
            each layer's entries as independent can store the masks in fewer bits.
        materialised_bytes: Bytes of this adapter's materialised weights held now.
        cache_bytes: Bytes of the serving cache's bank (every task it holds).
        cache_budget_bytes: ``model.serving.budget_bytes`` (``None``: the active task only).
    """

    per_layer: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    zeros: int = 0
    num_masked: int = 0
    entropy_bits: float = 0.0
    materialised_bytes: int = 0
    cache_bytes: int = 0
    cache_budget_bytes: int | None = None

    @property
    def entropy_bits_per_entry(self) -> float:
        """:attr:`entropy_bits` per mask entry."""
        return self.entropy_bits / max(self.num_masked, 1)

    def __str__(self) -> str:
        return (
            f"mask sparsity: {self.total:.2%} zeros ({self.zeros:,} of {self.num_masked:,} entries "
            f"in {len(self.per_layer)} layers), entropy {self.entropy_bits_per_entry:.3f} bits "
            "per entry"
        )


@dataclass
class AdapterInfo:
    """A loaded adapter, as :meth:`PiggybackModel.list_adapters` reports it."""

    name: str
    method: str
    num_labels: int | None
    id2label: dict[int, str]
    trainable: bool
    active: bool
    materialised_bytes: int = 0  # bytes of its materialised weights held (0: packed only)


class StatsMixin:
    """Reports of :class:`~pb_adapters.PiggybackModel`, mixed into it (uses its adapter state)."""

    def list_adapters(self) -> list[AdapterInfo]:
        """Every loaded adapter with its method, classes and whether it trains."""
        return [
            AdapterInfo(
                name=name,
                method=config.method,
                num_labels=self._labels[name].num_labels,
                id2label=dict(self._labels[name].id2label or {}),
                trainable=name not in self._frozen,
                active=name == self.active_adapter,
                materialised_bytes=self.serving.materialised_bytes(name),
            )
            for name, config in self.peft_config.items()
        ]

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts; total counts the base once plus adapter state."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print trainable and total parameter counts, as PEFT does, plus what the task stores.

        The trainable share counts mask scores, which are not what a task keeps: its artifact
        stores the masks coded (about a bit per weight at most) and its head. The last line gives
        those bytes as :meth:`save_pretrained` would write them now, and the bit-packed bound.
        """
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}"
        )
        if self.active_adapter is not None:
            stats = self.mask_stats()
            print(f"masked layers: {len(stats.per_layer)} || mask entries: {stats.num_masked:,}")
            size = self.adapter_size()
            masks, modules = int(size["mask_bytes"]), int(size["module_bytes"])
            bound = int(size["packed_mask_bytes"]) + modules
            print(
                f"task stores: {masks + modules:,} bytes (masks {masks:,} + head and task "
                f"modules {modules:,}) || at most {bound:,} bytes with masks bit-packed"
            )

    def mask_stats(self, adapter_name: str | None = None) -> MaskStats:
        """Per-layer and total fraction of zeros in an adapter's masks (default: the active one).

        Also the masks' empirical order-0 entropy, the floor of what entropy coding can store.
        """
        name = self._named_or_active(adapter_name, "no adapter is active; pass adapter_name")
        stats = MaskStats()
        for path, layer in self.adapter_layers():
            if name in layer.adapter_names:
                zeros, entries = layer.mask_counts(name)
                stats.per_layer[path] = zeros / max(entries, 1)
                stats.zeros += zeros
                stats.num_masked += entries
                stats.entropy_bits += order0_entropy_bits(zeros, entries)
        stats.total = stats.zeros / max(stats.num_masked, 1)
        stats.materialised_bytes = self.serving.materialised_bytes(name)
        stats.cache_bytes = self.serving.bank_bytes
        stats.cache_budget_bytes = self.serving.budget_bytes
        return stats
