"""Hub failures in words: every exception ``huggingface_hub`` raises becomes one short
:class:`~pb_adapters.errors.HubError` that says what to do.

Access problems (a missing, private, gated or disabled repository, an unknown revision or file),
authentication, offline mode, and network or server failures each get their own message;
network and server failures are :class:`~pb_adapters.errors.HubConnectionError` (worth
retrying). The original exception is chained by the caller as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal

from .errors import HubConnectionError, HubError, PbAdaptersError

__all__ = ["hub_failure", "hub_offline", "list_repo_level", "translate"]

_MAX_LISTED = 12  # entries of a repository folder named in a missing-file message
_LOGIN = "pass token=... or run `hf auth login`"


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read at call time, as huggingface_hub does)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _has_token(token: str | bool | None) -> bool:
    """Whether a request made with ``token`` carries one (explicit, HF_TOKEN or saved login)."""
    if isinstance(token, str):
        return bool(token)
    if token is False:
        return False
    from huggingface_hub import get_token

    return get_token() is not None


def _transport_errors() -> tuple[tuple[type[BaseException], ...], ...]:
    """``(timeouts, connection failures, other transport errors)`` of the HTTP clients present.

    huggingface_hub 1.x talks through ``httpx`` and 2.x through ``httpx2``; either may be absent,
    so each is imported only if installed (neither is a dependency of this package itself).
    """
    import importlib

    timeouts: list[type[BaseException]] = []
    connects: list[type[BaseException]] = []
    transports: list[type[BaseException]] = []
    for name in ("httpx", "httpx2"):
        try:
            client = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(client.TimeoutException)
        connects += [client.ConnectError, client.NetworkError]
        transports.append(client.TransportError)
    return tuple(timeouts), tuple(connects), tuple(transports)


def _network_reason(err: BaseException) -> str | None:
    """A short reason if ``err`` (or an exception it chains) is a network failure."""
    timeouts, connects, transports = _transport_errors()
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, timeouts):
            return "the connection timed out"
        if isinstance(current, connects):
            return "the connection failed"
        if isinstance(current, transports):
            return f"network error ({type(current).__name__})"
        current = current.__cause__ or current.__context__
    return None


def list_repo_level(repo_id: str, revision: str | None, subfolder: str | None, token: Any) -> str:
    """Best effort: what exists at ``subfolder`` of the repo (or its root), for error messages."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RemoteEntryNotFoundError
    from huggingface_hub.hf_api import RepoFolder

    def names(path: str | None) -> list[str]:
        entries = HfApi().list_repo_tree(repo_id, path_in_repo=path, revision=revision, token=token)
        return sorted(
            PurePath(e.path).name + ("/" if isinstance(e, RepoFolder) else "")
            for e in entries
            if not PurePath(e.path).name.startswith(".")  # .gitattributes is noise here
        )

    prefix = ""
    try:
        try:
            found = names(subfolder)
        except RemoteEntryNotFoundError:
            if not subfolder:
                return ""
            prefix, found = f"there is no folder {subfolder}; at the top level: ", names(None)
    except Exception:  # only decorates an error message: never let it mask the real one
        return ""
    if not found:
        return f" ({prefix}nothing)" if prefix else " (that folder is empty)"
    shown = ", ".join(found[:_MAX_LISTED]) + (", ..." if len(found) > _MAX_LISTED else "")
    return f" ({prefix or 'found: '}{shown})"


@dataclass(frozen=True)
class _Failure:
    """One failed Hub call: the exception and what was being done, for the rules below."""

    err: BaseException
    repo_id: str
    revision: str | None
    filename: str | None
    subfolder: str | None
    token: Any
    local_files_only: bool
    writing: bool

    @property
    def where(self) -> str:
        return self.repo_id + (f" (revision {self.revision})" if self.revision else "")

    @property
    def status(self) -> int | None:
        return getattr(getattr(self.err, "response", None), "status_code", None)

    def is_a(self, name: str) -> bool:
        """Whether the exception is ``huggingface_hub.errors.<name>`` (or a subclass)."""
        from huggingface_hub import errors

        return isinstance(self.err, getattr(errors, name))


def _repository(f: _Failure) -> HubError | None:
    """Gated, disabled or missing repositories, revisions and files."""
    if f.is_a("GatedRepoError"):
        return HubError(
            f"{f.repo_id} is gated: request access on its Hub page, then {_LOGIN} with an "
            "account that was granted access"
        )
    if f.is_a("DisabledRepoError"):
        done = "written to" if f.writing else "downloaded"
        return HubError(f"{f.repo_id} has been disabled on the Hub and cannot be {done}")
    if f.is_a("RepositoryNotFoundError"):
        if f.writing:
            return HubError(
                f"cannot write to {f.repo_id}: it does not exist or your token cannot see it"
            )
        return HubError(
            f"repository {f.repo_id} not found on {_endpoint()}: check the name; if it is "
            f"private, {_LOGIN}"
        )
    if f.is_a("RevisionNotFoundError"):
        return HubError(
            f"revision {f.revision!r} not found in {f.repo_id}: check the branch, tag or commit"
        )
    if f.is_a("RemoteEntryNotFoundError"):
        path = f"{f.subfolder}/{f.filename}" if f.subfolder else f.filename
        listing = list_repo_level(f.repo_id, f.revision, f.subfolder, f.token)
        return HubError(
            f"{f.where} has no {path}: is this a pb-adapters artifact (or the wrong subfolder)?"
            f"{listing}"
        )
    return None


