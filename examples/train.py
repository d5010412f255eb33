"""Learn a piggyback mask for an image classification task.

Run ``python examples/train.py`` (or ``accelerate launch examples/train.py``) with no arguments for
the offline demo: a mask on ImageNet EfficientNet-Lite0 for 5,000 MNIST digits at 64 px. It
prints progress, the test accuracy, the mask's sparsity and the artifact's size, saves the
artifact to ``outputs/demo`` and reloads it onto a freshly created backbone to check that it
scores the same.

Any timm or transformers model and any image folder or ``datasets`` dataset works too::

    accelerate launch examples/train.py --model resnet50.a1_in1k --pretrained \\
        --dataset path/to/images --epochs 30 --output-dir outputs/my-task
    python examples/train.py --method finetune   # the full fine-tuning baseline
    python examples/train.py --help

The options live in ``pb_adapters.training.cli`` so other entry points can reuse them.
"""

from __future__ import annotations

import os
import sys

# Let idle OpenMP threads sleep instead of spinning. On a small CPU machine that is also running
# something else, spinning threads wait for each other and a training step can get several times
# slower; on an idle machine sleeping costs a little. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if len(sys.argv) == 1:
    # The demo needs nothing from the Hub (its backbone and data ship in installed packages), so
    # make sure no library tries to reach it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pb_adapters.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
