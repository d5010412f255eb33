"""The training command line behind examples/train.py: parsing, end-to-end runs, reload check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pb_adapters import PiggybackConfig
from pb_adapters.config import AdapterConfig
from pb_adapters.serialization import read_adapter_config
from pb_adapters.training.cli_args import (
    DEMO_DEFAULTS,
    adapter_config_from_args,
    build_train_parser,
    load_base_model,
    load_config_file,
    parse_train_args,
    run_training,
)
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
    assert build_train_parser().parse_args([]).mask_encoding == "ans"
    assert (
        build_train_parser().parse_args(["--mask-encoding", "bitpack"]).mask_encoding == "bitpack"
    )
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
    assert type(load_base_model(str(folder))).__name__ == "ViTForImageClassification"
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
    with pytest.raises(OSError):
        load_base_model("no-such-org/no-such-model-pb-adapters", library="auto")


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
    cfg.write_text("model: test_resnet\nmask-lr: 1e-3\nbatch_size: 8\nhflip: false\nmethod: head\n")
    parser = build_train_parser()
    ns = parse_train_args(parser, ["--config", str(cfg)])
    assert (ns.model, ns.mask_lr, ns.batch_size, ns.hflip, ns.method) == (
        "test_resnet",
        1e-3,
        8,
        False,
        "head",
    )
    assert ns.seed == 0 and ns.epochs is None  # untouched options keep their defaults
    # typed options win; options not typed keep the file's value, even when equal to a default
    ns = parse_train_args(parser, ["--batch-size", "32", "--config", str(cfg), "--hflip"])
    assert (ns.batch_size, ns.hflip, ns.mask_lr, ns.method) == (32, True, 1e-3, "head")
    cfg.write_text("batch_size: 8\nlearning_rate: 0.1\nfoo: 1\n")
    with pytest.raises(SystemExit):
        parse_train_args(parser, ["--config", str(cfg)])
    with pytest.raises(ValueError, match="unknown option\\(s\\) foo, learning_rate"):
        load_config_file(cfg, parser)
    cfg.write_text("method: lora\n")
    with pytest.raises(ValueError, match="method must be one of"):
        load_config_file(cfg, parser)


def test_adapter_config_follows_the_method_and_refuses_foreign_options() -> None:
    parser = build_train_parser()
    ns = parser.parse_args(["--mask-type", "ternary", "--mask-lr", "0.002"])
    config = adapter_config_from_args(ns, {0: "a", 1: "b"})
    assert type(config).method == "piggyback"
    assert (config.mask_type, config.mask_lr, config.num_labels) == ("ternary", 2e-3, 2)
    assert config.base_model_name_or_path == DEMO_BASE_MODEL_ID
    # head_lr left unset: the method's own default applies
    assert config.head_lr == PiggybackConfig().head_lr
    ns = parser.parse_args(["--model", "test_resnet"])
    config = adapter_config_from_args(ns, {0: "a"})
    assert (config.mask_type, config.base_model_name_or_path) == ("binary", "test_resnet")


def test_adapter_options_a_method_lacks_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from pb_adapters.training import cli_args

    @dataclasses.dataclass
    class _Plain(AdapterConfig):
        method = "plain"

    spec = type("Spec", (), {"config_class": _Plain})
    monkeypatch.setattr(cli_args, "get_method", lambda name: spec)
    ns = build_train_parser().parse_args(["--mask-type", "ternary"])
    with pytest.raises(ValueError, match="--mask-type does not apply to --method piggyback"):
        adapter_config_from_args(ns, {0: "a"})
    ns.mask_type = None
    assert isinstance(adapter_config_from_args(ns, {0: "a"}), _Plain)


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
