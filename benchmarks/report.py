"""Render ``docs/benchmarks.md`` from the JSON files in ``benchmarks/results/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import plots
from benchmarks.common import RESULTS_DIR

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
#: Where the plots go, relative to the docs page.
IMAGES = Path("images") / "benchmarks"


def _plot(draw: Any, data: dict[str, Any], alt: str) -> list[str]:
    """Draw ``data`` with ``draw`` next to the docs page; the Markdown line that shows it."""
    path = draw(data, DOCS_PAGE.parent / IMAGES)
    return [f"![{alt}]({(IMAGES / path.name).as_posix()})", ""]


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _machine(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (
        f"*Measured {m['date']} on {m['device']} ({m['cpu_count']} cores, {m['torch_threads']} torch "
        f"threads), torch {m['torch']}, timm {m['timm']}, transformers {m['transformers']}, "
        f"pb-adapters {m['pb_adapters']}.*"
    )


def _ratio(s: dict[str, Any], key: str) -> str:
    return f"{s[key]:.2f}x" if key in s else "-"


def _multitask_rows(name: str, s: dict[str, Any], label: str) -> str:
    large = str(s["batch"])
    precision = s["precision"]
    return (
        f"| {name} | {label} | {s['switch_held_over_forward']:.2f}x | "
        f"{s['switch_packed_over_floor']:.2f}x | {s['mixed_over_one_task']:.2f}x | "
        f"{_ratio(s, 'mixed_fused_over_one_task')} / "
        f"{_ratio(s, 'mixed_per_task_over_one_task')} | "
        f"{precision['1']['fp32']:.2f}x / {precision[large]['fp32']:.2f}x | "
        f"{precision['1']['bf16']:.2f}x / {precision[large]['bf16']:.2f}x | "
        f"{precision['1']['bf16_vs_base_requires_grad']:.2f}x / "
        f"{precision[large]['bf16_vs_base_requires_grad']:.2f}x |"
    )


def multitask_section(data: dict[str, Any]) -> list[str]:
    """Tables for ``multitask-cpu.json`` (and ``multitask-cpu-before.json``, the same run on the
    code before the serving cache, when present)."""
    before_path = RESULTS_DIR / "multitask-cpu-before.json"
    before = json.loads(before_path.read_text()) if before_path.is_file() else None
    first = next(iter(data["models"].values()))["speed"]
    batch = first["batch"]
    start, end = data.get("load_average_start"), data.get("load_average_end")
    load = (
        f" Load average (one minute) {start[0]:.1f} at the start, {end[0]:.1f} at the end, on "
        "its cores; read the ratios with that noise in mind."
        if start and end
        else ""
    )
    if data.get("note"):
        load += f" Runs: {data['note']}."
    lines = [
        "## Many tasks on one base",
        "",
        "`python -m benchmarks.multitask`: random weights, 8 tasks whose masks have "
        f"{data['zero_fraction']:.0%} zeros, 10-class heads, eval mode, 224 px. Each ratio is "
        f"measured side by side in one run (interleaved repeats, medians: {data['repeats']} at "
        f"batch 1, {data['large_repeats']} at batch {batch}).{load}",
        "",
        _machine(data),
        "",
        "Ratios (goals in [Many tasks](multitask.md#serving-many-tasks-fast)): *held* is "
        "`set_adapter` to a task whose weights are held + a batch-1 forward, over a plain "
        "batch-1 forward; *packed* is the same for a task that must be materialised, over a "
        "plain forward plus unpacking and multiplying every masked weight with plain operations "
        f"(the physical floor); *mixed* is a batch of {batch} over the 8 tasks over the same "
        "batch on one task, in the device's default mode (on the CPU one pass per task) and in "
        "each mode (`model.serving.mixed_mode`: one fused pass / one pass per task); "
        "*active ÷ base* at batch 1 / "
        f"{batch}, bf16 under autocast (last column: the base's parameters with "
        "`requires_grad=True`).",
        "",
        "| model | code | held ÷ forward | packed ÷ floor | mixed ÷ one task | "
        "fused / per task | active ÷ base fp32 | bf16 | bf16, base requires grad |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in data["models"].items():
        if before and name in before["models"]:
            lines.append(_multitask_rows(name, before["models"][name]["speed"], "before"))
        lines.append(_multitask_rows(name, result["speed"], "after" if before else "now"))
    lines += [
        "",
        "Times behind the ratios (after):",
        "",
        "| model | plain forward | unpack and multiply | `set_adapter`, held | "
        "`set_adapter`, packed | mixed batch | one task, same batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in data["models"].items():
        s = result["speed"]
        sw, mixed = s["switching_s"], s["mixed_s"]
        lines.append(
            f"| {name} | {_ms(sw['plain_forward'])} | {_ms(sw['unpack_and_multiply'])} | "
            f"{1e6 * sw['set_adapter_held']:.0f} µs | {_ms(sw['set_adapter_packed'])} | "
            f"{_ms(mixed['mixed_held'])} | {_ms(mixed['one_task'])} |"
        )
    lines += [
        "",
        "Tensor operations dispatched (counted with a `TorchDispatchMode`; what a GPU launches "
        f"is about this), a switch and a mixed batch of {batch} over 8 tasks (fused; one pass "
        "per task in the last column):",
        "",
        "| model | code | masked layers | batch-1 forward | switch to a packed task | "
        "switch to a held task | mixed batch ÷ one task | per task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in data["models"].items():
        runs = [("before", before["models"][name]["speed"])] if before else []
        runs.append(("after" if before else "now", result["speed"]))
        for label, s in runs:
            o = s["ops"]
            lines.append(
                f"| {name} | {label} | {o['masked_layers']} | {o['plain_forward']} | "
                f"{o['switch_packed']} | {o['switch_held']} | {o['mixed_batch']} ÷ "
                f"{o['one_task_batch']} = {o['mixed_over_one_task']:.2f}x | "
                f"{o.get('mixed_batch_per_task', '-')} |"
            )
    lines += [
        "",
        "Memory with N tasks loaded (a fresh process each; default budget: only the active "
        "task materialised): the resident set's growth, the bytes the packed masks and heads "
        "take, the materialised weights held, and the base's own weights.",
        "",
        "| model | tasks | RSS increase | before | packed masks | heads | materialised | "
        "base weights |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in data["models"].items():
        earlier = {}
        if before and name in before["models"]:
            earlier = {row["tasks"]: row for row in before["models"][name]["memory"]}
        for row in result["memory"]:
            old = earlier.get(row["tasks"])
            lines.append(
                f"| {name} | {row['tasks']} | {_mib(row['rss_increase_bytes'])} | "
                f"{_mib(old['rss_increase_bytes']) if old else '-'} | "
                f"{_mib(row['packed_mask_bytes'])} | {_mib(row['head_bytes'])} | "
                f"{_mib(row['materialised_bytes'])} | {_mib(row['base_weight_bytes'])} |"
            )
    return [*lines, ""]


def hub_section(data: dict[str, Any]) -> list[str]:
    """Tables for ``hub-cpu.json``."""
    lines = [
        "## Sharing tasks on the Hub",
        "",
        "`python -m benchmarks.hub`, against the test suite's Hub-compatible server on 127.0.0.1 "
        "(git-LFS uploads). One task: masks with 10% zeros and a 10-class head.",
        "",
        _machine(data),
        "",
        "| model | bytes uploaded (push with card) | artifact files | full model weights | "
        "full ÷ uploaded | bits per masked weight |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in data["models"].items():
        u = result["upload"]
        lines.append(
            f"| {name} | {u['request_total_bytes']:,} | {u['artifact_file_bytes']:,} | "
            f"{u['full_task_model_weight_bytes']:,} | {u['full_model_over_upload']:.1f}x | "
            f"{u['adapter_size']['bits_per_masked_weight']:.3f} |"
        )
    lines += [
        "",
        "| model | pull, warm cache | pull, offline cache | local folder | base fingerprint | "
        "one forward (batch 1, 224 px) |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in data["models"].items():
        p = result["pull"]["median_s"]
        lines.append(
            f"| {name} | {_ms(p['hub_pull_warm_cache'])} | {_ms(p['hub_pull_offline_cache'])} | "
            f"{_ms(p['local_folder_load'])} | {_ms(p['base_fingerprint'])} | "
            f"{_ms(p['forward_batch1_224px'])} |"
        )
    return [*lines, ""]


def _pct(spread: dict[str, float]) -> str:
    return f"{100 * spread['mean']:.1f}% ± {100 * spread['std']:.1f}"


def _bytes(row: dict[str, Any]) -> str:
    return f"{row['weights_bytes']['mean']:,.0f}" if "weights_bytes" in row else "-"


def _zeros(row: dict[str, Any]) -> str:
    zeros = row.get("mask_zeros_fraction") or row.get("pruned_fraction")
    return f"{100 * zeros['mean']:.2f}%" if zeros else "-"


def _ratios(ratios: dict[str, float]) -> str:
    return ", ".join(f"{ratio:.0%} on {task}" for task, ratio in ratios.items()) or "-"


def _recipes(recipes: dict[str, list[str]]) -> str:
    return "; ".join(f"{m}: `{' '.join(args)}`" for m, args in recipes.items()) or "none"


def _accuracy_row(r: dict[str, Any]) -> str:
    ratio = r.get("step_time_ratio")
    bits = r.get("bits_per_backbone_weight")
    return (
        f"| {r['method']} | {_pct(r['test_accuracy'])} | "
        f"{_pct(r['validation_accuracy']) if 'validation_accuracy' in r else '-'} | "
        f"{_bytes(r)} | {f'{bits:.3f}' if bits is not None else '-'} | "
        f"{f'{ratio:.2f}' if ratio is not None else '-'} | "
        f"{_zeros(r)} | {r['train_seconds']['mean']:.0f} s |"
    )


def accuracy_section(data: dict[str, Any]) -> list[str]:
    """Tables for ``accuracy-cpu.json``: accuracy and bytes per task of every method."""
    budget = data["budget"]
    lines = [
        "## Accuracy against bytes per task",
        "",
        '`python -m benchmarks.accuracy` (needs `pip install "pb-adapters[benchmarks]"` for '
        f"PEFT's LoRA): {data['model']}, every row with the same budget ({budget['epochs']} "
        f"epochs, {budget['max_train']} training images, batch {budget['batch_size']}, "
        f"{budget['image_size']} px, Adam, x0.1 at the midpoint, best epoch on validation), "
        "test top-1 as mean ± standard deviation over "
        f"{data['rows'][0]['seeds']} seeds (the seed sets the data split, the head's "
        "initialisation, shuffling and augmentation). *rotated-digits* rotates every digit by a "
        "random angle in [-90, 90] degrees.",
        "",
        "*bytes/task* is the safetensors file a task stores (masks and head; LoRA's adapter and "
        "head as PEFT saves it; the whole model for fine-tuning; PackNet's packed network, "
        "shared by all the tasks packed into it); *bits/weight* is that file in bits per "
        "backbone weight. *step* is the median training step time divided by piggyback's, "
        "measured side by side. *zeros* is the fraction of mask entries switched off (PackNet: "
        "the fraction pruned). LoRA adapts every non-depthwise convolution (alpha = 2 x rank, "
        "lr 1e-3) and keeps the norm layers frozen, as the masks do. PackNet prunes "
        f"{_ratios(data.get('packnet_prune_ratio') or {})} of each layer (chosen on validation, "
        "`python -m benchmarks.recipes`). The adapter rows use the options chosen there "
        f"({_recipes(data.get('recipes') or {})}); *piggyback (official lr)* is the official "
        "mask learning rate 1e-4 with everything masked. On a CPU the weight gradient of the "
        "depthwise convolutions is a large part of a step, so rows that do not train through "
        "them (head, LoRA, piggyback's recipe) step faster; on a GPU the ratios may differ (not measured here).",
        "",
        _machine(data),
        "",
        *_plot(plots.accuracy_plot, data, "test accuracy against bytes stored per task"),
    ]
    header = [
        "| method | test top-1 | validation top-1 | bytes/task | bits/weight | step | zeros | "
        "training time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in data["rows"]):
        lines += [f"### {task}", "", *header]
        lines += [_accuracy_row(r) for r in data["rows"] if r["task"] == task]
        lines.append("")
    return lines


def recipes_section(data: dict[str, Any]) -> list[str]:
    """Table for ``recipes-cpu.json``: the validation grid behind the defaults."""
    budget = data["budget"]
    lines = [
        "## Recipe search (validation)",
        "",
        "`python -m benchmarks.recipes`: the candidates behind the methods' defaults and the "
        f"accuracy table's settings, at the same budget ({budget['epochs']} epochs, "
        f"{budget['max_train']} training images, {budget['image_size']} px). Chosen on "
        "validation top-1; test top-1 is shown for the record only.",
        "",
        _machine(data),
        "",
        "| candidate | task | seeds | validation top-1 | test top-1 | zeros | bytes/task |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['method']} | {r['task']} | {r['seeds']} | "
            f"{_pct(r['validation_accuracy']) if 'validation_accuracy' in r else '-'} | "
            f"{_pct(r['test_accuracy'])} | {_zeros(r)} | "
            f"{_bytes(r)} |"
        )
    return [*lines, ""]


def lora_demo_section(data: dict[str, Any]) -> list[str]:
    """Line for ``lora-demo-cpu.json``: PEFT LoRA with the demo's data and budget."""
    b, r = data["budget"], data["run"]
    return [
        "### LoRA at the demo's budget",
        "",
        "`python -m benchmarks.accuracy --lora-demo 4`: the demo's split (3,500 / 500 / 1,000 "
        f"digits), {b['image_size']} px, {b['epochs']} epochs, batch {b['batch_size']}, seed "
        f"{b['seed']}: {r['method']} reached {100 * r['test_accuracy']:.1f}% test top-1 (best "
        f"validation {100 * r['validation_accuracy']:.1f}%, epoch {r['best_epoch']}) with a "
        f"{r['weights_bytes']:,}-byte adapter. Compare the demo's methods in the README and "
        "the method pages (same split, seed and budget).",
        "",
        _machine(data),
        "",
    ]


