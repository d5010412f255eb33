"""Integrations with other libraries' tools, above the wrapper; nothing in the core imports them.

:mod:`.transformers_trainer`: training a :class:`~pb_adapters.PiggybackModel` with
``transformers.Trainer`` at the learning rates its method wants, and turning Trainer checkpoints
into task folders.
"""

from .transformers_trainer import PiggybackHFTrainer, create_optimizer, load_trainer_checkpoint

__all__ = ["PiggybackHFTrainer", "create_optimizer", "load_trainer_checkpoint"]
