"""Training: the Accelerate trainer, the data pipeline, metrics and the offline demo.

Typical use::

    from pb_adapters import PiggybackConfig, get_piggyback_model
    from pb_adapters.training import PiggybackTrainer, TrainingArguments, build_transforms, load_datasets

    splits = load_datasets("path/to/images")            # or a `datasets` name, or "demo"
    model = get_piggyback_model(base, PiggybackConfig(id2label=splits.id2label))
    splits.set_transforms(*build_transforms(model, image_size=224))
    result = PiggybackTrainer(model, TrainingArguments(output_dir="out"), splits=splits).train()

The command line behind ``examples/train.py`` lives in :mod:`pb_adapters.training.cli`.
"""

from pb_adapters.training.data import (
    DataConfig,
    DataError,
    DatasetSplits,
    ImageClassificationDataset,
    build_dataloaders,
    build_transforms,
    load_datasets,
    load_hf_datasets,
    load_image_folder,
    resolve_data_config,
    stratified_split,
    to_rgb,
)
from pb_adapters.training.demo import (
    DemoResourceError,
    load_demo_backbone,
    load_demo_dataset,
    read_demo_mnist,
)
from pb_adapters.training.metrics import ClassificationMetrics, topk_correct
from pb_adapters.training.trainer import (
    PiggybackTrainer,
    Trainer,
    TrainingArguments,
    TrainResult,
    prepare_baseline_model,
)

__all__ = [
    "ClassificationMetrics",
    "DataConfig",
    "DataError",
    "DatasetSplits",
    "DemoResourceError",
    "ImageClassificationDataset",
    "PiggybackTrainer",
    "TrainResult",
    "Trainer",
    "TrainingArguments",
    "build_dataloaders",
    "build_transforms",
    "load_datasets",
    "load_demo_backbone",
    "load_demo_dataset",
    "load_hf_datasets",
    "load_image_folder",
    "prepare_baseline_model",
    "read_demo_mnist",
    "resolve_data_config",
    "stratified_split",
    "to_rgb",
    "topk_correct",
]