def training_section(data: dict[str, Any]) -> list[str]:
    """Tables for ``training-cpu.json``: each method's step time and peak memory vs fine-tuning."""
    lines = [
        "## Training cost",
        "",
        "`python -m benchmarks.training`: one training step (forward, loss, backward with the DDP "
        "all-reduce, optimiser step over the trainer's parameter groups) of "
        f"{data['model']}, same batch per process, each configuration in fresh processes run one "
        "after another; peak memory is the growth of the resident set during the steps (largest "
        "rank). Ratios are to full fine-tuning with the same number of processes and input size.",
        "",
        _machine(data),
        "",
        *_plot(plots.training_cost_plot, data, "step time and peak memory versus fine-tuning"),
        "| input | processes | method | trainable parameters | step | step vs fine-tuning "
        "| peak memory growth | memory vs fine-tuning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['image_size']} px x {r['batch_per_process']} | {r['processes']} | "
            f"{r['method']} | {r['trainable_parameters']:,} | {_ms(r['step_seconds'])} | "
            f"{r['step_time_ratio_vs_finetune']:.2f}x | {_mib(r['peak_growth_bytes'])} | "
            f"{r['peak_memory_ratio_vs_finetune']:.2f}x |"
        )
    return [*lines, ""]


def storage_section(data: dict[str, Any]) -> list[str]:
    """Tables for ``storage-cpu.json``."""
    masks = data["masks"]
    compressors = [
        k
        for k in next(iter(masks.values()))["size"]["bits_per_masked_weight"]
        if k not in ("entropy", "ans", "bitpack")
    ]
    lines = [
        "## Mask storage: entropy coding",
        "",
        "`python -m benchmarks.storage`: the 49 masked layers of the demo's ImageNet "
        "EfficientNet-Lite0, masks with a fraction of zeros at random positions, and "
        + (
            "the mask learned by `examples/train.py` (test accuracy "
            f"{(data['learned_artifact']['metrics'] or {}).get('test_accuracy', 'unknown')}). "
            if "learned_artifact" in data
            else "no learned mask (none was found in `outputs/`). "
        )
        + "Bits per masked weight, summed over layers: the order-0 entropy "
        "(`n * H(zeros / n)` per layer), the artifact's `ans` coding (with its per-layer "
        "fallback to packing), bit packing, and general-purpose compressors on the packed bytes. "
        f"`in bound`: every coded layer within 5% of its entropy plus {data['header_allowance_bytes']} "
        "bytes; `overhead`: the largest number of bytes a coded layer spends above its entropy.",
        "",
        _machine(data),
        "",
        *_plot(plots.storage_plot, data, "bits per masked weight against the fraction of zeros"),
        "| mask | zeros | entropy | ans | ans ÷ entropy | bitpack | "
        + " | ".join(compressors)
        + " | in bound | overhead |",
        "|---" * (8 + len(compressors)) + "|",
    ]
    for label, row in masks.items():
        size = row["size"]
        bits = size["bits_per_masked_weight"]
        lines.append(
            f"| {label} | {size['zero_fraction']:.3%} | {bits['entropy']:.4f} | {bits['ans']:.4f} | "
            f"{size['over_entropy']['ans']:.4f} | {bits['bitpack']:.4f} | "
            + " | ".join(f"{bits[c]:.4f}" for c in compressors)
            + f" | {'yes' if size['all_coded_layers_within_bound'] else 'NO'} | "
            f"{size['max_layer_overhead_bytes']:.1f} B |"
        )
    lines += [
        "",
        f"Coding speed (one thread, every plane of the model, median of {data['repeats']}), and "
        "`PiggybackModel.from_pretrained(base, folder)` of the same task saved bit-packed and "
        "entropy-coded, timed interleaved (warm file cache, a fresh copy of the base per load).",
        "",
        "| mask | encode | decode |",
        "|---|---|---|",
    ]
    for label, row in masks.items():
        ns = row["speed"]["ns_per_masked_weight"]
        med = row["speed"]["median_s"]
        lines.append(
            f"| {label} | {_ms(med['encode'])} ({ns['encode']:.1f} ns/weight) | "
            f"{_ms(med['decode'])} ({ns['decode']:.1f} ns/weight) |"
        )
    lines += [
        "",
        "| mask | artifact, bitpack | artifact, ans | load, bitpack | load, ans | ans ÷ bitpack |",
        "|---|---|---|---|---|---|",
    ]
    for label, load in data["load"].items():
        med = load["median_s"]
        files = load["artifact_bytes"]
        lines.append(
            f"| {label} | {files['bitpack']:,} B | {files['ans']:,} B | {_ms(med['bitpack'])} | "
            f"{_ms(med['ans'])} | {load['ans_over_bitpack']:.3f} |"
        )
    return [*lines, ""]


