"""The local Hub server against the real ``huggingface_hub`` client."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import LocalHub, git_blob_sha1, point_client_at


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".cache" not in p.parts
    }


FILES = {
    "config.json": b'{"a": 1}\n',
    "weights.safetensors": os.urandom(4096),
    "image.png": b"\x89PNG\r\n\x1a\n\x00\x00" + os.urandom(300),
    "task/one/adapter_config.json": b'{"task": "one"}\n',
    "task/one/adapter_model.safetensors": os.urandom(1000),
    "README.md": b"---\nlibrary_name: pb-adapters\ntags:\n- x\n---\n# hi\n",
}


def test_client_is_offline_outside_the_hub_fixture(hub_server: LocalHub) -> None:
    assert constants.HF_HUB_OFFLINE
    assert hub_server.endpoint != constants.ENDPOINT


def test_whoami_and_tokens(hub: LocalHub) -> None:
    api = HfApi()
    assert api.whoami(token=hub.token)["name"] == hub.user
    token = hub.add_user("someone", orgs=["team"])
    info = api.whoami(token=token)
    assert info["name"] == "someone"
    assert [o["name"] for o in info["orgs"]] == ["team"]
    with pytest.raises(HfHubHTTPError) as err:
        api.whoami(token="hf_wrong")
    assert err.value.response.status_code == 401


def test_create_repo_public_private_exist_ok_and_namespaces(hub: LocalHub) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id()
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and url.startswith(hub.endpoint)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(repo_id)
    assert err.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    assert api.model_info(repo_id).private is False

    private_id = hub.new_repo_id("private")
    api.create_repo(private_id, private=True)
    assert api.model_info(private_id).private is True

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(hub.new_repo_id(namespace="not-mine"))
    assert err.value.response.status_code == 403
    member = hub.add_user("member")
    hub.add_org("lab", ["member"])
    org_repo = hub.new_repo_id(namespace="lab")
    assert HfApi(token=member).create_repo(org_repo).repo_id == org_repo
    with pytest.raises(HfHubHTTPError):
        HfApi(token=hub.make_token("member", role="read")).create_repo(hub.new_repo_id("ro"))


def test_upload_folder_download_and_snapshot_are_bit_identical(
    hub: LocalHub, tmp_path: Path
) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id()
    api.create_repo(repo_id)
    src = _folder(tmp_path / "src", FILES)
    hub.clear_requests()
    commit = huggingface_hub.upload_folder(repo_id=repo_id, folder_path=src, token=hub.token)
    assert commit.oid == api.model_info(repo_id).sha

    # Binary/large files went through the LFS batch API, text files inline in the commit.
    paths = [path for _, path in hub.requests]
    assert any(p.endswith(".git/info/lfs/objects/batch") for p in paths)
    assert sum(p.startswith("/__lfs_upload/") for p in paths) == 3
    tree = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True) if hasattr(f, "lfs")}
    assert tree["weights.safetensors"].lfs is not None
    assert tree["image.png"].lfs is not None
    assert tree["config.json"].lfs is None
    assert tree["config.json"].blob_id == git_blob_sha1(FILES["config.json"])

    assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *FILES])
    hub.clear_requests()
    for name, data in FILES.items():
        assert Path(huggingface_hub.hf_hub_download(repo_id, name)).read_bytes() == data
    if hub.lfs_redirects:  # LFS content came from the signed "CDN" url, without the token
        assert sum(m == "GET" and p.startswith("/__cdn/") for m, p in hub.requests) == 3
    snapshot = Path(huggingface_hub.snapshot_download(repo_id))
    assert {k: v for k, v in _tree_bytes(snapshot).items() if k != ".gitattributes"} == FILES
    sub = huggingface_hub.hf_hub_download(repo_id, "adapter_config.json", subfolder="task/one")
    assert Path(sub).read_bytes() == FILES["task/one/adapter_config.json"]

    top = sorted(e.path for e in api.list_repo_tree(repo_id))
    assert top == sorted([".gitattributes", "README.md", "config.json", "image.png", "task",
                          "weights.safetensors"])  # fmt: skip
    assert sorted(e.path for e in api.list_repo_tree(repo_id, path_in_repo="task")) == ["task/one"]
    info = api.model_info(repo_id, files_metadata=True)
    assert info.library_name == "pb-adapters" and "x" in info.tags
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["weights.safetensors"] == len(FILES["weights.safetensors"])


def test_same_upload_twice_is_a_no_op(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id()
    api.create_repo(repo_id)
    src = _folder(tmp_path, {"a.json": b"{}", "w.safetensors": b"\x00" * 64})
    first = api.upload_folder(repo_id=repo_id, folder_path=src)
    second = api.upload_folder(repo_id=repo_id, folder_path=src)
    assert first.oid == second.oid
    assert len(api.list_repo_commits(repo_id)) == 2  # initial commit + one upload


def test_branches_and_revisions(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id()
    api.create_repo(repo_id)
    v1 = api.upload_folder(repo_id=repo_id, folder_path=_folder(tmp_path / "1", {"f.bin": b"\0v1"}))
    api.create_branch(repo_id, branch="v2")
    with pytest.raises(HfHubHTTPError):
        api.create_branch(repo_id, branch="v2")
    api.create_branch(repo_id, branch="v2", exist_ok=True)
    v2 = api.upload_folder(
        repo_id=repo_id, folder_path=_folder(tmp_path / "2", {"f.bin": b"\0v2"}), revision="v2"
    )
    assert v1.oid != v2.oid
    refs = api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": v1.oid, "v2": v2.oid}

    def get(revision: str | None) -> bytes:
        return Path(
            huggingface_hub.hf_hub_download(repo_id, "f.bin", revision=revision)
        ).read_bytes()

    assert get(None) == get("main") == get(v1.oid) == b"\0v1"
    assert get("v2") == get(v2.oid) == get("refs/heads/v2") == b"\0v2"
    snap_v2 = Path(huggingface_hub.snapshot_download(repo_id, revision="v2"))
    assert snap_v2.name == v2.oid
    assert (snap_v2 / "f.bin").read_bytes() == b"\0v2"

    api.create_tag(repo_id, tag="release", revision=v1.oid)
    assert get("release") == b"\0v1"
    with pytest.raises(RevisionNotFoundError):
        huggingface_hub.hf_hub_download(repo_id, "f.bin", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        huggingface_hub.hf_hub_download(repo_id, "missing.txt")
    with pytest.raises(RepositoryNotFoundError):
        huggingface_hub.hf_hub_download(hub.new_repo_id("absent"), "f.bin")
    assert [c.title for c in api.list_repo_commits(repo_id, revision="v2")][-1] == "initial commit"


def test_pull_request_and_deletions(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id()
    api.create_repo(repo_id)
    base = api.upload_folder(
        repo_id=repo_id, folder_path=_folder(tmp_path / "a", {"x.txt": b"1", "y.txt": b"2"})
    )
    pr = api.upload_folder(
        repo_id=repo_id, folder_path=_folder(tmp_path / "b", {"x.txt": b"changed"}), create_pr=True
    )
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1"
    assert api.model_info(repo_id).sha == base.oid
    pr_file = huggingface_hub.hf_hub_download(repo_id, "x.txt", revision="refs/pr/1")
    assert Path(pr_file).read_bytes() == b"changed"
    api.delete_file("y.txt", repo_id=repo_id)
    assert "y.txt" not in api.list_repo_files(repo_id)


def test_private_repo_needs_the_right_token(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id("private")
    api.create_repo(repo_id, private=True)
    api.upload_folder(repo_id=repo_id, folder_path=_folder(tmp_path, {"secret.bin": b"\0s"}))
    other = hub.add_user("outsider")

    for token in (False, other):
        with pytest.raises(RepositoryNotFoundError):
            HfApi().model_info(repo_id, token=token)
        with pytest.raises(RepositoryNotFoundError):
            huggingface_hub.hf_hub_download(repo_id, "secret.bin", token=token)
    with pytest.raises(HfHubHTTPError) as err:
        huggingface_hub.hf_hub_download(repo_id, "secret.bin", token="hf_invalid")
    assert err.value.response.status_code == 401
    path = huggingface_hub.hf_hub_download(repo_id, "secret.bin", token=hub.token)
    assert Path(path).read_bytes() == b"\0s"


def test_gated_repo_needs_an_access_grant(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id("gated")
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=_folder(tmp_path, {"g.bin": b"\0g"}))
    hub.set_gated(repo_id)
    reader = hub.add_user("reader")
    with pytest.raises(GatedRepoError):
        huggingface_hub.hf_hub_download(repo_id, "g.bin", token=reader)
    with pytest.raises(GatedRepoError):
        huggingface_hub.hf_hub_download(repo_id, "g.bin", token=False)
    hub.grant_access(repo_id, "reader")
    assert Path(huggingface_hub.hf_hub_download(repo_id, "g.bin", token=reader)).read_bytes() == (
        b"\0g"
    )


def test_multipart_lfs_upload_and_tree_pagination(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id()
    api.create_repo(repo_id)
    files = {f"part/{i}.txt": str(i).encode() for i in range(5)}
    files["big.safetensors"] = os.urandom(5000)
    hub.multipart_chunk_size, hub.tree_page_size = 1024, 2
    try:
        hub.clear_requests()
        api.upload_folder(repo_id=repo_id, folder_path=_folder(tmp_path, files))
        assert sum(p.startswith("/__lfs_part/") for _, p in hub.requests) == 5
        assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *files])
    finally:
        hub.multipart_chunk_size, hub.tree_page_size = None, 1000
    data = Path(huggingface_hub.hf_hub_download(repo_id, "big.safetensors")).read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(files["big.safetensors"]).digest()


@pytest.mark.parametrize("redirects", [True, False])
def test_private_lfs_download_with_and_without_cdn_redirects(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redirects: bool
) -> None:
    if redirects and not hub.lfs_redirects:
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    monkeypatch.setattr(hub, "lfs_redirects", redirects)
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id("cdn")
    api.create_repo(repo_id, private=True)
    payload = os.urandom(2048)
    api.upload_folder(repo_id=repo_id, folder_path=_folder(tmp_path, {"m.safetensors": payload}))
    path = huggingface_hub.hf_hub_download(repo_id, "m.safetensors", token=hub.token)
    assert Path(path).read_bytes() == payload
    assert Path(path).parent.name == api.model_info(repo_id).sha


def test_fake_cdn_refuses_tokens_and_bad_signatures(hub: LocalHub) -> None:
    sha = hub.store_blob(b"\0cdn")
    url = hub.cdn_url(sha).replace("localhost", "127.0.0.1")
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"\0cdn"
    for request in (
        urllib.request.Request(url, headers={"Authorization": f"Bearer {hub.token}"}),
        urllib.request.Request(url.replace("sig=", "sig=0")),
    ):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request)


def test_range_requests(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi(token=hub.token)
    repo_id = hub.new_repo_id()
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=_folder(tmp_path, {"r.txt": b"0123456789"}))
    request = urllib.request.Request(
        f"{hub.endpoint}/{repo_id}/resolve/main/r.txt", headers={"Range": "bytes=3-"}
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 206
        assert response.read() == b"3456789"
        assert response.headers["X-Repo-Commit"] == api.model_info(repo_id).sha


def test_point_client_at_restores_the_configuration(hub_server: LocalHub, tmp_path: Path) -> None:
    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, os.environ.get("HF_ENDPOINT"))
    with point_client_at(hub_server.endpoint, tmp_path):
        assert hub_server.endpoint == constants.ENDPOINT
        assert HfApi().whoami(token=hub_server.token)["name"] == hub_server.user
    assert (constants.ENDPOINT, constants.HF_HUB_OFFLINE, os.environ.get("HF_ENDPOINT")) == before
