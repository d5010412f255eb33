"""A small Hugging Face Hub compatible HTTP server for offline tests.

The server speaks the subset of the Hub's HTTP API that ``huggingface_hub`` uses to create
repositories, upload (regular files inline, large/binary files through the git-LFS batch API with
a basic or multipart transfer), list, branch, tag and download. It runs on ``127.0.0.1`` on a free
port in a background thread; metadata lives in memory and file contents in a temporary folder,
stored by sha256.

Pointing the real client at it
------------------------------
``huggingface_hub`` reads its configuration from the environment **once, at import time**:

* ``constants.ENDPOINT`` and ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` come from ``HF_ENDPOINT``.
  The two must always agree: ``hf_hub_url`` only swaps in an ``endpoint=`` argument when the
  template starts with ``constants.ENDPOINT``, so patching one without the other silently sends
  downloads to huggingface.co.
* The module-level helpers (``huggingface_hub.create_repo``, ``upload_folder``, ``model_info``...)
  are bound methods of one ``HfApi()`` built at import, which froze ``endpoint`` then.
  ``HfApi()`` instances created later read ``constants.ENDPOINT`` when they are built.
* ``constants.HF_HUB_OFFLINE`` (``is_offline_mode()``) and ``constants.HF_HUB_DISABLE_XET`` are
  read from the environment at import too. With ``hf_xet`` installed, uploads go through Xet
  unless ``HF_HUB_DISABLE_XET`` is set, whatever the server advertises; this server has no Xet
  storage, so the fixtures disable it.

Setting environment variables after import therefore changes nothing. The :func:`hub` fixture
(function scope) patches the module attributes above for the duration of one test with
``monkeypatch`` (and mirrors them in ``os.environ`` for code that reads the environment, e.g. a
subprocess), gives the test its own empty ``HF_HUB_CACHE``, and removes any ``HF_TOKEN`` from the
environment. The session fixture :func:`hub_server` only runs the server; outside those tests the
suite stays offline. :func:`point_client_at` does the same patching as a context manager for use
outside pytest.

Use it from ``tests/conftest.py`` with ``from hub_server import hub, hub_server  # noqa: F401``.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
import yaml

REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
_NAME_RE = re.compile(r"^(?![.-])(?!.*(?:--|\.\.))[A-Za-z0-9._-]{1,96}(?<![.-])$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_INVALID_TOKEN = "Invalid credentials in Authorization header"
_DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.safetensors",
        "*.bin",
        "*.pt",
        "*.pth",
        "*.ckpt",
        "*.onnx",
        "*.h5",
        "*.npy",
        "*.npz",
        "*.pkl",
        "*.gz",
        "*.zip",
        "*.tar",
    )
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def git_blob_sha1(data: bytes) -> str:
    """The object id git gives a blob holding ``data`` (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass(frozen=True)
class Entry:
    """One file in a commit's tree."""

    sha256: str
    size: int
    git_oid: str
    lfs: bool

    @property
    def etag(self) -> str:
        """The value the Hub sends as ETag: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    def tree_json(self, path: str) -> dict[str, Any]:
        """The entry as ``/tree`` and ``/paths-info`` list it."""
        item: dict[str, Any] = {
            "type": "file",
            "oid": self.git_oid,
            "size": self.size,
            "path": path,
        }
        if self.lfs:
            pointer = _lfs_pointer(self.sha256, self.size)
            item["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(pointer)}
        return item


@dataclass
class Commit:
    """A commit: a full snapshot of the tree (path -> entry), its parent and message."""

    oid: str
    parent: str | None
    tree: dict[str, Entry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    """A repository: refs, commits, visibility and gating."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    gated: str | bool = False
    granted: set[str] = field(default_factory=set)
    downloads: int = 0

    @property
    def namespace(self) -> str:
        """The user or organisation owning the repository."""
        return self.repo_id.split("/")[0]

    @property
    def url_path(self) -> str:
        """The path of the repository's web page (``datasets/`` prefix for datasets)."""
        return _URL_PREFIX[self.repo_type] + self.repo_id

    def resolve(self, revision: str) -> str | None:
        """Commit id for a branch, tag, ``refs/...`` name or (full) commit id; None if unknown."""
        if revision.startswith("refs/heads/"):
            return self.branches.get(revision[len("refs/heads/") :])
        if revision.startswith("refs/tags/"):
            return self.tags.get(revision[len("refs/tags/") :])
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match:
            return self.pull_requests.get(int(match.group(1)))
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if _SHA1_RE.fullmatch(revision) and revision in self.commits:
            return revision
        return None

    def head(self) -> Commit:
        """The commit at the tip of ``main``."""
        return self.commits[self.branches["main"]]


@dataclass
class Account:
    """A user and the organisations it belongs to."""

    name: str
    orgs: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class TokenInfo:
    """Who a token belongs to and whether it may write."""

    user: str
    role: str


class ApiError(Exception):
    """An error response of the emulated API: status, message and optional ``X-Error-Code``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}


class LocalHub:
    """State and control of one running Hub-compatible server.

    Attributes:
        endpoint: base url, e.g. ``http://127.0.0.1:54321``; pass it as ``HF_ENDPOINT``.
        user: name of the default account.
        token: a write token of the default account.
        requests: ``(method, path)`` of every request served, in order.
        multipart_chunk_size: when set, LFS objects larger than this are uploaded with the
            multipart transfer (one PUT per part, then a completion call).
        tree_page_size: entries per page of ``/tree`` listings (paginated with a ``Link`` header).
        lfs_redirects: answer ``/resolve`` of LFS files with a 302 to a signed url on another
            origin (``localhost`` instead of ``127.0.0.1``), as the Hub redirects to its CDN: the
            client must then take the metadata from the redirect and drop its token. The fake
            CDN refuses requests that still carry an ``Authorization`` header, as S3 does.
    """

    def __init__(self, storage_dir: str | os.PathLike[str] | None = None) -> None:
        """Create the state; call :meth:`start` to serve it."""
        self._own_storage = storage_dir is None
        self.storage = Path(storage_dir or tempfile.mkdtemp(prefix="local-hub-"))
        (self.storage / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, TokenInfo] = {}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.multipart_chunk_size: int | None = None
        self.tree_page_size = 1000
        self.lfs_redirects = _localhost_is_ipv4_loopback()
        self._cdn_key = secrets.token_bytes(16)
        self._uploads: dict[str, tuple[str, int]] = {}
        self._parts: dict[str, dict[int, bytes]] = {}
        self._counter = itertools.count()
        self.user = "pb-tester"
        self.token = self.add_user(self.user)
        self.endpoint = ""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------- lifecycle
    def start(self) -> LocalHub:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-hub", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and delete the stored files (if the storage folder was ours)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_storage:
            shutil.rmtree(self.storage, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ accounts
    def add_user(self, name: str, *, orgs: tuple[str, ...] | list[str] = ()) -> str:
        """Create (or extend) an account and return a new write token for it."""
        with self.lock:
            account = self.accounts.setdefault(name, Account(name))
            account.orgs.update(orgs)
        return self.make_token(name)

    def add_org(self, org: str, members: tuple[str, ...] | list[str]) -> None:
        """Create an organisation ``org`` whose ``members`` may write to its namespace."""
        with self.lock:
            for member in members:
                self.accounts.setdefault(member, Account(member)).orgs.add(org)

    def make_token(self, user: str, *, role: str = "write") -> str:
        """Issue a token for ``user``; ``role`` is ``"write"`` or ``"read"``."""
        if role not in ("read", "write"):
            raise ValueError(f"role must be 'read' or 'write', not {role!r}")
        token = "hf_" + secrets.token_hex(16)
        with self.lock:
            self.accounts.setdefault(user, Account(user))
            self.tokens[token] = TokenInfo(user, role)
        return token

    def new_repo_id(self, prefix: str = "repo", namespace: str | None = None) -> str:
        """A repository id not used yet on this server (tests share one server per session)."""
        return f"{namespace or self.user}/{prefix}-{next(self._counter)}-{secrets.token_hex(3)}"

    # ------------------------------------------------------------------------- introspection
    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """The stored repository (raises KeyError if absent)."""
        return self.repos[(repo_type, repo_id)]

    def set_gated(
        self, repo_id: str, gated: str | bool = "manual", repo_type: str = "model"
    ) -> None:
        """Gate a repository: files need an access grant (see :meth:`grant_access`)."""
        with self.lock:
            self.get_repo(repo_id, repo_type).gated = gated

    def grant_access(self, repo_id: str, user: str, repo_type: str = "model") -> None:
        """Let ``user`` download the files of a gated repository."""
        with self.lock:
            self.get_repo(repo_id, repo_type).granted.add(user)

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self.lock:
            self.requests.clear()

    # ----------------------------------------------------------------------------- storage
    def blob_path(self, sha256: str) -> Path:
        """Where the content with this sha256 is stored."""
        return self.storage / "blobs" / sha256

    def store_blob(self, data: bytes) -> str:
        """Store ``data``; return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            tmp = path.with_name(f"{sha}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha

    def has_blob(self, sha256: str) -> bool:
        """Whether content with this sha256 is stored."""
        return bool(re.fullmatch(r"[0-9a-f]{64}", sha256)) and self.blob_path(sha256).exists()

    def new_commit_oid(self, parent: str | None, title: str) -> str:
        """A fresh 40-hex commit id."""
        seed = f"{parent}|{title}|{time.time_ns()}|{next(self._counter)}|{secrets.token_hex(8)}"
        return hashlib.sha1(seed.encode()).hexdigest()

    def cdn_signature(self, sha256: str) -> str:
        """The signature that authorises a CDN url for this blob."""
        return hmac.new(self._cdn_key, sha256.encode(), hashlib.sha256).hexdigest()[:32]

    def cdn_url(self, sha256: str) -> str:
        """A signed download url for a blob on the fake CDN origin."""
        port = self.endpoint.rsplit(":", 1)[1]
        return f"http://localhost:{port}/__cdn/{sha256}?sig={self.cdn_signature(sha256)}"

    def make_entry(self, data: bytes, *, lfs: bool) -> Entry:
        """Store ``data`` and describe it as a tree entry."""
        sha = self.store_blob(data)
        git_oid = git_blob_sha1(_lfs_pointer(sha, len(data)) if lfs else data)
        return Entry(sha256=sha, size=len(data), git_oid=git_oid, lfs=lfs)


# ---------------------------------------------------------------------------------- helpers
def _localhost_is_ipv4_loopback() -> bool:
    """Whether ``localhost`` reaches a server bound to 127.0.0.1 (needed for CDN redirects)."""
    try:
        infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and infos[0][4][0] == "127.0.0.1"


def _lfs_patterns(tree: dict[str, Entry], hub: LocalHub) -> list[str]:
    entry = tree.get(".gitattributes")
    if entry is None:
        return []
    patterns = []
    for line in hub.blob_path(entry.sha256).read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _wants_lfs(path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        target = path if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern.lstrip("/")):
            return True
    return size >= _LFS_SIZE_THRESHOLD or b"\0" in sample


def _card_data(tree: dict[str, Entry], hub: LocalHub) -> dict[str, Any] | None:
    entry = tree.get("README.md")
    if entry is None:
        return None
    text = hub.blob_path(entry.sha256).read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _folders(tree: dict[str, Entry]) -> set[str]:
    folders = set()
    for path in tree:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folders.add("/".join(parts[:i]))
    return folders


def _folder_json(path: str, tree: dict[str, Entry]) -> dict[str, Any]:
    content = sorted((p, e.git_oid) for p, e in tree.items() if p.startswith(path + "/"))
    oid = hashlib.sha1(json.dumps(content).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


# ---------------------------------------------------------------------------------- handler
class _Handler(BaseHTTPRequestHandler):
    """Routes one HTTP request to the Hub emulation (``hub`` is bound per server)."""

    hub: LocalHub
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"

    # -- plumbing -----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet; the request log lives in ``hub.requests``."""

    def do_GET(self) -> None:
        """Serve a GET request."""
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        """Serve a HEAD request."""
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        """Serve a POST request."""
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """Serve a PUT request."""
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        """Serve a DELETE request."""
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = self.rfile.readline().split(b";", 1)[0].strip()
                size = int(size_line or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD" and body:
            self.wfile.write(body)

    def _json(
        self,
        obj: Any,
        status: int = 200,
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers, method=method)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        with self.hub.lock:
            self.hub.requests.append((method, split.path))
        body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
        try:
            self._route(method, segments, body)
        except ApiError as err:
            headers = dict(err.headers)
            headers["X-Error-Message"] = err.message
            if err.code:
                headers["X-Error-Code"] = err.code
            body = {"error": err.message, **err.extra}
            self._json(body, err.status, headers=headers, method=method)
        except Exception as err:  # a bug in the emulation: report it as a 500 with the reason
            self._json({"error": f"local hub: {type(err).__name__}: {err}"}, 500, method=method)

    # -- auth -----------------------------------------------------------------------------------
    def _token(self) -> TokenInfo | None:
        header = self.headers.get("Authorization")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        info = self.hub.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            raise ApiError(401, _INVALID_TOKEN)
        return info

    def _namespaces(self, info: TokenInfo | None) -> set[str]:
        if info is None:
            return set()
        account = self.hub.accounts[info.user]
        return {account.name, *account.orgs}

    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        """Look up a repository the caller may see (and write to, if ``write``)."""
        info = self._token()
        repo = self.hub.repos.get((repo_type, repo_id))
        allowed = repo is not None and (
            not repo.private or repo.namespace in self._namespaces(info)
        )
        if not allowed:
            status = 401 if info is None else 404
            raise ApiError(status, "Repository not found", "RepoNotFound")
        assert repo is not None
        if write:
            if info is None or repo.namespace not in self._namespaces(info):
                raise ApiError(403, "You don't have the rights to write to this repository")
            if info.role != "write":
                raise ApiError(403, "This token is read-only: it cannot write to repositories")
        return repo

    def _check_gate(self, repo: Repo) -> None:
        if not repo.gated:
            return
        info = self._token()
        user = info.user if info else None
        if user is not None and (user in repo.granted or repo.namespace in self._namespaces(info)):
            return
        raise ApiError(
            401 if info is None else 403,
            f"Access to model {repo.repo_id} is restricted. You must have access to it and be"
            " authenticated to access it. Please log in.",
            "GatedRepo",
        )

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        oid = repo.resolve(revision)
        if oid is None:
            raise ApiError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    # -- routing --------------------------------------------------------------------------------
    def _route(self, method: str, seg: list[str], body: bytes) -> None:
        if seg[:1] == ["api"]:
            self._route_api(method, seg[1:], body)
            return
        if seg[:1] == ["__cdn"] and len(seg) == 2 and method in ("GET", "HEAD"):
            self._cdn(method, seg[1])
            return
        if seg[:1] == ["__lfs_upload"] and len(seg) == 2 and method == "PUT":
            self._lfs_put(seg[1], body)
            return
        if seg[:1] == ["__lfs_part"] and len(seg) == 3 and method == "PUT":
            self._lfs_part(seg[1], int(seg[2]), body)
            return
        if seg[:1] == ["__lfs_complete"] and len(seg) == 2 and method == "POST":
            self._lfs_complete(seg[1], body)
            return
        repo_type = "model"
        if seg and seg[0] in ("datasets", "spaces"):
            repo_type, seg = _PLURAL[seg[0]], seg[1:]
        if len(seg) >= 4 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            self._resolve_file(method, repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
            return
        if len(seg) >= 6 and seg[1].endswith(".git") and seg[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{seg[0]}/{seg[1][: -len('.git')]}"
            if seg[5:] == ["batch"] and method == "POST":
                self._lfs_batch(repo_type, repo_id, body)
                return
            if seg[5:] == ["verify"] and method == "POST":
                self._lfs_verify(repo_type, repo_id, body)
                return
        raise ApiError(404, f"Not found: {method} /{'/'.join(seg)}")

    def _route_api(self, method: str, seg: list[str], body: bytes) -> None:
        if seg == ["whoami-v2"] and method == "GET":
            self._whoami()
        elif seg == ["repos", "create"] and method == "POST":
            self._create_repo(json.loads(body or b"{}"))
        elif seg == ["repos", "delete"] and method == "DELETE":
            self._delete_repo(json.loads(body or b"{}"))
        elif seg == ["validate-yaml"] and method == "POST":
            self._validate_yaml(json.loads(body or b"{}"))
        elif seg[:1] == ["telemetry"]:
            self._json({})
        elif len(seg) >= 3 and seg[0] in _PLURAL:
            repo_type, repo_id, rest = _PLURAL[seg[0]], f"{seg[1]}/{seg[2]}", seg[3:]
            self._route_repo(method, repo_type, repo_id, rest, body)
        else:
            raise ApiError(404, f"Not found: {method} /api/{'/'.join(seg)}")

    def _route_repo(
        self, method: str, repo_type: str, repo_id: str, rest: list[str], body: bytes
    ) -> None:
        head = rest[0] if rest else ""
        if not rest and method == "GET":
            self._info(repo_type, repo_id, "main")
        elif head == "revision" and len(rest) == 2 and method == "GET":
            self._info(repo_type, repo_id, rest[1])
        elif head == "tree" and len(rest) >= 2 and method == "GET":
            self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]).strip("/"))
        elif head == "paths-info" and len(rest) == 2 and method == "POST":
            self._paths_info(repo_type, repo_id, rest[1], body)
        elif head == "refs" and len(rest) == 1 and method == "GET":
            self._refs(repo_type, repo_id)
        elif head == "commits" and len(rest) == 2 and method == "GET":
            self._commits(repo_type, repo_id, rest[1])
        elif head == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
            self._branch(method, repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        elif head == "tag" and len(rest) == 2 and method in ("POST", "DELETE"):
            self._tag(method, repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        elif head == "preupload" and len(rest) == 2 and method == "POST":
            self._preupload(repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        elif head == "commit" and len(rest) == 2 and method == "POST":
            self._commit(repo_type, repo_id, rest[1], body)
        elif head == "settings" and len(rest) == 1 and method == "PUT":
            self._settings(repo_type, repo_id, json.loads(body or b"{}"))
        else:
            raise ApiError(404, f"Not found: {method} {repo_id}/{'/'.join(rest)}")

    # -- accounts & repos ---------------------------------------------------------------------
    def _whoami(self) -> None:
        info = self._token()
        if info is None:
            raise ApiError(401, _INVALID_TOKEN)
        account = self.hub.accounts[info.user]
        self._json(
            {
                "type": "user",
                "id": hashlib.sha1(account.name.encode()).hexdigest()[:24],
                "name": account.name,
                "fullname": account.name,
                "email": f"{account.name}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "orgs": [
                    {"type": "org", "name": org, "fullname": org, "roleInOrg": "write"}
                    for org in sorted(account.orgs)
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "local-hub", "role": info.role},
                },
            }
        )

    def _create_repo(self, payload: dict[str, Any]) -> None:
        info = self._token()
        if info is None:
            raise ApiError(401, "You must be authenticated to create a repository")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise ApiError(400, f"Invalid repo type: {repo_type}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or info.user
        if not _NAME_RE.fullmatch(name) or not _NAME_RE.fullmatch(namespace):
            raise ApiError(400, f"Invalid repository name: {namespace}/{name}")
        if namespace not in self._namespaces(info) or info.role != "write":
            raise ApiError(
                403,
                f"You don't have the rights to create a {repo_type} under the namespace"
                f' "{namespace}"',
            )
        repo_id = f"{namespace}/{name}"
        visibility = payload.get("visibility")
        private = bool(payload.get("private")) if visibility is None else visibility == "private"
        with self.hub.lock:
            existing = self.hub.repos.get((repo_type, repo_id))
            if existing is not None:
                # The client reads "url" from this body when exist_ok=True.
                raise ApiError(
                    409,
                    f"You already created this {repo_type} repo: {repo_id}",
                    extra={"url": f"{self.hub.endpoint}/{existing.url_path}"},
                )
            repo = Repo(repo_type, repo_id, private=private, created_at=_now())
            entry = self.hub.make_entry(_DEFAULT_GITATTRIBUTES.encode(), lfs=False)
            oid = self.hub.new_commit_oid(None, "initial commit")
            repo.commits[oid] = Commit(
                oid, None, {".gitattributes": entry}, "initial commit", "", "system", _now()
            )
            repo.branches["main"] = oid
            self.hub.repos[(repo_type, repo_id)] = repo
        url = f"{self.hub.endpoint}/{repo.url_path}"
        self._json({"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()[:24]})

    def _delete_repo(self, payload: dict[str, Any]) -> None:
        info = self._token()
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or (info.user if info else "")
        repo = self._repo(repo_type, f"{namespace}/{payload.get('name')}", write=True)
        with self.hub.lock:
            del self.hub.repos[(repo_type, repo.repo_id)]
        self._json({})

    def _settings(self, repo_type: str, repo_id: str, payload: dict[str, Any]) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        with self.hub.lock:
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "gated" in payload:
                repo.gated = payload["gated"]
        self._json({})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content") or ""
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if not match:
            self._json({"errors": [], "warnings": [{"message": "Empty or missing yaml metadata"}]})
            return
        try:
            data = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            self._json({"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []}, 400)
            return
        errors = [] if isinstance(data, dict) else [{"message": "metadata must be a mapping"}]
        self._json({"errors": errors, "warnings": []}, 400 if errors else 200)

    # -- reading --------------------------------------------------------------------------------
    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve(repo, revision)
        card = _card_data(commit.tree, self.hub) or {}
        with_blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit.tree.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    pointer = _lfs_pointer(entry.sha256, entry.size)
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.sha256,
                        "pointerSize": len(pointer),
                    }
            siblings.append(sibling)
        tags = list(card.get("tags") or [])
        if card.get("library_name") and card["library_name"] not in tags:
            tags.insert(0, card["library_name"])
        config = None
        if "config.json" in commit.tree:
            with contextlib.suppress(ValueError):
                config = json.loads(
                    self.hub.blob_path(commit.tree["config.json"].sha256).read_text()
                )
        self._json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.namespace,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": repo.gated,
                "disabled": False,
                "downloads": repo.downloads,
                "likes": 0,
                "tags": tags,
                "pipeline_tag": card.get("pipeline_tag"),
                "library_name": card.get("library_name"),
                "cardData": card or None,
                "config": config,
                "siblings": siblings,
                "usedStorage": sum(e.size for e in commit.tree.values()),
            }
        )

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve(repo, revision)
        folders = _folders(commit.tree)
        if path and path not in folders:
            raise ApiError(
                404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid}
            )
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{path}/" if path else ""

        def wanted(candidate: str) -> bool:
            if not candidate.startswith(prefix) or candidate == path:
                return False
            return recursive or "/" not in candidate[len(prefix) :]

        items = [_folder_json(f, commit.tree) for f in sorted(folders) if wanted(f)]
        items += [e.tree_json(p) for p, e in sorted(commit.tree.items()) if wanted(p)]
        items.sort(key=lambda item: item["path"])
        start = int(self.query.get("cursor", "0") or 0)
        page = items[start : start + self.hub.tree_page_size]
        headers = {}
        if start + self.hub.tree_page_size < len(items):
            rev = quote(revision, safe="")
            encoded = "/" + quote(path, safe="") if path else ""
            nxt = (
                f"{self.hub.endpoint}/api/{repo_type}s/{repo_id}/tree/{rev}{encoded}"
                f"?recursive={str(recursive).lower()}&cursor={start + self.hub.tree_page_size}"
            )
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers=headers)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve(repo, revision)
        form = parse_qs(body.decode())
        folders = _folders(commit.tree)
        items = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.tree:
                items.append(commit.tree[path].tree_json(path))
            elif path in folders:
                items.append(_folder_json(path, commit.tree))
        self._json(items)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo(repo_type, repo_id)

        def ref(name: str, full: str, target: str) -> dict[str, str]:
            return {"name": name, "ref": full, "targetCommit": target}

        out: dict[str, Any] = {
            "branches": [ref(n, f"refs/heads/{n}", t) for n, t in sorted(repo.branches.items())],
            "tags": [ref(n, f"refs/tags/{n}", t) for n, t in sorted(repo.tags.items())],
            "converts": [],
        }
        if self.query.get("include_prs"):
            out["pullRequests"] = [
                ref(f"refs/pr/{n}", f"refs/pr/{n}", t)
                for n, t in sorted(repo.pull_requests.items())
            ]
        self._json(out)

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit: Commit | None = self._resolve(repo, revision)
        items = []
        while commit is not None:
            items.append(
                {
                    "id": commit.oid,
                    "authors": [{"user": commit.author}],
                    "date": commit.date,
                    "title": commit.title,
                    "message": commit.message,
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(items)

    def _resolve_file(
        self, method: str, repo_type: str, repo_id: str, revision: str, path: str
    ) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._resolve(repo, revision)
        entry = commit.tree.get(path)
        if entry is None:
            raise ApiError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        self._check_gate(repo)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"'}
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        if method == "GET":
            with self.hub.lock:
                repo.downloads += 1
        if entry.lfs and self.hub.lfs_redirects:
            headers["Location"] = self.hub.cdn_url(entry.sha256)
            self._send(302, b"", content_type="text/plain", headers=headers, method=method)
            return
        self._send_blob(method, entry.sha256, path.rsplit("/", 1)[-1], headers)

    def _cdn(self, method: str, sha256: str) -> None:
        if self.headers.get("Authorization"):
            raise ApiError(400, "Only one auth mechanism allowed: the url is already signed")
        signature = self.query.get("sig", "")
        if not (
            self.hub.has_blob(sha256)
            and hmac.compare_digest(signature, self.hub.cdn_signature(sha256))
        ):
            raise ApiError(403, "Access denied: bad or missing signature")
        self._send_blob(method, sha256, sha256, {"ETag": f'"{sha256}"'})

    def _send_blob(self, method: str, sha256: str, name: str, headers: dict[str, str]) -> None:
        """Send stored content, honouring a single ``Range: bytes=a-b`` request."""
        headers = {
            **headers,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{quote(name)}"',
        }
        data = self.hub.blob_path(sha256).read_bytes()
        status = 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and data:
            first, last = match.group(1), match.group(2)
            start = int(first) if first else max(len(data) - int(last or 0), 0)
            end = min(int(last) if first and last else len(data) - 1, len(data) - 1)
            if start > end:
                raise ApiError(416, "Requested range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self._send(
            status, data, content_type="application/octet-stream", headers=headers, method=method
        )

    # -- writing --------------------------------------------------------------------------------
    def _branch(
        self, method: str, repo_type: str, repo_id: str, branch: str, payload: dict[str, Any]
    ) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        with self.hub.lock:
            if method == "DELETE":
                if branch not in repo.branches or branch == "main":
                    raise ApiError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                del repo.branches[branch]
            else:
                if branch in repo.branches:
                    raise ApiError(409, f"Reference already exists: refs/heads/{branch}")
                if not re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", branch) or branch.startswith("refs"):
                    raise ApiError(400, f"Invalid branch name: {branch}")
                start = payload.get("startingPoint") or "main"
                repo.branches[branch] = self._resolve(repo, start).oid
        self._json({})

    def _tag(
        self, method: str, repo_type: str, repo_id: str, name: str, payload: dict[str, Any]
    ) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        with self.hub.lock:
            if method == "DELETE":
                if name not in repo.tags:
                    raise ApiError(404, f"Invalid rev id: {name}", "RevisionNotFound")
                del repo.tags[name]
            else:
                tag = payload.get("tag") or ""
                if tag in repo.tags:
                    raise ApiError(409, f"Tag already exists: {tag}")
                repo.tags[tag] = self._resolve(repo, name).oid
        self._json({})

    def _preupload(
        self, repo_type: str, repo_id: str, revision: str, payload: dict[str, Any]
    ) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        commit = self._resolve(repo, revision)
        patterns = _lfs_patterns(commit.tree, self.hub)
        files = []
        for item in payload.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample") or b"")
            lfs = _wants_lfs(path, int(item.get("size") or 0), sample, patterns)
            current = commit.tree.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": current.etag if current is not None else None,
                }
            )
        self._json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload":
            raise ApiError(400, "Only uploads go through the batch API here")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                item["error"] = {"code": 422, "message": "oid must be a sha256"}
            elif not self.hub.has_blob(oid):
                ticket = secrets.token_hex(16)
                with self.hub.lock:
                    self.hub._uploads[ticket] = (oid, size)
                verify = {
                    "href": f"{self.hub.endpoint}/{repo.url_path}.git/info/lfs/objects/verify"
                }
                chunk = self.hub.multipart_chunk_size
                if chunk and size > chunk:
                    nparts = -(-size // chunk)
                    header = {
                        str(i + 1): f"{self.hub.endpoint}/__lfs_part/{ticket}/{i + 1}"
                        for i in range(nparts)
                    }
                    header["chunk_size"] = str(chunk)
                    upload = {
                        "href": f"{self.hub.endpoint}/__lfs_complete/{ticket}",
                        "header": header,
                    }
                else:
                    upload = {"href": f"{self.hub.endpoint}/__lfs_upload/{ticket}"}
                item["actions"] = {"upload": upload, "verify": verify}
            objects.append(item)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _take_ticket(self, ticket: str) -> tuple[str, int]:
        with self.hub.lock:
            target = self.hub._uploads.get(ticket)
        if target is None:
            raise ApiError(403, "Unknown or expired upload url")
        return target

    def _store_upload(self, ticket: str, data: bytes) -> None:
        oid, size = self._take_ticket(ticket)
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise ApiError(400, "Uploaded content does not match the announced oid/size")
        self.hub.store_blob(data)
        with self.hub.lock:
            self.hub._uploads.pop(ticket, None)

    def _lfs_put(self, ticket: str, body: bytes) -> None:
        self._store_upload(ticket, body)
        self._send(200, b"", headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_part(self, ticket: str, number: int, body: bytes) -> None:
        self._take_ticket(ticket)
        with self.hub.lock:
            self.hub._parts.setdefault(ticket, {})[number] = body
        self._send(200, b"", headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_complete(self, ticket: str, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        with self.hub.lock:
            parts = self.hub._parts.pop(ticket, {})
        chunks = []
        for part in payload.get("parts", []):
            data = parts.get(int(part["partNumber"]))
            if data is None or part.get("etag", "").strip('"') != hashlib.md5(data).hexdigest():
                raise ApiError(400, f"Part {part.get('partNumber')} is missing or has a bad etag")
            chunks.append(data)
        self._store_upload(ticket, b"".join(chunks))
        self._json({})

    def _lfs_verify(self, repo_type: str, repo_id: str, body: bytes) -> None:
        self._repo(repo_type, repo_id, write=True)
        payload = json.loads(body or b"{}")
        oid = str(payload.get("oid"))
        if not self.hub.has_blob(oid) or self.hub.blob_path(oid).stat().st_size != payload.get(
            "size"
        ):
            raise ApiError(404, f"Object {oid} was not uploaded")
        self._json({})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        info = self._token()
        assert info is not None
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise ApiError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        create_pr = self.query.get("create_pr") in ("1", "true", "True")
        with self.hub.lock:
            base_oid = repo.resolve(revision)
            is_pr = re.fullmatch(r"refs/pr/\d+", revision) is not None
            if base_oid is None or not (revision in repo.branches or is_pr):
                raise ApiError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != base_oid:
                raise ApiError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.commits[base_oid].tree)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = str(value.get("path", "")).strip("/")
                if not path or any(part in ("", ".", "..") for part in path.split("/")):
                    raise ApiError(400, f"Invalid path in commit: {value.get('path')!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise ApiError(400, "Only base64 file contents are supported")
                    tree[path] = self.hub.make_entry(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    oid = str(value.get("oid"))
                    if not self.hub.has_blob(oid):
                        raise ApiError(
                            400,
                            f"LFS object {oid} for {path} was never uploaded",
                            "LfsObjectMissing",
                        )
                    data = self.hub.blob_path(oid).read_bytes()
                    tree[path] = self.hub.make_entry(data, lfs=True)
                elif key == "deletedFile":
                    if path not in tree:
                        raise ApiError(
                            404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                        )
                    del tree[path]
                elif key == "deletedFolder":
                    for existing in [p for p in tree if p.startswith(path + "/")]:
                        del tree[existing]
                else:
                    raise ApiError(400, f"Unknown commit operation: {key!r}")
            title = header.get("summary") or "Upload files"
            oid = self.hub.new_commit_oid(base_oid, title)
            repo.commits[oid] = Commit(
                oid, base_oid, tree, title, header.get("description") or "", info.user, _now()
            )
            pr_url = None
            if create_pr:
                number = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[number] = oid
                pr_url = f"{self.hub.endpoint}/{repo.url_path}/discussions/{number}"
            elif is_pr:
                repo.pull_requests[int(revision.rsplit("/", 1)[1])] = oid
            else:
                repo.branches[revision] = oid
        self._json(
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.hub.endpoint}/{repo.url_path}/commit/{oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )


# ----------------------------------------------------------------------- client configuration
def client_settings(
    endpoint: str, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[list[tuple[object, str, object]], dict[str, str | None]]:
    """What must change for ``huggingface_hub`` (already imported) to talk to ``endpoint``.

    Returns ``(attributes, environment)``: ``(object, name, value)`` triples to set, and
    environment variables to set (``None`` = remove).
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    endpoint = endpoint.rstrip("/")
    attrs: list[tuple[object, str, object]] = [
        (constants, "ENDPOINT", endpoint),
        (
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        ),
        (constants, "HF_HUB_OFFLINE", False),
        (constants, "HF_HUB_DISABLE_XET", True),
        (hf_api.api, "endpoint", endpoint),
    ]
    env: dict[str, str | None] = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": None,
        "HUGGING_FACE_HUB_TOKEN": None,
    }
    if cache_dir is not None:
        attrs.append((constants, "HF_HUB_CACHE", str(cache_dir)))
        env["HF_HUB_CACHE"] = str(cache_dir)
    return attrs, env


@contextlib.contextmanager
def point_client_at(
    endpoint: str, cache_dir: str | os.PathLike[str] | None = None
) -> Iterator[None]:
    """Make ``huggingface_hub`` talk to ``endpoint`` (online) inside the ``with`` block."""
    attrs, env = client_settings(endpoint, cache_dir)
    saved_attrs = [(obj, name, getattr(obj, name)) for obj, name, _ in attrs]
    saved_env = {key: os.environ.get(key) for key in env}
    try:
        for obj, name, value in attrs:
            setattr(obj, name, value)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for obj, name, value in saved_attrs:
            setattr(obj, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def hub_server() -> Iterator[LocalHub]:
    """One Hub-compatible server for the whole session (the client is NOT pointed at it)."""
    with LocalHub() as server:
        yield server


@pytest.fixture
def hub(
    hub_server: LocalHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[LocalHub]:
    """The session server, with ``huggingface_hub`` online and pointed at it for this test.

    The test gets an empty Hub cache of its own; no token is configured (pass ``hub.token``).
    """
    attrs, env = client_settings(hub_server.endpoint, tmp_path / "hf-hub-cache")
    for obj, name, value in attrs:
        monkeypatch.setattr(obj, name, value)
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    yield hub_server