def determinism_section(data: dict[str, Any]) -> list[str]:
    """``determinism-cpu.json``: a training step with and without ``--deterministic``."""
    times = data["step_seconds"]
    return [
        "## What `--deterministic` costs",
        "",
        "`python -m benchmarks.determinism`: piggyback training steps of the demo backbone "
        f"(batch {data['batch']} at {data['image_size']} px, forward, backward and Adam), "
        "inside and outside deterministic algorithms in alternation (medians of "
        f"{data['repeats']}).",
        "",
        _machine(data),
        "",
        "| default step | deterministic step | deterministic ÷ default | the same without "
        "filling new tensors |",
        "|---|---|---|---|",
        f"| {_ms(times['default'])} | {_ms(times['deterministic'])} | "
        f"{data['deterministic_over_default']:.3f} | {_ratio(data, 'without_fill_over_default')} |",
        "",
    ]


SECTIONS = {
    "accuracy-cpu": accuracy_section,
    "lora-demo-cpu": lora_demo_section,
    "recipes-cpu": recipes_section,
    "training-cpu": training_section,
    "determinism-cpu": determinism_section,
    "multitask-cpu": multitask_section,
    "hub-cpu": hub_section,
    "storage-cpu": storage_section,
}


def render() -> Path:
    """Write ``docs/benchmarks.md`` from every result file present."""
    lines = [
        "# Benchmarks",
        "",
        "Every figure below was measured by the command named in its section and is recomputed "
        "when it runs again; the raw numbers, with the machine and versions, are in "
        "`benchmarks/results/*.json`. Speed claims are ratios measured side by side in one run.",
        "",
    ]
    for name, section in SECTIONS.items():
        path = RESULTS_DIR / f"{name}.json"
        if path.is_file():
            lines += section(json.loads(path.read_text()))
    DOCS_PAGE.write_text("\n".join(lines))
    return DOCS_PAGE


if __name__ == "__main__":
    print(render())
