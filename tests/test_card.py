"""Model cards, the sparsity plot and config.json, built from real artifacts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import ModelCard

from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.card import (
    PLOT_NAME,
    build_model_card,
    hub_config,
    summarize_adapter,
    write_model_card,
)
from pb_adapters.serialization import ARTIFACT_WEIGHTS_NAME, read_adapter_config
from tests.factories import tiny_transformers
from tests.test_hub import make_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Any]:
    """An artifact with metrics and datasets, its config dict, and the model's own numbers."""
    folder = tmp_path_factory.mktemp("card-artifact")
    model = make_model(seed=5)
    model.save_pretrained(folder, metrics={"test_accuracy": 0.875}, datasets=["mnist"])
    return folder, read_adapter_config(folder), model


def _copy_artifact(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.name in ("adapter_config.json", ARTIFACT_WEIGHTS_NAME):
            (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_summary_matches_the_model(saved: tuple[Path, dict[str, Any], Any]) -> None:
    folder, config, model = saved
    summary = summarize_adapter(config, folder / ARTIFACT_WEIGHTS_NAME)
    size = model.adapter_size()
    stats = model.mask_stats()
    assert summary.mask_bytes == size["mask_bytes"]
    assert summary.masked_weights == size["masked_weights"]
    assert summary.bits_per_masked_weight == pytest.approx(size["bits_per_masked_weight"])
    assert summary.sparsity == pytest.approx(stats.total)
    assert summary.per_layer_sparsity == pytest.approx(stats.per_layer)
    assert 0 < summary.sparsity < 1
    assert summary.weights_file_bytes == (folder / ARTIFACT_WEIGHTS_NAME).stat().st_size
    assert summary.labels == ["class-0", "class-1", "class-2"] and summary.num_labels == 3
    assert summary.entropy_bits_per_masked_weight == pytest.approx(
        size["entropy_bits_per_masked_weight"]
    )
    # Without the weights file, entropy-coded masks have no known size ...
    assert config["tensor_encodings"] and summarize_adapter(config).mask_bytes is None


def test_summary_sizes_bit_packed_masks_without_the_file(
    saved: tuple[Path, dict[str, Any], Any], tmp_path: Path
) -> None:
    # ... but bit-packed ones are sized exactly from their encodings.
    model = saved[2]
    model.save_pretrained(tmp_path, mask_encoding="bitpack", write_card=False)
    config = read_adapter_config(tmp_path)
    summary = summarize_adapter(config, tmp_path / ARTIFACT_WEIGHTS_NAME)
    assert summarize_adapter(config).mask_bytes == summary.mask_bytes
    assert summary.mask_bytes == model.adapter_size(mask_encoding="bitpack")["mask_bytes"]


def test_card_metadata(saved: tuple[Path, dict[str, Any], Any], tmp_path: Path) -> None:
    folder = _copy_artifact(saved[0], tmp_path / "art")
    path = write_model_card(folder, repo_id="someone/digits", subfolder="mnist")
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "pb-adapters"
    assert data["pipeline_tag"] == "image-classification"
    assert {"pb-adapters", "piggyback", "timm"} <= set(data["tags"])
    assert data["datasets"] == ["mnist"]
    base = summarize_adapter(saved[1]).hub_base_model
    if base is not None:
        assert data["base_model"] == base and data["base_model_relation"] == "adapter"
    else:
        assert "base_model" not in data and "base_model_relation" not in data
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value) == ("accuracy", 0.875)
    assert (result.dataset_type, result.dataset_split) == ("mnist", "test")


def test_card_body(saved: tuple[Path, dict[str, Any], Any], tmp_path: Path) -> None:
    folder = _copy_artifact(saved[0], tmp_path / "art")
    config = saved[1]
    text = write_model_card(folder, repo_id="someone/digits", subfolder="mnist").read_text()
    summary = summarize_adapter(config, folder / ARTIFACT_WEIGHTS_NAME)
    assert 'PiggybackModel.from_pretrained(base, "someone/digits", subfolder="mnist")' in text
    # A randomly initialised base: built by architecture, never claimed as pretrained.
    assert summary.base_weights == "random" and summary.base_name == "test_resnet"
    assert f"timm.create_model({json.dumps(summary.base_name)}, pretrained=False)" in text
    assert "pretrained=True" not in text and "randomly initialised" in text
    assert config["base_model"]["fingerprint"] in text
    assert f"{summary.mask_bytes:,} bytes" in text
    assert f"{summary.bits_per_masked_weight:.3f}" in text
    assert f"| mask entropy (order 0) | {summary.entropy_bits_per_masked_weight:.3f} bits" in text
    assert f"{100 * summary.sparsity:.2f}%" in text
    assert "| 2 | class-2 |" in text
    assert f"![Per-layer mask sparsity]({PLOT_NAME})" in text
    assert "Mallya" in text  # the method's citation
    assert "0.8750" in text


def test_plot_and_config_files(saved: tuple[Path, dict[str, Any], Any], tmp_path: Path) -> None:
    folder = _copy_artifact(saved[0], tmp_path / "art")
    write_model_card(folder)
    png = (folder / PLOT_NAME).read_bytes()
    assert png.startswith(PNG_MAGIC)
    write_model_card(folder)
    assert (folder / PLOT_NAME).read_bytes() == png  # deterministic: same artifact, same bytes
    config = json.loads((folder / "config.json").read_text())
    assert config == hub_config(saved[1])
    assert config["library_name"] == "pb-adapters"
    assert config["method"] == "piggyback" and config["num_labels"] == 3


def test_card_files_are_reproducible(
    saved: tuple[Path, dict[str, Any], Any], tmp_path: Path
) -> None:
    a = _copy_artifact(saved[0], tmp_path / "a")
    b = _copy_artifact(saved[0], tmp_path / "b")
    write_model_card(a, repo_id="x/y")
    write_model_card(b, repo_id="x/y")
    for name in ("README.md", PLOT_NAME, "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_without_counts_there_is_no_plot(
    saved: tuple[Path, dict[str, Any], Any], tmp_path: Path
) -> None:
    folder = _copy_artifact(saved[0], tmp_path / "art")
    (folder / PLOT_NAME).write_bytes(b"stale")
    config = copy.deepcopy(saved[1])
    for record in config["modules"]:
        record.pop("zeros", None)
    text = write_model_card(folder, config).read_text()
    assert not (folder / PLOT_NAME).exists()
    assert PLOT_NAME not in text
    assert "overall sparsity" not in text


def test_unknown_values_and_hostile_labels(saved: tuple[Path, dict[str, Any], Any]) -> None:
    config = copy.deepcopy(saved[1])
    config["base_model"].update(name_or_path="/home/me/model.pt", library="unknown")
    config["id2label"] = {"0": "a|b", "1": "<script>x</script>", "2": "new\nline"}
    config["metrics"] = {"accuracy": 0.5, "dataset": "mnist", "note": "text"}
    config["datasets"] = None
    card = build_model_card(config)
    data = card.data.to_dict()
    assert "base_model" not in data  # a local path is not a Hub id
    assert data["datasets"] == ["mnist"]  # taken from metrics["dataset"]
    assert card.data.eval_results[0].metric_value == 0.5
    text = card.text
    assert "base = ..." in text and "path/to/this/folder" in text
    assert "a\\|b" in text and "<script>" not in text and "new line" in text


def test_metrics_without_a_dataset_stay_out_of_the_model_index(
    saved: tuple[Path, dict[str, Any], Any],
) -> None:
    config = copy.deepcopy(saved[1])
    config["datasets"], config["metrics"] = None, {"val_accuracy": 0.7}
    card = build_model_card(config, "a/b")
    assert card.data.eval_results is None
    assert "| val_accuracy | 0.7000 |" in card.text


def test_transformers_usage_snippet(tmp_path: Path) -> None:
    get_piggyback_model(tiny_transformers("vit"), PiggybackConfig(num_labels=2)).save_pretrained(
        tmp_path, write_card=False
    )
    config = read_adapter_config(tmp_path)
    # As if trained on the Hub checkpoint's own weights (tests/test_hub_models.py makes such
    # artifacts from a local Hub server).
    config["base_model"].update(
        name_or_path="org/vit-base", revision="abc123", weights="pretrained"
    )
    card = build_model_card(config, "org/vit-task")
    assert 'from_pretrained("org/vit-base", revision="abc123")' in card.text
    assert "model(pixel_values=images).logits" in card.text
    assert "transformers" in card.data.tags and card.data.base_model == "org/vit-base"


@pytest.mark.parametrize("weights", ["random", "modified", "unknown", None])
def test_only_pretrained_weights_get_a_hub_base_model(tmp_path: Path, weights: str | None) -> None:
    get_piggyback_model(tiny_transformers("vit"), PiggybackConfig(num_labels=2)).save_pretrained(
        tmp_path, write_card=False
    )
    config = read_adapter_config(tmp_path)
    config["base_model"].update(name_or_path="org/vit-base", checkpoint="org/vit-base")
    config["base_model"].pop("weights")
    if weights is not None:  # None: an artifact written before the weights were recorded
        config["base_model"]["weights"] = weights
    card = build_model_card(config, "org/vit-task")
    assert card.data.base_model is None and "base_model_relation" not in card.data.to_dict()
    assert "AutoModelForImageClassification" not in card.text and "base = ..." in card.text
    assert "huggingface.co/org/vit-base" not in card.text
    assert hub_config(config)["base_model_weights"] == weights


def test_demo_backbone_usage_snippet_builds_the_shipped_backbone(tmp_path: Path) -> None:
    from pb_adapters.demo_base import DEMO_BASE_MODEL_ID, load_demo_backbone
    from tests.factories import tiny_timm

    get_piggyback_model(load_demo_backbone(), PiggybackConfig(num_labels=2)).save_pretrained(
        tmp_path / "demo"
    )
    card = (tmp_path / "demo" / "README.md").read_text()
    assert "base = load_demo_backbone()" in card and "timm.create_model" not in card
    # Naming the demo base in the config does not make other weights the demo's.
    config = PiggybackConfig(num_labels=2, base_model_name_or_path=DEMO_BASE_MODEL_ID)
    get_piggyback_model(tiny_timm("test_resnet"), config).save_pretrained(tmp_path / "tiny")
    card = (tmp_path / "tiny" / "README.md").read_text()
    assert "load_demo_backbone" not in card and DEMO_BASE_MODEL_ID not in card
    assert 'timm.create_model("test_resnet", pretrained=False)' in card


_CARD_IMPORTS = """
import sys
from pb_adapters.card import build_model_card, write_model_card
from pb_adapters.serialization import read_adapter_config

heavy = ("pb_adapters.training", "timm", "torchvision", "transformers", "PIL")
def loaded():
    return sorted({m.split(".")[0] if not m.startswith("pb_adapters") else m for m in sys.modules
                   if m.startswith(heavy)})
print("import", loaded())
build_model_card(read_adapter_config(sys.argv[1]))
print("card", loaded())
write_model_card(sys.argv[1])
print("write", [m for m in loaded() if m != "PIL"], "matplotlib" in sys.modules)
"""


def test_writing_a_card_imports_no_training_code_and_no_model_library(tmp_path: Path) -> None:
    from pb_adapters.demo_base import load_demo_backbone

    get_piggyback_model(load_demo_backbone(), PiggybackConfig(num_labels=2)).save_pretrained(
        tmp_path, write_card=False
    )
    run = subprocess.run(
        [sys.executable, "-c", _CARD_IMPORTS, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    # The plot goes through matplotlib, which writes PNG files with Pillow: only then is PIL loaded.
    assert run.stdout.splitlines() == ["import []", "card []", "write [] True"]
    assert "base = load_demo_backbone()" in (tmp_path / "README.md").read_text()
