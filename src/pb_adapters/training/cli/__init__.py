"""The training command line behind ``examples/train.py`` and ``pb-adapters train``.

* :mod:`.parser`: the options (the run's own and those each registered method adds), YAML
  configuration files, and the check that refuses options a method does not read;
* :mod:`.options`: the one place that turns the options into
  :class:`~pb_adapters.training.trainer.TrainingArguments` and the adapter config;
* :mod:`.inputs`: offline checks of model names (with close-name suggestions) and data paths;
* :mod:`.run`: the end-to-end run (data, backbone, training, artifact, reload check).
"""

from pb_adapters.training.cli.options import (
    BASELINE_METHODS,
    DEMO_DEFAULTS,
    TrainOptionError,
    adapter_config_from_args,
    training_arguments_from_args,
)
from pb_adapters.training.cli.parser import (
    RUN_CONFIG_NAME,
    add_train_arguments,
    build_train_parser,
    check_train_options,
    load_config_file,
    method_options,
    parse_train_args,
    save_run_config,
)
from pb_adapters.training.cli.run import (
    check_run_inputs,
    create_backbone,
    load_splits,
    main,
    run_training,
    run_transforms,
)

__all__ = [
    "BASELINE_METHODS",
    "DEMO_DEFAULTS",
    "RUN_CONFIG_NAME",
    "TrainOptionError",
    "adapter_config_from_args",
    "add_train_arguments",
    "build_train_parser",
    "check_run_inputs",
    "check_train_options",
    "create_backbone",
    "load_config_file",
    "load_splits",
    "main",
    "method_options",
    "parse_train_args",
    "run_training",
    "run_transforms",
    "save_run_config",
    "training_arguments_from_args",
]
