"""Image classification data for training adapters.

Three sources give the same result, a :class:`DatasetSplits` with ``train``, ``validation`` and
``test`` datasets that yield ``(image_tensor, label)`` pairs (:func:`load_datasets`):

* an image folder: ``root/<class>/<image>`` or ``root/<split>/<class>/<image>`` with split folders
  named ``train``, ``val``/``valid``/``validation`` and ``test`` (:mod:`.folders`);
* a Hugging Face ``datasets`` name or a folder written by ``Dataset(Dict).save_to_disk``
  (:mod:`.hf`);
* a registered named source, such as the offline demo data (``"demo"``: 5,000 MNIST digits, see
  :mod:`pb_adapters.training.demo`) (:mod:`.sources`).

Missing splits are carved out of the training data with a deterministic stratified split
(:mod:`.splits`). Every image is converted to RGB first (grayscale, RGBA, palette, CMYK, 16-bit
...; :mod:`.images`). Unreadable files are counted and skipped with a warning, or raise
:class:`DataError` in strict mode (:mod:`.datasets`).

Transforms come from the model's own data configuration (timm's ``pretrained_cfg``, or a
transformers image processor): random resized crop (+ optional horizontal flip) for training,
resize + center crop for evaluation, at a configurable image size (:mod:`.transforms`). Loaders
come from one factory, :func:`build_dataloader` (:mod:`.loaders`).
"""

from pb_adapters.training.data.datasets import (
    ArrayImageDataset,
    DataError,
    HFImageDataset,
    ImageClassificationDataset,
    ImageFileDataset,
)
from pb_adapters.training.data.folders import load_image_folder, scan_image_folder
from pb_adapters.training.data.hf import load_hf_datasets
from pb_adapters.training.data.images import IMAGE_EXTENSIONS, to_rgb
from pb_adapters.training.data.loaders import (
    build_dataloader,
    build_dataloaders,
    default_eval_batch_size,
    default_num_workers,
)
from pb_adapters.training.data.sources import load_datasets, register_dataset_source
from pb_adapters.training.data.splits import DatasetSplits, stratified_split
from pb_adapters.training.data.transforms import DataConfig, build_transforms, resolve_data_config

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArrayImageDataset",
    "DataConfig",
    "DataError",
    "DatasetSplits",
    "HFImageDataset",
    "ImageClassificationDataset",
    "ImageFileDataset",
    "build_dataloader",
    "build_dataloaders",
    "build_transforms",
    "default_eval_batch_size",
    "default_num_workers",
    "load_datasets",
    "load_hf_datasets",
    "load_image_folder",
    "register_dataset_source",
    "resolve_data_config",
    "scan_image_folder",
    "stratified_split",
    "to_rgb",
]
