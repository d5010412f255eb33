"""Hub integration: name checks, downloads, pushes and error messages, against the local Hub."""

from __future__ import annotations

import http.server
import importlib
import importlib.util
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import HfApi, constants
from safetensors.torch import load_file

from pb_adapters import (
    ArtifactError,
    HubConnectionError,
    HubError,
    PiggybackConfig,
    PiggybackModel,
    get_piggyback_model,
)
from pb_adapters.hub import (
    ARTIFACT_FILES,
    download_adapter,
    is_local_reference,
    push_folder_to_hub,
    resolve_adapter_folder,
    validate_revision,
    validate_subfolder,
)
from pb_adapters.hub_errors import translate
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME, ARTIFACT_WEIGHTS_NAME
from tests.factories import logits, tiny_timm
from tests.hub_server import LocalHub


def make_model(seed: int = 0, num_labels: int = 3) -> PiggybackModel:
    """A tiny wrapped timm model whose masks are partly off (as after training)."""
    labels = {i: f"class-{i}" for i in range(num_labels)}
    model = get_piggyback_model(
        tiny_timm("test_resnet", seed=0), PiggybackConfig(num_labels=num_labels, id2label=labels)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameter_groups()["masks"]:
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
        for param in model.parameter_groups()["head"]:
            param.add_(torch.randn(param.shape, generator=generator))
    return model.eval()


def make_artifact(folder: Path, seed: int = 0, **save_kwargs: Any) -> Path:
    """Save a tiny adapter artifact (without a card unless asked) into ``folder``; return it."""
    save_kwargs.setdefault("write_card", False)
    make_model(seed).save_pretrained(folder, **save_kwargs)
    return folder


def _bytes(folder: Path, names: tuple[str, ...] = ARTIFACT_FILES) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact folder shared by the tests of this module (treat it as read-only)."""
    return make_artifact(tmp_path_factory.mktemp("artifact"))


# ---------------------------------------------------------------------------- name checks
@pytest.mark.parametrize(
    "bad",
    [
        "..",
        "../x",
        "a/../b",
        "a/..",
        "/etc",
        "a\\b",
        "..\\x",
        "C:/x",
        "a//b",
        ".hidden",
        "a/.git",
        "-rf",
        "tâche",
        "tas\u202ek",
        "a\x00b",
        "a\nb",
        "a b",
        "x" * 201,
        "/".join(["a"] * 9),
    ],
)
def test_bad_subfolders_are_refused(bad: str) -> None:
    with pytest.raises(HubError):
        validate_subfolder(bad)


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, None), ("", None), ("task", "task"), ("tasks/cars_v1.2-b/", "tasks/cars_v1.2-b")],
)
def test_good_subfolders_are_canonical(given: str | None, expected: str | None) -> None:
    assert validate_subfolder(given) == expected


@pytest.mark.parametrize("bad", ["../main", "a..b", "/main", "main/", "x\x00", "tag~1", "a b"])
def test_bad_revisions_are_refused(bad: str) -> None:
    with pytest.raises(HubError):
        validate_revision(bad)


@pytest.mark.parametrize("good", [None, "main", "v2", "refs/pr/3", "release-1.0", "a" * 40])
def test_good_revisions_pass(good: str | None) -> None:
    assert validate_revision(good) == good


def test_local_references(tmp_path: Path) -> None:
    assert is_local_reference(tmp_path)
    assert is_local_reference(str(tmp_path))
    assert is_local_reference("./x") and is_local_reference("a/b/c")
    assert not is_local_reference("user/task")


def test_refusals_happen_before_any_request(hub: LocalHub) -> None:
    hub.clear_requests()
    for kwargs in ({"subfolder": "../../x"}, {"revision": "../x"}):
        with pytest.raises(HubError):
            resolve_adapter_folder("user/task", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(HubError, match="repo id"):
        resolve_adapter_folder("bad--name")
    assert hub.requests == []


# ---------------------------------------------------------------------------- local folders
def test_local_folder_is_returned_as_is(artifact: Path, tmp_path: Path) -> None:
    assert resolve_adapter_folder(artifact) == artifact
    (tmp_path / "task").mkdir()
    assert resolve_adapter_folder(tmp_path, subfolder="task") == tmp_path / "task"
    with pytest.raises(ArtifactError):
        resolve_adapter_folder(tmp_path / "missing")
    with pytest.raises(HubError):
        resolve_adapter_folder(tmp_path, subfolder="../task")


# ---------------------------------------------------------------------------- round trips
def test_push_then_resolve_is_bit_identical_and_fetches_only_the_artifact(
    hub: LocalHub, artifact: Path
) -> None:
    repo_id = hub.new_repo_id("task")
    url = push_folder_to_hub(artifact, repo_id, token=hub.token)
    assert url.startswith(f"{hub.endpoint}/{repo_id}/commit/")
    files = HfApi().list_repo_files(repo_id)
    assert {*ARTIFACT_FILES, "README.md", "config.json"} <= set(files)
    assert not (artifact / "README.md").exists()  # the card was staged, the source untouched

    hub.clear_requests()
    folder = resolve_adapter_folder(repo_id)
    assert _bytes(folder) == _bytes(artifact)
    assert sorted(p.name for p in folder.iterdir()) == sorted(ARTIFACT_FILES)
    fetched = {path.rsplit("/", 1)[-1] for method, path in hub.requests if "/resolve/" in path}
    assert fetched == set(ARTIFACT_FILES)
    # Both files come from one commit: the snapshot folder is named after it.
    assert folder.name == HfApi().model_info(repo_id).sha


def test_model_outputs_survive_a_hub_round_trip(hub: LocalHub, tmp_path: Path) -> None:
    model = make_model(seed=3)
    repo_id = hub.new_repo_id("model")
    model.push_to_hub(repo_id, token=hub.token, subfolder="cars", private=True)
    reloaded = PiggybackModel.from_pretrained(
        tiny_timm("test_resnet", seed=0), repo_id, subfolder="cars", token=hub.token
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(logits(model(x)), logits(reloaded(x)))
    card = download_adapter(repo_id, subfolder="cars", token=hub.token) / "README.md"
    assert (
        f'PiggybackModel.from_pretrained(base, "{repo_id}", subfolder="cars")' in card.read_text()
    )
    # What the Hub serves holds exactly what a local save holds. (Two separate saves are
    # compared by content: the safetensors header's metadata order may differ between saves.)
    local = model.save_pretrained(tmp_path / "local", repo_id=repo_id, subfolder="cars")
    served = resolve_adapter_folder(repo_id, subfolder="cars", token=hub.token)
    served_tensors = load_file(served / ARTIFACT_WEIGHTS_NAME)
    local_tensors = load_file(local / ARTIFACT_WEIGHTS_NAME)
    assert served_tensors.keys() == local_tensors.keys()
    assert all(torch.equal(served_tensors[k], local_tensors[k]) for k in served_tensors)
    configs = [json.loads((f / ARTIFACT_CONFIG_NAME).read_text()) for f in (served, local)]
    for config in configs:
        config.pop("weights_sha256")
    assert configs[0] == configs[1]


def test_several_tasks_in_subfolders_of_one_repo(hub: LocalHub, tmp_path: Path) -> None:
    repo_id = hub.new_repo_id("multi")
    one = make_artifact(tmp_path / "one", seed=1)
    two = make_artifact(tmp_path / "two", seed=2)
    push_folder_to_hub(one, repo_id, token=hub.token, subfolder="tasks/one")
    push_folder_to_hub(two, repo_id, token=hub.token, subfolder="tasks/two")
    got_one = resolve_adapter_folder(repo_id, subfolder="tasks/one")
    got_two = resolve_adapter_folder(repo_id, subfolder="tasks/two")
    assert _bytes(got_one) == _bytes(one) and _bytes(got_two) == _bytes(two)
    assert _bytes(got_one) != _bytes(got_two)
    files = HfApi().list_repo_files(repo_id)
    assert not any(f.startswith(ARTIFACT_CONFIG_NAME) for f in files)  # nothing at the root

    # Re-pushing one task replaces its files and leaves the other task alone.
    (one / "config.json").write_text("{}")
    push_folder_to_hub(one, repo_id, token=hub.token, subfolder="tasks/one", write_card=False)
    (one / "config.json").unlink()
    push_folder_to_hub(one, repo_id, token=hub.token, subfolder="tasks/one", write_card=False)
    files = HfApi().list_repo_files(repo_id)
    assert "tasks/one/config.json" not in files  # stale copy deleted in the same commit
    assert "tasks/two/config.json" in files and "tasks/one/README.md" not in files


def test_branches_and_commit_revisions(hub: LocalHub, tmp_path: Path) -> None:
    repo_id = hub.new_repo_id("rev")
    v1 = make_artifact(tmp_path / "v1", seed=1)
    v2 = make_artifact(tmp_path / "v2", seed=2)
    first = push_folder_to_hub(v1, repo_id, token=hub.token)
    second = push_folder_to_hub(v2, repo_id, token=hub.token, revision="experiment")
    assert {b.name for b in HfApi().list_repo_refs(repo_id).branches} == {"main", "experiment"}
    assert _bytes(resolve_adapter_folder(repo_id)) == _bytes(v1)
    assert _bytes(resolve_adapter_folder(repo_id, revision="experiment")) == _bytes(v2)
    assert _bytes(resolve_adapter_folder(repo_id, revision=first.oid)) == _bytes(v1)  # type: ignore[attr-defined]
    assert _bytes(resolve_adapter_folder(repo_id, revision=second.oid)) == _bytes(v2)  # type: ignore[attr-defined]


def test_pushing_the_same_folder_twice_makes_no_new_commit(hub: LocalHub, artifact: Path) -> None:
    repo_id = hub.new_repo_id("noop")
    first = push_folder_to_hub(artifact, repo_id, token=hub.token)
    second = push_folder_to_hub(artifact, repo_id, token=hub.token)
    assert first.oid == second.oid  # type: ignore[attr-defined]


def test_create_pr_leaves_main_alone(hub: LocalHub, tmp_path: Path) -> None:
    repo_id = hub.new_repo_id("pr")
    v1 = make_artifact(tmp_path / "v1", seed=1)
    v2 = make_artifact(tmp_path / "v2", seed=2)
    push_folder_to_hub(v1, repo_id, token=hub.token)
    info = push_folder_to_hub(v2, repo_id, token=hub.token, create_pr=True)
    assert info.pr_url.endswith("/discussions/1")  # type: ignore[attr-defined]
    assert _bytes(resolve_adapter_folder(repo_id)) == _bytes(v1)
    assert _bytes(resolve_adapter_folder(repo_id, revision="refs/pr/1")) == _bytes(v2)
    with pytest.raises(HubError, match="create_pr"):
        push_folder_to_hub(v2, repo_id, token=hub.token, create_pr=True, revision="dev")


def test_existing_card_is_kept_and_validated(hub: LocalHub, artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "with-card"
    folder.mkdir()
    for name in ARTIFACT_FILES:
        (folder / name).write_bytes((artifact / name).read_bytes())
    (folder / "README.md").write_text("---\nlibrary_name: pb-adapters\n---\n# my own card\n")
    repo_id = hub.new_repo_id("card")
    push_folder_to_hub(folder, repo_id, token=hub.token)
    card = download_adapter(repo_id) / "README.md"
    assert card.read_text().endswith("# my own card\n")
    assert HfApi().model_info(repo_id).library_name == "pb-adapters"


def test_generated_card_is_indexed_by_the_hub(hub: LocalHub, tmp_path: Path) -> None:
    folder = make_artifact(tmp_path / "art", metrics={"test_accuracy": 0.5}, datasets=["mnist"])
    repo_id = hub.new_repo_id("indexed")
    push_folder_to_hub(folder, repo_id, token=hub.token, private=True)
    info = HfApi().model_info(repo_id, token=hub.token)
    assert info.private is True
    assert info.library_name == "pb-adapters" and info.pipeline_tag == "image-classification"
    assert {"pb-adapters", "piggyback", "timm"} <= set(info.tags)
    assert info.card_data.datasets == ["mnist"]
    assert info.config["library_name"] == "pb-adapters"


def test_download_adapter_fetches_one_task(hub: LocalHub, tmp_path: Path) -> None:
    repo_id = hub.new_repo_id("dl")
    one = make_artifact(tmp_path / "one", seed=1)
    push_folder_to_hub(one, repo_id, token=hub.token, subfolder="one")
    push_folder_to_hub(make_artifact(tmp_path / "two", seed=2), repo_id, token=hub.token,
                       subfolder="two")  # fmt: skip
    folder = download_adapter(repo_id, subfolder="one", local_dir=tmp_path / "out")
    assert folder == tmp_path / "out" / "one"
    assert _bytes(folder) == _bytes(one)
    assert (folder / "README.md").is_file() and (folder / "config.json").is_file()
    assert not (tmp_path / "out" / "two").exists()
    with pytest.raises(HubError, match="found: one/, two/"):
        download_adapter(repo_id)


# ---------------------------------------------------------------------------- errors
def test_missing_repo_says_it_may_be_private(hub: LocalHub) -> None:
    with pytest.raises(HubError, match=r"not found.*private.*token") as err:
        resolve_adapter_folder(hub.new_repo_id("absent"))
    assert err.value.__cause__ is not None
    assert "\n" not in str(err.value)


def test_private_repo_with_and_without_token(hub: LocalHub, artifact: Path) -> None:
    repo_id = hub.new_repo_id("secret")
    push_folder_to_hub(artifact, repo_id, token=hub.token, private=True)
    with pytest.raises(HubError, match="hf auth login"):
        resolve_adapter_folder(repo_id, token=False)
    with pytest.raises(HubError, match="rejected the token"):
        resolve_adapter_folder(repo_id, token="hf_not_a_real_token")
    assert _bytes(resolve_adapter_folder(repo_id, token=hub.token)) == _bytes(artifact)


def test_token_from_environment_is_used(
    hub: LocalHub, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_id = hub.new_repo_id("env-token")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    push_folder_to_hub(artifact, repo_id, private=True)
    assert _bytes(resolve_adapter_folder(repo_id)) == _bytes(artifact)


def test_gated_repo_message(hub: LocalHub, artifact: Path) -> None:
    repo_id = hub.new_repo_id("gated")
    push_folder_to_hub(artifact, repo_id, token=hub.token)
    hub.set_gated(repo_id)
    with pytest.raises(HubError, match="gated"):
        resolve_adapter_folder(repo_id, token=hub.add_user("stranger"))


def test_not_an_artifact_lists_what_is_there(hub: LocalHub, tmp_path: Path) -> None:
    repo_id = hub.new_repo_id("other")
    api = HfApi(token=hub.token)
    api.create_repo(repo_id)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# not ours\n")
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path)
    with pytest.raises(
        HubError, match=r"no adapter_config\.json.*pb-adapters artifact.*README\.md"
    ):
        resolve_adapter_folder(repo_id)
    with pytest.raises(HubError, match=r"no sub/adapter_config\.json.*no folder sub.*README"):
        resolve_adapter_folder(repo_id, subfolder="sub")


def test_missing_weights_file_is_named(hub: LocalHub, artifact: Path) -> None:
    repo_id = hub.new_repo_id("half")
    api = HfApi(token=hub.token)
    api.create_repo(repo_id)
    api.upload_file(
        path_or_fileobj=artifact / ARTIFACT_CONFIG_NAME,
        path_in_repo=ARTIFACT_CONFIG_NAME,
        repo_id=repo_id,
    )
    with pytest.raises(HubError, match=ARTIFACT_WEIGHTS_NAME):
        resolve_adapter_folder(repo_id)


def test_unknown_revision(hub: LocalHub, artifact: Path) -> None:
    repo_id = hub.new_repo_id("norev")
    push_folder_to_hub(artifact, repo_id, token=hub.token)
    with pytest.raises(HubError, match="revision 'nope' not found"):
        resolve_adapter_folder(repo_id, revision="nope")


def test_offline_with_an_empty_cache(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HubError, match="local_files_only"):
        resolve_adapter_folder("someone/anything", local_files_only=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.clear_requests()
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        resolve_adapter_folder("someone/anything")
    assert hub.requests == []


def test_offline_with_a_warm_cache(
    hub: LocalHub, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_id = hub.new_repo_id("cached")
    push_folder_to_hub(artifact, repo_id, token=hub.token, subfolder="t")
    online = resolve_adapter_folder(repo_id, subfolder="t")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.clear_requests()
    assert resolve_adapter_folder(repo_id, subfolder="t") == online
    assert resolve_adapter_folder(repo_id, subfolder="t", local_files_only=True) == online
    assert hub.requests == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _point_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    import huggingface_hub.hf_api

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)


def test_connection_refused_is_a_network_error(
    hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.utils._http as hf_http

    _point_at(monkeypatch, f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # skip the client's backoff
    with pytest.raises(HubConnectionError, match="could not reach the Hub") as err:
        resolve_adapter_folder("someone/anything")
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_network_errors_of_the_installed_http_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub 1.x raises httpx's errors and 2.x httpx2's: neither may be assumed present
    from pb_adapters.hub_errors import _network_reason

    clients = [name for name in ("httpx", "httpx2") if importlib.util.find_spec(name)]
    assert clients, "huggingface_hub depends on httpx (1.x) or httpx2 (2.x)"
    for name in clients:
        module = importlib.import_module(name)
        with monkeypatch.context() as patch:
            for other in {"httpx", "httpx2"} - {name}:
                patch.setitem(sys.modules, other, None)  # importing it fails, as if absent
            wrapped = RuntimeError("download failed")
            wrapped.__cause__ = module.ConnectError("connection refused")
            assert _network_reason(wrapped) == "the connection failed"
            assert _network_reason(module.ReadTimeout("slow")) == "the connection timed out"
            protocol = module.RemoteProtocolError("x")
            assert _network_reason(protocol) == "network error (RemoteProtocolError)"
            assert _network_reason(ValueError("not a network error")) is None


@pytest.fixture
def not_a_hub() -> Iterator[str]:
    """An HTTP server that answers 200 to everything, without any Hub header."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_a_hub(
    hub: LocalHub, not_a_hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _point_at(monkeypatch, not_a_hub)
    with pytest.raises(HubError, match="HF_ENDPOINT"):
        resolve_adapter_folder("someone/anything")


def test_push_errors(hub: LocalHub, artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="save_pretrained"):
        push_folder_to_hub(tmp_path, hub.new_repo_id(), token=hub.token)
    with pytest.raises(HubError, match="authentication"):
        push_folder_to_hub(artifact, hub.new_repo_id(), token=False)
    with pytest.raises(HubError, match="403"):
        push_folder_to_hub(artifact, hub.new_repo_id(namespace="elsewhere"), token=hub.token)
    reader = hub.make_token(hub.user, role="read")
    repo_id = hub.new_repo_id("ro")
    push_folder_to_hub(artifact, repo_id, token=hub.token)
    with pytest.raises(HubError, match="cannot write"):
        push_folder_to_hub(artifact, repo_id, token=reader, subfolder="x")
    with pytest.raises(HubError):
        push_folder_to_hub(artifact, repo_id, token=hub.token, subfolder="../x")


def test_push_failures_speak_of_uploads(
    hub: LocalHub, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.utils._http as hf_http

    repo_id = hub.new_repo_id("up")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError) as offline:
        push_folder_to_hub(artifact, repo_id, token=hub.token)
    assert str(offline.value).startswith(f"cannot upload to {repo_id}: uploads need the Hub")
    assert not isinstance(offline.value, HubConnectionError)  # a setting, not a failure
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _point_at(monkeypatch, f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # skip the client's backoff
    with pytest.raises(HubConnectionError) as refused:
        push_folder_to_hub(artifact, repo_id, token=hub.token)
    assert f"to upload to {repo_id}: check your connection" in str(refused.value)
    for message in (str(offline.value), str(refused.value)):
        assert "download" not in message and "cache" not in message


@pytest.mark.parametrize(
    ("status", "direction", "expected", "message"),
    [
        (503, "download", HubConnectionError, "the download of me/x failed (503)"),
        (503, "upload", HubConnectionError, "the upload to me/x failed (503)"),
        (400, "upload", HubError, "the upload to me/x failed (400)"),
    ],
)
def test_server_errors_name_the_direction(
    status: int, direction: str, expected: type, message: str
) -> None:
    import huggingface_hub.utils._http as hf_http
    from huggingface_hub.errors import HfHubHTTPError

    # the response type of the installed huggingface_hub's client: httpx2 (2.x) or httpx (1.x)
    client = getattr(hf_http, "httpx2", None) or hf_http.httpx
    response = client.Response(status, request=client.Request("POST", "http://hub.invalid/api"))
    err = translate(
        HfHubHTTPError(f"{status} error", response=response), repo_id="me/x", direction=direction
    )
    assert type(err) is expected and str(err).startswith(message)


def test_cache_dir_is_honoured(hub: LocalHub, artifact: Path, tmp_path: Path) -> None:
    repo_id = hub.new_repo_id("cache")
    push_folder_to_hub(artifact, repo_id, token=hub.token)
    folder = resolve_adapter_folder(repo_id, cache_dir=tmp_path / "my-cache")
    assert (tmp_path / "my-cache") in folder.parents
    assert _bytes(folder) == _bytes(artifact)
