"""The training command line behind examples/train.py: parsing, end-to-end runs, reload check."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar, Literal

import pytest
import torch

from pb_adapters import KSMConfig, PiggybackConfig
from pb_adapters.config import AdapterConfig
from pb_adapters.errors import ConfigError
from pb_adapters.registry import available_methods, get_method
from pb_adapters.serialization import read_adapter_config
from pb_adapters.training.cli import (
    DEMO_DEFAULTS,
    TrainOptionError,
    adapter_config_from_args,
    build_train_parser,
    check_train_options,
    create_backbone,
    load_config_file,
    parse_train_args,
    run_training,
    training_arguments_from_args,
)
from pb_adapters.training.cli.inputs import check_dataset_source, check_model_name
from pb_adapters.training.data import DataError
from pb_adapters.training.demo import DEMO_BASE_MODEL_ID
from tests.devices import child_env
from tests.factories import tiny_transformers

REPO = Path(__file__).resolve().parents[2]
QUICK = [
    "--epochs", "1",
    "--max-steps-per-epoch", "3",
    "--max-train-samples", "120",
    "--max-eval-samples", "60",
    "--image-size", "32",
    "--batch-size", "16",
    "--num-workers", "0",
    "--no-progress",
]  # fmt: skip


def test_parser_defaults_and_options() -> None:
    ns = build_train_parser().parse_args([])
    assert ns.model is None and ns.dataset is None and ns.method == "piggyback"
    assert ns.epochs is None and ns.hflip is None  # filled per run: demo or general defaults
    ns = build_train_parser().parse_args(
        ["--model", "resnet50", "--no-hflip", "--method", "head", "--mask-lr", "0.001"]
    )
    assert (ns.model, ns.hflip, ns.method, ns.mask_lr) == ("resnet50", False, "head", 1e-3)
    assert training_arguments_from_args(build_train_parser().parse_args([])).mask_encoding == "ans"
    ns = build_train_parser().parse_args(["--mask-encoding", "bitpack"])
    assert training_arguments_from_args(ns).mask_encoding == "bitpack"
    assert DEMO_DEFAULTS["output_dir"] == "outputs/demo" and DEMO_DEFAULTS["hflip"] is False


def test_demo_run_saves_reloads_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    ns = build_train_parser().parse_args([*QUICK, "--output-dir", str(out)])
    lines: list[str] = []
    summary = run_training(ns, print_fn=lambda *a: lines.append(" ".join(map(str, a))))
    assert (
        summary["dataset"] == "mnist-5k"
        and summary["method"] == "piggyback"
        and summary["train_mode"] == "adapter"
    )
    assert summary["reload_matches"] is True
    assert summary["reloaded_test_accuracy"] == summary["test_accuracy"]
    assert 0.0 <= summary["mask_zeros_fraction"] < 1.0
    assert summary["num_masked_weights"] > 3_000_000
    # Masks entropy-coded: never above bit packing, never below their entropy.
    assert 0 < summary["bits_per_masked_weight"] < 1.5
    assert (
        summary["mask_entropy_bits_per_masked_weight"]
        <= summary["mask_bits_per_masked_weight"]
        < summary["packed_mask_bits_per_masked_weight"]
        <= 1.001
    )
    assert read_adapter_config(out)["format_version"] == 2
    assert summary["artifact_bytes"] == sum(summary["artifact_files"].values())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(summary["artifact_files"])
    assert (
        json.loads((out / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]
    )
    text = "\n".join(lines)
    for needle in (
        "mask:",
        "artifact:",
        "bits per masked weight",
        "reloaded onto a fresh backbone",
    ):
        assert needle in text


def test_baseline_run_with_a_timm_model(tmp_path: Path) -> None:
    ns = build_train_parser().parse_args(
        [*QUICK, "--model", "test_efficientnet", "--dataset", "demo", "--method", "finetune",
         "--output-dir", str(tmp_path / "ft")]
    )  # fmt: skip
    summary = run_training(ns, print_fn=lambda *a: None)
    assert summary["train_mode"] == "finetune" and "artifact_bytes" not in summary
    assert (tmp_path / "ft" / "results.json").is_file()


@pytest.mark.filterwarnings("ignore:no image processor")
def test_transformers_model_from_a_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-vit"
    tiny_transformers("vit").save_pretrained(folder)
    assert type(create_backbone(str(folder))).__name__ == "ViTForImageClassification"
    ns = build_train_parser().parse_args(
        [
            *QUICK,
            "--model",
            str(folder),
            "--dataset",
            "mnist-5k",
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    summary = run_training(ns, print_fn=lambda *a: None)
    assert summary["reload_matches"] is True
    saved = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert saved["base_model"]["library"] == "transformers"
    assert saved["base_model"]["name_or_path"] == str(folder)


def test_unknown_names_go_to_transformers_and_fail_offline() -> None:
    with pytest.raises(ConfigError, match="cannot create the model") as caught:
        create_backbone("no-such-org/no-such-model-pb-adapters", library="auto")
    assert isinstance(caught.value.__cause__, OSError)  # transformers found nothing offline


def test_example_script_help() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--model", "--dataset", "--image-column", "--method", "--mask-lr"):
        assert option in proc.stdout


def test_checkpoint_options_and_resume(tmp_path: Path) -> None:
    ns = build_train_parser().parse_args(["--resume"])
    assert (ns.resume, ns.save_steps, ns.save_total_limit) == ("latest", None, 2)
    ns = build_train_parser().parse_args(["--resume", "x/step-00000004", "--save-steps", "5"])
    assert (ns.resume, ns.save_steps) == ("x/step-00000004", 5)
    out = tmp_path / "run"
    base = [*QUICK, "--model", "test_resnet", "--dataset", "demo", "--output-dir", str(out)]
    base += ["--no-reload-check", "--max-train-samples", "40"]
    run_training(build_train_parser().parse_args(base), print_fn=lambda *a: None)
    assert (out / "checkpoints" / "step-00000003" / "trainer_state.json").is_file()
    # the resolved options are saved and can be read back as a --config file
    saved = load_config_file(out / "run_config.yaml", build_train_parser())
    assert (saved["model"], saved["output_dir"], saved["max_train_samples"]) == (
        "test_resnet",
        str(out),
        40,
    )
    # a second run with more epochs continues after epoch 1 instead of starting over
    ns = build_train_parser().parse_args([*base, "--epochs", "2", "--resume"])
    run_training(ns, print_fn=lambda *a: None)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line.get("epoch") for line in lines] == [1, 2, None]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000006",
    ]


def test_yaml_config_precedence_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: test_resnet\nmask-lr: 1e-3\nbatch_size: 8\nhflip: false\nmethod: ksm\n")
    parser = build_train_parser()
    ns = parse_train_args(parser, ["--config", str(cfg)])
    assert (ns.model, ns.mask_lr, ns.batch_size, ns.hflip, ns.method) == (
        "test_resnet",
        1e-3,
        8,
        False,
        "ksm",
    )
    assert ns.seed == 0 and ns.epochs is None  # untouched options keep their defaults
    # typed options win; options not typed keep the file's value, even when equal to a default
    ns = parse_train_args(parser, ["--batch-size", "32", "--config", str(cfg), "--hflip"])
    assert (ns.batch_size, ns.hflip, ns.mask_lr, ns.method) == (32, True, 1e-3, "ksm")
    cfg.write_text("batch_size: 8\nlearning_rate: 0.1\nfoo: 1\n")
    with pytest.raises(SystemExit):
        parse_train_args(parser, ["--config", str(cfg)])
    with pytest.raises(ValueError, match="unknown option\\(s\\) foo, learning_rate"):
        load_config_file(cfg, parser)
    cfg.write_text("method: lora\n")
    with pytest.raises(ValueError, match="method must be one of"):
        load_config_file(cfg, parser)


def test_adapter_config_follows_the_method_and_its_options() -> None:
    parser = build_train_parser()
    ns = parser.parse_args(["--mask-type", "ternary", "--mask-lr", "0.002"])
    config = adapter_config_from_args(ns, {0: "a", 1: "b"})
    assert type(config).method == "piggyback"
    assert (config.mask_type, config.mask_lr, config.num_labels) == ("ternary", 2e-3, 2)
    assert config.base_model_name_or_path == DEMO_BASE_MODEL_ID
    assert config.head_lr == DEMO_DEFAULTS["head_lr"]  # the demo's own default
    ns = parser.parse_args(["--model", "test_resnet"])
    config = adapter_config_from_args(ns, {0: "a"})
    assert (config.mask_type, config.base_model_name_or_path) == ("binary", "test_resnet")
    assert config.head_lr == PiggybackConfig().head_lr  # unset: the method's own default
    ns = parser.parse_args(["--model", "m", "--method", "ksm", "--temperature", "0.01"])
    ns.block_size, ns.head_lr = 4, 0.5
    config = adapter_config_from_args(ns, {0: "a"})
    assert (config.temperature, config.block_size, config.head_lr) == (0.01, 4, 0.5)
    ns = parser.parse_args(["--model", "m", "--method", "packnet", "--epochs", "3"])
    ns.weight_lr = 0.02
    config = adapter_config_from_args(ns, {0: "a"})
    assert (config.epochs, config.weight_lr) == (3, 0.02)  # --epochs serves packnet's field


def test_exclude_modules_leaves_the_matching_layers_unmasked() -> None:
    parser = build_train_parser()
    config = adapter_config_from_args(parser.parse_args(["--model", "m"]), {0: "a"})
    assert (config.exclude_modules, config.mask_lr) == (None, PiggybackConfig().mask_lr)
    demo = adapter_config_from_args(parser.parse_args([]), {0: "a"})  # the demo's recipe
    assert (demo.exclude_modules, demo.mask_lr) == (".*conv_dw", 3e-4)
    ns = parser.parse_args(["--mask-lr", "1e-4", "--exclude-modules", "blocks"])
    assert adapter_config_from_args(ns, {0: "a"}).exclude_modules == "blocks"
    ns = parser.parse_args(["--exclude-modules", ""])  # the demo with every layer masked
    assert adapter_config_from_args(ns, {0: "a"}).exclude_modules is None
    ksm = adapter_config_from_args(parser.parse_args(["--method", "ksm"]), {0: "a"})
    assert (ksm.exclude_modules, ksm.mask_lr) == (None, KSMConfig().mask_lr)  # its own defaults
    ns = parser.parse_args(["--method", "ksm", "--exclude-modules", ".*conv_dw"])
    assert adapter_config_from_args(ns, {0: "a"}).exclude_modules == ".*conv_dw"
    ns = parser.parse_args(["--method", "head", "--exclude-modules", ".*conv_dw"])
    with pytest.raises(TrainOptionError, match="--exclude-modules applies to adapter methods"):
        check_train_options(ns)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "finetune", "--push-to-hub", "me/x"], "push_to_hub"),
        (["--report-to", "tensorbored"], "unknown tracker"),
        (["--logging-steps", "0"], "logging_steps must be >= 1"),
    ],
)
def test_inconsistent_options_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(build_train_parser(), argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- method options


def _option(parser, flag: str):
    return next(a for a in parser._actions if flag in a.option_strings)


def test_every_method_option_comes_from_its_registry_entry() -> None:
    parser = build_train_parser()
    for method in available_methods():
        spec = get_method(method)
        fields = {f.name: f for f in dataclasses.fields(spec.config_class)}
        for name in spec.cli_options:
            action = _option(parser, "--" + name.replace("_", "-"))
            assert action.dest == name and name in fields
            assert action.default is None  # not given: the method's (or the demo's) default
            assert f"{method} {fields[name].default}" in action.help
        for flag in spec.schedule_options:
            assert f"[--method {method}]" in _option(parser, flag).help
    assert _option(parser, "--mask-type").choices == ("binary", "ternary")
    assert _option(parser, "--block-size").type is int
    assert _option(parser, "--prune-ratio").type is float
    # one option per field name, shared by the methods that have it
    assert "ksm 0.01, piggyback 0.01" in _option(parser, "--mask-init").help


def test_a_registered_method_brings_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from pb_adapters import registry
    from pb_adapters.methods.piggyback import PiggybackLayer

    @dataclasses.dataclass
    class ToyConfig(AdapterConfig):
        method: ClassVar[str] = "toy"
        sharpness: float = 2.0
        mode: Literal["soft", "hard"] = "soft"
        mask_lr: float = 1e-4

    spec = registry.MethodSpec(
        "toy",
        ToyConfig,
        PiggybackLayer,
        cli_options={"sharpness": "how sharp", "mode": "which mode", "mask_lr": "mask rate"},
    )
    monkeypatch.setitem(registry._REGISTRY, "toy", spec)
    parser = build_train_parser()
    assert _option(parser, "--sharpness").type is float
    assert _option(parser, "--mode").choices == ("soft", "hard")
    assert "ksm 0.001, piggyback 0.0001, toy 0.0001" in _option(parser, "--mask-lr").help
    argv = ["--method", "toy", "--model", "m", "--sharpness", "3", "--mode", "hard"]
    config = adapter_config_from_args(parse_train_args(parser, argv), {0: "a"})
    assert (type(config), config.sharpness, config.mode) == (ToyConfig, 3.0, "hard")
    with pytest.raises(SystemExit):
        parse_train_args(parser, ["--sharpness", "3"])  # piggyback has no such field
    with pytest.raises(SystemExit):
        parse_train_args(parser, ["--method", "toy", "--threshold", "0.1"])


def test_the_test_suites_toy_method_gets_its_option_by_registering() -> None:
    import tests.methods.toy  # noqa: F401  (registers the toy method, as the conformance test)

    argv = ["--method", "toy", "--model", "m", "--score-init", "0.5"]
    ns = parse_train_args(build_train_parser(), argv)
    config = adapter_config_from_args(ns, {0: "a"})
    assert (config.method, config.score_init) == ("toy", 0.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--method", "ksm", "--mask-type", "ternary"],
            "--mask-type does not apply to --method ksm",
        ),
        (["--tasks", "demo"], "--tasks does not apply to --method piggyback"),
        (["--keep-last-unpruned"], "--keep-last-unpruned does not apply"),
        (["--method", "packnet", "--mask-lr", "1e-3"], "--mask-lr does not apply"),
        (["--method", "head", "--norm-lr", "1e-3"], "--norm-lr does not apply to --method head"),
        (["--method", "packnet", "--mask-encoding", "ans"], "--mask-encoding does not apply"),
        (["--method", "finetune", "--mask-encoding", "bitpack"], "--mask-encoding does not"),
        (["--method", "packnet", "--resume"], "--resume continues one training run"),
        (["--backbone-lr", "1e-3"], "--backbone-lr applies to --method finetune"),
        (["--hub-private"], "--hub-private applies to the repository of --push-to-hub"),
        (["--method", "head", "--train-norms"], "--train-norms applies to adapter methods"),
    ],
)
def test_options_the_method_does_not_read_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pb_adapters import cli

    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(build_train_parser(prog="train.py"), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and err.startswith("train.py: error: ")
    assert message in err
    assert cli.main(["train", *argv]) == 2  # the subcommand: one line too, nothing trained
    err = capsys.readouterr().err
    assert err.startswith("pb-adapters train: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- names and paths
@pytest.mark.parametrize(
    ("name", "library"),
    [
        (None, "auto"),
        ("resnet18", "auto"),
        ("test_resnet", "timm"),
        ("resnet50.a1_in1k", "auto"),
        ("hf-hub:timm/resnet18.a1_in1k", "auto"),
        ("google/vit-base-patch16-224", "auto"),
        ("anything-at-all", "transformers"),
        (DEMO_BASE_MODEL_ID, "auto"),
        (DEMO_BASE_MODEL_ID, "timm"),
    ],
)
def test_model_names_that_pass_without_a_lookup(name: str | None, library: str) -> None:
    check_model_name(name, library=library)


@pytest.mark.parametrize(
    ("name", "library", "message"),
    [
        ("resnet99", "auto", "--model resnet99: not a timm model, a registered base or a folder; "
         "did you mean resnet50, resnet34, resnet26? (a transformers model is named org/name)"),
        ("ResNet99", "auto", "did you mean resnet50"),
        ("resnt18", "timm", "--model resnt18: not a timm model; did you mean resnet18"),
        ("pb-adapters-demo:tf_efficientnet_lite", "auto", f"did you mean {DEMO_BASE_MODEL_ID}"),
        ("resnet50.a1_in2k", "auto", "timm has no pretrained tag 'a1_in2k' for resnet50; "
         "did you mean resnet50.a1_in1k"),
        ("qqqqqqqq", "auto", "timm.list_models() lists timm's names"),
    ],
)  # fmt: skip
def test_unknown_model_names_suggest_close_ones(name: str, library: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_model_name(name, library=library)
    assert message in str(err.value)


def test_model_folders_and_data_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_model_name(str(tmp_path), library="timm")  # a folder is for the loader to read
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for source in (None, "demo", "mnist", "org/name", "data", str(tmp_path / "data")):
        check_dataset_source(source)  # named sources, datasets names and folders pass
    for source in ("data/train", "./imgs", "../imgs", "~/imgs", "/no/such/images", "a/b/c"):
        with pytest.raises(DataError, match=re.escape(f"--dataset {source}: no such folder")):
            check_dataset_source(source)
    with pytest.raises(DataError, match=re.escape("--tasks notes.txt is a file")):
        check_dataset_source("notes.txt", option="--tasks")


def test_a_registered_base_is_a_backbone_by_its_name() -> None:
    fresh = create_backbone(DEMO_BASE_MODEL_ID, library="timm")
    demo = create_backbone(None)
    assert type(fresh) is type(demo)
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), demo.state_dict().values(), strict=True)
    )


def test_misspelt_names_are_refused_before_any_data_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pb_adapters.training.cli.run as run_module

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data loaded before the model name was checked")

    monkeypatch.setattr(run_module, "load_datasets", no_data)
    ns = build_train_parser().parse_args(["--model", "resnet99", "--dataset", "demo"])
    with pytest.raises(ConfigError, match="did you mean"):
        run_training(ns)
    ns = build_train_parser().parse_args(["--method", "packnet", "--tasks", "demo", "./none"])
    with pytest.raises(DataError, match=re.escape("--tasks ./none: no such folder")):
        run_training(ns)