def _permission(f: _Failure) -> HubError | None:
    """401 and 403 answers, and arguments the Hub client refused."""
    if f.is_a("HfHubHTTPError") and f.status == 401:
        if not _has_token(f.token):
            need = "a write token" if f.writing else "a token"
            return HubError(
                f"the Hub requires authentication (401) for {f.repo_id}: {_LOGIN} ({need})"
            )
        return HubError(f"the Hub rejected the token (401): it is invalid or expired; {_LOGIN}")
    if f.is_a("HfHubHTTPError") and f.status == 403:
        if f.writing:
            return HubError(
                f"permission denied (403): your token cannot write to {f.repo_id}; use a token "
                "with write access to that namespace"
            )
        return HubError(f"permission denied (403) for {f.repo_id}: your token cannot read it")
    if f.is_a("HFValidationError"):
        return HubError(f"invalid Hub argument: {f.err}")
    return None


def _offline_mode(f: _Failure) -> HubError | None:
    """Offline mode (``HF_HUB_OFFLINE``, ``local_files_only``) and what it refused."""
    if f.writing and f.is_a("OfflineModeIsEnabled"):
        return HubError(
            f"cannot upload to {f.where}: uploads need the Hub and HF_HUB_OFFLINE=1 turns it "
            "off; unset HF_HUB_OFFLINE to push"
        )
    if f.is_a("OfflineModeIsEnabled") or (
        f.is_a("LocalEntryNotFoundError") and (f.local_files_only or hub_offline())
    ):
        switch = "local_files_only=True" if f.local_files_only else "HF_HUB_OFFLINE=1"
        what = f"{f.filename} of {f.where}" if f.filename else f.where
        return HubError(
            f"{what} is not in the local Hub cache and downloads are disabled ({switch}): "
            "download it once online, or unset HF_HUB_OFFLINE / local_files_only"
        )
    return None


def _network(f: _Failure) -> HubError | None:
    """The network or the server failed (HubConnectionError: worth retrying)."""
    from huggingface_hub.errors import FileMetadataError

    reason = _network_reason(f.err)
    if reason is not None and f.writing:
        return HubConnectionError(
            f"could not reach the Hub at {_endpoint()} ({reason}) to upload to {f.where}: check "
            "your connection, proxy or HF_ENDPOINT, then push again"
        )
    if reason is not None:
        return HubConnectionError(
            f"could not reach the Hub at {_endpoint()} ({reason}) and {f.where} is not cached: "
            "check your connection, proxy or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache"
        )
    if f.is_a("FileMetadataError") or (
        f.is_a("LocalEntryNotFoundError") and isinstance(f.err.__cause__, FileMetadataError)
    ):
        return HubError(
            f"the server at {_endpoint()} did not answer like a Hugging Face Hub: check HF_ENDPOINT"
        )
    if f.is_a("LocalEntryNotFoundError"):
        return HubConnectionError(
            f"could not download {f.where} and it is not in the local cache: check your "
            "connection and try again"
        )
    return None


def _anything_else(f: _Failure) -> HubError:
    """Any other failure: its own first line, a server error (5xx) worth retrying."""
    action = f"the upload to {f.repo_id}" if f.writing else f"the download of {f.repo_id}"
    if f.is_a("HfHubHTTPError"):
        status = f.status
        code = f" ({status})" if status else ""
        text = str(f.err).strip()
        first = text.splitlines()[0] if text else type(f.err).__name__
        failed = HubConnectionError if isinstance(status, int) and status >= 500 else HubError
        return failed(f"{action} failed{code}: {first}")
    return HubError(f"{action} failed: {type(f.err).__name__}: {f.err}")


#: The rules, in order: the first that recognises a failure words it.
_RULES: tuple[Callable[[_Failure], HubError | None], ...] = (
    _repository,
    _permission,
    _offline_mode,
    _network,
)


def translate(
    err: BaseException,
    *,
    repo_id: str,
    revision: str | None = None,
    filename: str | None = None,
    subfolder: str | None = None,
    token: Any = None,
    local_files_only: bool = False,
    direction: Literal["download", "upload"] = "download",
) -> HubError:
    """Turn an exception raised by ``huggingface_hub`` into a short, actionable HubError.

    ``direction`` says what was being done, so that a failed upload speaks of uploading, not of
    downloads and the cache. Network and server failures give a :class:`HubConnectionError`.
    """
    if isinstance(err, PbAdaptersError):
        return HubError(str(err))
    failure = _Failure(
        err, repo_id, revision, filename, subfolder, token, local_files_only, direction == "upload"
    )
    for rule in _RULES:
        found = rule(failure)
        if found is not None:
            return found
    return _anything_else(failure)


def hub_failure(
    err: BaseException, *, repo_id: str, revision: str | None = None, token: Any = None
) -> HubError | None:
    """A short :class:`HubError` if ``err`` (or an exception it chains) is a Hub access problem.

    For code that calls another library's Hub download (timm, transformers) and must tell a
    missing, private or gated repository, an unknown revision, offline mode or a network failure
    from any other error; ``None`` for the other errors.
    """
    from huggingface_hub.errors import (
        DisabledRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    access = (
        DisabledRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        OfflineModeIsEnabled,
        LocalEntryNotFoundError,
    )
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(getattr(current, "response", None), "status_code", None)
        specific = isinstance(current, access) or (
            isinstance(current, HfHubHTTPError) and status in (401, 403)
        )
        if specific or _network_reason(current) is not None:
            return translate(current, repo_id=repo_id, revision=revision, token=token)
        current = current.__cause__ or current.__context__
    return None
