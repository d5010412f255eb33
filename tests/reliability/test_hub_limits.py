"""Files too large for what their config declares are refused from the Hub's metadata, before
they are downloaded or cached.

A repository on the local Hub holds a consistent artifact whose weights file is padded to
24 MiB (its config records the padded file's hash), a config of 9 MiB, or a 17 MiB README. Every
entry point that downloads (``resolve_adapter_folder``, ``from_pretrained``, ``load_adapter``,
``download_adapter``, ``pb-adapters info`` and ``download``) must refuse with an
:class:`~pb_adapters.errors.ArtifactError` and never request the file's content: the server's
request log shows no GET of it, and no file of its size lands in the cache or the target folder.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import HfApi
from torch import nn

from pb_adapters import PiggybackModel, cli
from pb_adapters.errors import ArtifactError
from pb_adapters.hub import download_adapter, push_folder_to_hub, resolve_adapter_folder
from pb_adapters.utils import console
from tests.factories import tiny_timm
from tests.hub_server import LocalHub
from tests.reliability.artifacts import (
    CONFIG,
    WEIGHTS,
    artifact_files,
    join_safetensors,
    micro_base,
    model_state,
    rehash,
    same_state,
    split_safetensors,
    trained,
    write_files,
)

OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()
BIG = 24 * 1024 * 1024


def _upload(hub: LocalHub, files: dict[str, bytes], folder: Path) -> str:
    repo_id = hub.new_repo_id("limits")
    write_files(folder, files)
    for name, data in files.items():
        if name not in (CONFIG, WEIGHTS):
            (folder / name).write_bytes(data)
    HfApi().create_repo(repo_id, token=hub.token)
    HfApi().upload_folder(repo_id=repo_id, folder_path=folder, path_in_repo="t", token=hub.token)
    return repo_id


def _oversized_weights() -> dict[str, bytes]:
    files = artifact_files(trained("binary"))
    header, data = split_safetensors(files[WEIGHTS])
    return rehash({**files, WEIGHTS: join_safetensors(header, data) + b"\0" * BIG})


def _oversized_config() -> dict[str, bytes]:
    files = artifact_files(trained("binary"))
    config = json.loads(files[CONFIG])
    config["metrics"] = {"padding": "x" * (9 * 1024 * 1024)}
    return {**files, CONFIG: json.dumps(config).encode()}


def _oversized_card() -> dict[str, bytes]:
    card = b"---\nlicense: mit\n---\n" + b"#" * (17 * 1024 * 1024)
    return {**artifact_files(trained("binary")), "README.md": card}


ENTRIES: dict[str, Callable[[str, Path], Any]] = {
    "resolve_adapter_folder": lambda repo, out: resolve_adapter_folder(repo, subfolder="t"),
    "from_pretrained": lambda repo, out: PiggybackModel.from_pretrained(
        micro_base(), repo, subfolder="t"
    ),
    "load_adapter": lambda repo, out: trained("binary", "resident").load_adapter(
        repo, "probe", subfolder="t"
    ),
    "download_adapter": lambda repo, out: download_adapter(repo, subfolder="t", local_dir=out),
    "download_adapter (cache)": lambda repo, out: download_adapter(repo, subfolder="t"),
}


def _fetched(hub: LocalHub, name: str) -> list[str]:
    """Content requests for ``name`` (LFS content is fetched from the fake CDN)."""
    return [
        path
        for method, path in hub.requests
        if method == "GET" and (path.split("?")[0].endswith(f"t/{name}") or "/__cdn/" in path)
    ]


def _large_files(*roots: Path) -> list[Path]:
    return [
        p
        for root in roots
        if root.exists()
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size > 8 * 1024 * 1024
    ]


@pytest.mark.parametrize(
    "make, name, entries",
    [
        (_oversized_weights, WEIGHTS, list(ENTRIES)),
        (_oversized_config, CONFIG, list(ENTRIES)),
        (_oversized_card, "README.md", ["download_adapter", "download_adapter (cache)"]),
    ],
    ids=["weights", "config", "card"],
)
def test_oversized_files_are_refused_undownloaded(
    hub: LocalHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[], dict[str, bytes]],
    name: str,
    entries: list[str],
) -> None:
    repo_id = _upload(hub, make(), tmp_path / "upload")
    cache = Path(os.environ["HF_HUB_CACHE"])
    for entry in entries:
        hub.clear_requests()
        with pytest.raises(ArtifactError, match="not downloaded"):
            ENTRIES[entry](repo_id, tmp_path / "out")
        assert _fetched(hub, name) == [], entry
        assert _large_files(cache) == [], entry
        assert not (tmp_path / "out").exists(), entry  # nothing written for the caller
        OUTCOMES[(f"oversized {name}", f"refused ({entry})")] += 1
    commands = [["info", repo_id, "--subfolder", "t"]]
    commands.append(["download", repo_id, "--subfolder", "t", "--local-dir", str(tmp_path / "o")])
    for argv in commands:
        if name == "README.md" and argv[0] == "info":
            continue  # info fetches the artifact only
        hub.clear_requests()
        capsys.readouterr()  # drop the upload's progress bars
        assert cli.main(argv) == console.EXIT_USAGE
        err = capsys.readouterr().err
        assert "not downloaded" in err and len(err.strip().splitlines()) == 1
        assert _fetched(hub, name) == []
        OUTCOMES[(f"oversized {name}", f"refused (pb-adapters {argv[0]})")] += 1
    assert _large_files(cache) == [] and not (tmp_path / "o").exists()


def test_an_artifact_for_another_base_is_refused_before_its_weights(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo_id = hub.new_repo_id("other-base")
    folder = tmp_path / "artifact"
    write_files(folder, artifact_files(trained("binary")))
    push_folder_to_hub(folder, repo_id, token=hub.token, subfolder="t", write_card=False)
    wider = micro_base()
    wider.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # the same names, another shape
    for target in (tiny_timm("test_resnet"), wider):
        before = model_state(target)
        hub.clear_requests()
        with pytest.raises(ArtifactError):
            PiggybackModel.from_pretrained(target, repo_id, subfolder="t")
        assert same_state(before, model_state(target))
        assert _fetched(hub, WEIGHTS) == []  # checked against the base from the config alone
        OUTCOMES[("artifact for another base", "refused")] += 1


def test_report() -> None:
    """Print the cases of this module (run with ``-s``)."""
    print(dict(sorted(OUTCOMES.items())))
