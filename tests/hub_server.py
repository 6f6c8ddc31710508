"""A Hugging Face Hub test double: an in-memory HTTP server for the real `huggingface_hub` client.

This is NOT a product feature and not a Hub implementation. It is a test double that serves only
the routes edgetune drives through `huggingface_hub` 1.33 (`edgetune publish`, `edgetune followers`,
`edgetune pull`), with the JSON shapes and headers that client parses, and it rejects what the real
Hub rejects for those calls (bad tokens, missing or private repos, gated downloads, stale parent
commits, unknown LFS objects, ...). Anything else answers 404 "not implemented by the Hub test
double", so a test that wanders off the supported surface fails loudly instead of passing quietly.

Point the client at it with `HF_ENDPOINT` / `HfApi(endpoint=server.endpoint)`; the `hub` fixture in
tests/conftest.py does that and more (see there). Standard library only.

Routes (repo ids are "owner/name"; only model repos; revisions are branches, tags or full commit
shas; organisations, pull requests and Xet are not implemented):

    GET    /api/whoami-v2
    POST   /api/repos/create                       (409 with "url" when it exists, as the Hub)
    POST   /api/validate-yaml                      (accepts every README: metadata is not checked)
    GET    /api/models/{repo}[/revision/{rev}]     (?blobs=1 adds size/blobId/lfs to siblings)
    GET    /api/models/{repo}/auth-check[/write]
    PUT    /api/models/{repo}/settings             (gated False|"auto"|"manual", visibility)
    POST   /api/models/{repo}/preupload/{rev}
    POST   /api/models/{repo}/commit/{rev}         (NDJSON: header, file, lfsFile, deletedFile, deletedFolder)
    GET    /api/models/{repo}/tree/{rev}[/{path}]  (?recursive=; no pagination, `expand` ignored)
    POST   /api/models/{repo}/paths-info/{rev}
    GET    /api/models/{repo}/commits/{rev}
    GET    /api/models/{repo}/refs
    POST   /api/models/{repo}/tag/{rev}            DELETE /api/models/{repo}/tag/{tag}
    GET    /api/models/{repo}/user-access-request/{pending|accepted|rejected}
    POST   /api/models/{repo}/user-access-request/{handle|grant}
    POST   /{repo}.git/info/lfs/objects/batch      ("basic" transfer only) and .../objects/verify
    PUT    /_lfs/{ticket}                          (the upload href; no auth, like a presigned URL)
    GET|HEAD /{repo}/resolve/{rev}/{path}          (Range requests answer 206)

Behaviour worth knowing when writing tests:

- Creating a repo makes an initial commit holding a `.gitattributes`, as the Hub does. Its
  `filter=lfs` patterns (*.gguf, *.bin, *.safetensors, ... see `DEFAULT_GITATTRIBUTES`) decide, with
  the Hub's other two rules (size >= 10 MiB, or a NUL byte in the 512-byte sample), which files
  preupload sends to LFS. So a small `.gguf` goes to LFS: tests need no 10 MiB files.
- LFS file contents live in one store, but each repo only "has" the objects uploaded to it: the
  batch endpoint skips (no `actions`) exactly the objects already uploaded to that repo, and a
  commit may only reference those (else 400, with the Hub's message).
- LFS files are served directly by /resolve (200/206), not redirected to a CDN; the headers
  (`X-Linked-Etag`, `X-Linked-Size`, `ETag` of the pointer) are the Hub's.
- A commit that changes nothing still makes a new (empty) commit, as the Hub does; the client is
  the one that skips unchanged uploads.
- Granting access to a user who already has it answers 400, as `HfApi.grant_access` documents.

Test helpers on `HubServer`: `add_user`, `request_access` (the Hub does this from its web UI),
`repo_files`, `tags`, `stats` (+ `reset_stats`), and fault injection with `fail_next` and
`cut_download`. Every request is recorded in `stats.requests` as (method, path, status), with the
path URL-decoded and without its query string; fault patterns are searched in that same path.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import secrets
import socket
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, NamedTuple
from urllib.parse import parse_qs, unquote

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub sends files of 10 MiB or more to LFS
SAMPLE_SIZE = 512  # bytes of each file the client sends to preupload

DEFAULT_GITATTRIBUTES = b"".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n".encode()
    for ext in ("7z", "bin", "ckpt", "gguf", "gz", "h5", "msgpack", "npy", "npz", "onnx", "pkl",
                "pt", "pth", "safetensors", "tar", "tflite", "zip")
)

_CHUNK = 1024 * 1024
_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_API = rf"/api/models/{_REPO}"


class RequestRecord(NamedTuple):
    method: str
    path: str
    status: int


@dataclass
class HubStats:
    """Counters tests assert on; `commits` counts commits made through the commit endpoint only."""

    lfs_bytes_received: int = 0  # bodies of LFS upload PUTs
    regular_bytes_received: int = 0  # decoded content of "file" operations in commit payloads
    preupload_sample_bytes: int = 0  # decoded samples sent to preupload
    commits: int = 0
    requests: list[RequestRecord] = field(default_factory=list)


class HubError(Exception):
    """An error answer in the Hub's format: JSON {"error": ...} plus X-Error-Code/X-Error-Message."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra or {}

    def response(self) -> _Response:
        headers = {"X-Error-Message": self.message.encode("ascii", "backslashreplace").decode(), **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return _json_response({"error": self.message, **self.extra}, self.status, headers)


@dataclass
class _Response:
    status: int
    body: bytes | memoryview = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Request:
    method: str
    raw_path: str  # still URL-quoted: routes match on it so that %2F inside a segment stays put
    path: str  # decoded: recorded and matched by fault injection
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    user: str | None = None

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")

    def json(self) -> dict[str, Any]:
        try:
            payload = json.loads(self.body or b"{}")
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise HubError(400, "The body must be a JSON object")
        return payload


@dataclass(frozen=True)
class _LfsPointer:
    """What a git tree holds for an LFS file: the pointer, whose git oid is what the Hub lists."""

    sha256: str
    size: int

    @property
    def text(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {self.size}\n").encode()


_Blob = bytes | _LfsPointer


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, _Blob]
    title: str
    message: str
    author: str
    date: datetime


@dataclass
class _AccessRequest:
    username: str
    status: str
    timestamp: datetime
    fields: dict[str, Any] | None
    email: str | None


@dataclass
class _Repo:
    repo_id: str
    owner: str
    private: bool
    created: datetime
    gated: bool | str = False
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)
    access_requests: dict[str, _AccessRequest] = field(default_factory=dict)


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    value: int  # status to answer (fail_next) or bytes to send before closing (cut_download)


class HubServer:
    """The test double. Start it (or use it as a context manager); everything is in memory."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._httpd = _HTTPServer((host, port), self)
        self.endpoint = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hub-test-double", daemon=True)
        self._lock = threading.RLock()
        self._tokens: dict[str, str] = {}  # token -> username
        self._users: dict[str, str] = {}  # username -> token
        self._repos: dict[str, _Repo] = {}
        self._lfs_blobs: dict[str, bytes] = {}  # sha256 -> content
        self._upload_tickets: dict[str, tuple[str, str, int]] = {}  # ticket -> (repo_id, oid, size)
        self._failures: list[_Fault] = []
        self._cuts: list[_Fault] = []
        self._sequence = itertools.count()
        self.stats = HubStats()
        self._routes = self._build_routes()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop the client's idle keep-alive connections so their threads end."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        self._thread.join()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- test helpers

    def add_user(self, name: str) -> str:
        """Create a user and return their token ("hf_" + random hex)."""
        with self._lock:
            if name in self._users:
                raise ValueError(f"user {name!r} already exists")
            token = "hf_" + secrets.token_hex(16)
            self._users[name], self._tokens[token] = token, name
            return token

    def token_of(self, name: str) -> str:
        with self._lock:
            return self._users[name]

    def request_access(self, repo_id: str, username: str, fields: dict[str, Any] | None = None,
                       email: str | None = None) -> None:
        """What a follower does from the repo page: ask for access (accepted at once if gated="auto")."""
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None or username not in self._users:
                raise ValueError(f"unknown repo {repo_id!r} or user {username!r}")
            if not repo.gated:
                raise ValueError(f"{repo_id} is not gated: the Hub shows no access form")
            if username in repo.access_requests:
                raise ValueError(f"{username} already requested access to {repo_id}")
            status = "accepted" if repo.gated == "auto" else "pending"
            repo.access_requests[username] = _AccessRequest(username, status, _now(), fields, email)

    def repo_files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """Every file of the repo at `rev`, LFS files resolved to their content."""
        with self._lock:
            commit = self._commit_at(self._repos[repo_id], rev)
            return {path: self._content(blob) for path, blob in commit.files.items()}

    def tags(self, repo_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._repos[repo_id].tags)

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = HubStats()

    def fail_next(self, method: str, path_regex: str, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` matching requests with `status` before handling them.

        The body is drained (the connection stays usable) and not counted in `stats`. A 429 carries
        `Retry-After: 0`, so the client's backoff waits its minimum (1 s).
        """
        with self._lock:
            self._failures.append(_Fault(method.upper(), re.compile(path_regex), times, status))

    def cut_download(self, path_regex: str, after_bytes: int, times: int = 1) -> None:
        """On the next `times` successful matching GETs, send the full headers, then only
        `after_bytes` bytes of the body, then close the connection: an interrupted download.

        The 1.33 client resumes (Range: bytes=N-) within the same `hf_hub_download` call, from what
        it has written, and it writes whole 10 MiB pieces: a cut before 10 MiB restarts from 0.
        """
        with self._lock:
            self._cuts.append(_Fault("GET", re.compile(path_regex), times, after_bytes))

    # ----------------------------------------------------------------- request plumbing

    def _serve(self, handler: _Handler) -> None:
        """One HTTP exchange: read the whole body, record (method, path, status), answer."""
        raw_path, _, query = handler.path.partition("?")
        request = _Request(handler.command, raw_path, unquote(raw_path), parse_qs(query), handler.headers, b"")
        try:
            request.body = _read_body(handler)
        except ConnectionError:
            handler.close_connection = True
            return
        except HubError as error:  # an unread body leaves the connection out of step: close it
            handler.close_connection = True
            response = error.response()
        else:
            response = self._injected_failure(request) or self._handle(request)
        cut = self._take_fault(self._cuts, request) if request.method == "GET" and response.status < 300 else None
        with self._lock:  # before answering: a test reads the record as soon as it has the answer
            self.stats.requests.append(RequestRecord(request.method, request.path, response.status))
        try:
            _send(handler, request.method, response, cut)
        except OSError:
            handler.close_connection = True

    def _injected_failure(self, request: _Request) -> _Response | None:
        status = self._take_fault(self._failures, request)
        if status is None:
            return None
        headers = {"Retry-After": "0"} if status == 429 else {}
        return _json_response({"error": "Injected failure (Hub test double)"}, status, headers)

    def _take_fault(self, faults: list[_Fault], request: _Request) -> int | None:
        with self._lock:
            for fault in faults:
                if fault.method == request.method and fault.pattern.search(request.path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        faults.remove(fault)
                    return fault.value
        return None

    def _handle(self, request: _Request) -> _Response:
        with self._lock:
            try:
                request.user = self._authenticate(request)
                for methods, pattern, route in self._routes:
                    match = pattern.fullmatch(request.raw_path)
                    if match and request.method in methods:
                        args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        return route(request, **args)
                raise HubError(404, f"{request.method} {request.path} is not implemented by the Hub test double")
            except HubError as error:
                return error.response()
            except Exception:  # a bug in the double: make it visible in the test output
                traceback.print_exc()
                return _json_response({"error": traceback.format_exc()}, 500)

    def _build_routes(self) -> list[tuple[tuple[str, ...], re.Pattern[str], Callable[..., _Response]]]:
        table = [
            ("GET", "/api/whoami-v2", self._whoami),
            ("POST", "/api/repos/create", self._create_repo),
            ("POST", "/api/validate-yaml", self._validate_yaml),
            ("GET", rf"{_API}(?:/revision/(?P<revision>[^/]+))?", self._model_info),
            ("PUT", rf"{_API}/settings", self._update_settings),
            ("GET", rf"{_API}/auth-check(?P<write>/write)?", self._auth_check),
            ("POST", rf"{_API}/preupload/(?P<revision>[^/]+)", self._preupload),
            ("POST", rf"{_API}/commit/(?P<revision>[^/]+)", self._commit),
            ("GET", rf"{_API}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", self._tree),
            ("POST", rf"{_API}/paths-info/(?P<revision>[^/]+)", self._paths_info),
            ("GET", rf"{_API}/commits/(?P<revision>[^/]+)", self._list_commits),
            ("GET", rf"{_API}/refs", self._refs),
            ("POST", rf"{_API}/tag/(?P<revision>[^/]+)", self._create_tag),
            ("DELETE", rf"{_API}/tag/(?P<tag>[^/]+)", self._delete_tag),
            ("GET", rf"{_API}/user-access-request/(?P<status>pending|accepted|rejected)", self._list_access),
            ("POST", rf"{_API}/user-access-request/handle", self._handle_access),
            ("POST", rf"{_API}/user-access-request/grant", self._grant_access),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", self._lfs_verify),
            ("PUT", r"/_lfs/(?P<ticket>[0-9a-f]+)", self._lfs_put),
            ("GET HEAD", rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", self._resolve),
        ]
        return [(tuple(methods.split()), re.compile(pattern), route) for methods, pattern, route in table]

    # ----------------------------------------------------------------- access control

    def _authenticate(self, request: _Request) -> str | None:
        """The Hub rejects an unknown token on every route, public ones included."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        user = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _visible_repo(self, request: _Request, repo_id: str) -> _Repo:
        """Missing and private-to-someone-else repos look the same: 401 anonymous, 404 otherwise."""
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and request.user != repo.owner):
            raise HubError(404 if request.user else 401, "Repository not found", "RepoNotFound")
        return repo

    def _owned_repo(self, request: _Request, repo_id: str) -> _Repo:
        repo = self._visible_repo(request, repo_id)
        if request.user is None:
            raise HubError(401, "You must be authenticated to do this")
        if request.user != repo.owner:
            raise HubError(403, f"You don't have the rights to modify {repo_id}")
        return repo

    def _downloadable_repo(self, request: _Request, repo_id: str) -> _Repo:
        repo = self._visible_repo(request, repo_id)
        if repo.gated and request.user != repo.owner:
            if request.user is None:
                raise HubError(401, f"Access to model {repo_id} is restricted. You must have access to it "
                                    "and be authenticated to access it. Please log in.", "GatedRepo")
            access = repo.access_requests.get(request.user)
            if access is None or access.status != "accepted":
                raise HubError(403, f"Access to model {repo_id} is restricted and you are not in the "
                                    f"authorized list. Visit {self.endpoint}/{repo_id} to ask for access.",
                               "GatedRepo")
        return repo

    def _gated_owned_repo(self, request: _Request, repo_id: str) -> _Repo:
        repo = self._owned_repo(request, repo_id)
        if not repo.gated:
            raise HubError(400, f"Repository {repo_id} is not gated")
        return repo

    # ----------------------------------------------------------------- account and repos

    def _whoami(self, request: _Request) -> _Response:
        if request.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return _json_response({
            "type": "user", "id": _hex_id(request.user), "name": request.user, "fullname": request.user,
            "email": f"{request.user}@example.com", "emailVerified": True, "isPro": False, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
        })

    def _create_repo(self, request: _Request) -> _Response:
        if request.user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        payload = request.json()
        name, owner = payload.get("name"), payload.get("organization") or request.user
        if payload.get("type", "model") != "model":
            raise HubError(400, "Only model repos are implemented by the Hub test double")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name) \
                or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repo name: {name!r}")
        if owner != request.user:
            raise HubError(403, f"You don't have the rights to create a model under the namespace {owner}")
        repo_id = f"{owner}/{name}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self._repos:
            raise HubError(409, "You already created this model repo", extra={"url": url})
        repo = _Repo(repo_id, owner, payload.get("visibility") == "private", _now())
        self._repos[repo_id] = repo
        self._add_commit(repo, "main", {".gitattributes": DEFAULT_GITATTRIBUTES}, "initial commit", "", owner)
        return _json_response({"url": url, "name": repo_id, "id": _hex_id(repo_id)})

    def _validate_yaml(self, request: _Request) -> _Response:
        request.json()
        return _json_response({"errors": [], "warnings": []})

    def _model_info(self, request: _Request, repo_id: str, revision: str = "main") -> _Response:
        repo = self._visible_repo(request, repo_id)
        commit = self._commit_at(repo, revision)
        blobs = request.flag("blobs")
        return _json_response({
            "_id": _hex_id(repo_id), "id": repo_id, "modelId": repo_id, "author": repo.owner,
            "sha": commit.sha, "lastModified": _iso(commit.date), "createdAt": _iso(repo.created),
            "private": repo.private, "gated": repo.gated, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "usedStorage": sum(_size(b) for b in commit.files.values()),
            "siblings": [_sibling(path, blob, blobs) for path, blob in sorted(commit.files.items())],
        })

    def _auth_check(self, request: _Request, repo_id: str, write: str = "") -> _Response:
        """`HfApi.auth_check`: may this user download (or, with /write, push to) the repo?"""
        (self._owned_repo if write else self._downloadable_repo)(request, repo_id)
        return _json_response({})

    def _update_settings(self, request: _Request, repo_id: str) -> _Response:
        repo = self._owned_repo(request, repo_id)
        payload = request.json()
        if "gated" in payload and payload["gated"] not in (False, "auto", "manual"):
            raise HubError(400, f"Invalid gated value: {payload['gated']!r}")
        if "visibility" in payload and payload["visibility"] not in ("public", "private"):
            raise HubError(400, f"Invalid visibility: {payload['visibility']!r}")
        repo.gated = payload.get("gated", repo.gated)
        repo.private = payload.get("visibility", "private" if repo.private else "public") == "private"
        return _json_response({"gated": repo.gated, "private": repo.private})

    # ----------------------------------------------------------------- uploads

    def _preupload(self, request: _Request, repo_id: str, revision: str) -> _Response:
        """Upload mode per file; `oid` of files already there lets the client skip unchanged ones
        (sha256 for LFS files, git blob sha1 for regular ones: what the client computes locally)."""
        repo = self._owned_repo(request, repo_id)
        commit = self._commit_at(repo, revision)
        patterns = _lfs_patterns(commit.files.get(".gitattributes"))
        answers = []
        for entry in request.json().get("files", []):
            path, size = _check_path(entry.get("path")), int(entry.get("size", 0))
            sample = base64.b64decode(entry.get("sample", ""))
            self.stats.preupload_sample_bytes += len(sample)
            answer = {"path": path, "shouldIgnore": False,
                      "uploadMode": "lfs" if _goes_to_lfs(path, size, sample, patterns) else "regular"}
            existing = commit.files.get(path)
            if existing is not None:
                answer["oid"] = existing.sha256 if isinstance(existing, _LfsPointer) else _git_oid(existing)
            answers.append(answer)
        return _json_response({"files": answers, "commitOid": commit.sha})

    def _lfs_batch(self, request: _Request, repo_id: str) -> _Response:
        """Basic transfer: no `actions` for objects this repo already has, else upload + verify."""
        repo = self._owned_repo(request, repo_id)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the LFS upload operation is implemented by the Hub test double")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "Only the basic LFS transfer is implemented by the Hub test double")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid)
                    and isinstance(size, int) and size >= 0):
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
            elif oid in repo.lfs_oids:
                objects.append({"oid": oid, "size": size})
            else:
                ticket = secrets.token_hex(16)
                self._upload_tickets[ticket] = (repo_id, oid, size)
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.endpoint}/_lfs/{ticket}"},
                    "verify": {"href": f"{self.endpoint}/{repo_id}.git/info/lfs/objects/verify"},
                }})
        return _json_response({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, request: _Request, ticket: str) -> _Response:
        """The upload href: like a presigned storage URL, it needs no token but checks the content."""
        if ticket not in self._upload_tickets:
            raise HubError(403, "Invalid or expired upload URL")
        repo_id, oid, size = self._upload_tickets[ticket]
        self.stats.lfs_bytes_received += len(request.body)
        if len(request.body) != size or hashlib.sha256(request.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match the announced sha256 {oid} and size {size}")
        self._lfs_blobs[oid] = request.body
        self._repos[repo_id].lfs_oids.add(oid)
        return _Response(200)

    def _lfs_verify(self, request: _Request, repo_id: str) -> _Response:
        repo = self._owned_repo(request, repo_id)
        payload = request.json()
        oid = payload.get("oid")
        if oid not in repo.lfs_oids or len(self._lfs_blobs[oid]) != payload.get("size"):
            raise HubError(404, f"LFS object {oid} not found")
        return _json_response({"success": True})

    def _commit(self, request: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._owned_repo(request, repo_id)
        if request.flag("create_pr"):
            raise HubError(400, "Pull requests are not implemented by the Hub test double")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        header, operations = self._parse_commit_payload(request.body)
        head = repo.branches[revision]
        parent = header.get("parentCommit")
        if parent and not head.startswith(parent):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise HubError(400, "Commit summary is required")
        files = self._apply_operations(repo, dict(repo.commits[head].files), operations)
        commit = self._add_commit(repo, revision, files, summary, header.get("description", ""), request.user)
        self.stats.commits += 1
        return _json_response({"success": True, "commitOid": commit.sha, "hookOutput": "",
                               "commitUrl": f"{self.endpoint}/{repo_id}/commit/{commit.sha}",
                               "pullRequestUrl": None})

    def _parse_commit_payload(self, body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "Invalid NDJSON commit payload") from None
        if not lines or lines[0].get("key") != "header" or not isinstance(lines[0].get("value"), dict):
            raise HubError(400, "The commit payload must start with a header line")
        return lines[0]["value"], lines[1:]

    def _apply_operations(self, repo: _Repo, files: dict[str, _Blob],
                          operations: list[dict[str, Any]]) -> dict[str, _Blob]:
        missing_lfs = []
        for operation in operations:
            key, value = operation.get("key"), operation.get("value") or {}
            path = _check_path(value.get("path"))
            if key == "file":
                files[path] = self._regular_content(path, value)
            elif key == "lfsFile":
                oid = value.get("oid")
                if oid not in repo.lfs_oids:
                    missing_lfs.append(path)
                    continue
                size = len(self._lfs_blobs[oid])
                if value.get("size", size) != size:
                    raise HubError(400, f"Size mismatch for LFS file {path}")
                files[path] = _LfsPointer(oid, size)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation: {key!r}")
        if missing_lfs:
            raise HubError(400, "Your push was rejected because an LFS pointer pointed to a file that does "
                                "not exist. For instance, this can happen if you used git push --no-verify "
                                "to push your changes. Offending file: - " + ", ".join(missing_lfs))
        return files

    def _regular_content(self, path: str, value: dict[str, Any]) -> bytes:
        """Decode a regular file; like the Hub, refuse large or binary files outside LFS."""
        content = value.get("content", "")
        data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
        self.stats.regular_bytes_received += len(data)
        if len(data) >= LFS_SIZE_THRESHOLD:
            raise HubError(400, f"Your push was rejected because it contains files larger than 10 MiB "
                                f"({path}). Please use https://git-lfs.github.com/ to store large files.")
        if b"\0" in data[:SAMPLE_SIZE]:
            raise HubError(400, f"Your push was rejected because it contains binary files ({path}). "
                                "Please use https://git-lfs.github.com/ to store binary files.")
        return data

    # ----------------------------------------------------------------- browsing

    def _tree(self, request: _Request, repo_id: str, revision: str, path: str = "") -> _Response:
        commit = self._commit_at(self._visible_repo(request, repo_id), revision)
        prefix = path.strip("/")
        base = prefix + "/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for file_path, blob in commit.files.items():
            if not file_path.startswith(base):
                continue
            parts = file_path[len(base):].split("/")
            for depth in range(1, len(parts) if request.flag("recursive") else min(len(parts), 2)):
                folder = base + "/".join(parts[:depth])
                entries.setdefault(folder, _folder_entry(folder, commit.files))
            if request.flag("recursive") or len(parts) == 1:
                entries[file_path] = _file_entry(file_path, blob)
        if prefix and not entries:
            raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound")
        return _json_response([entries[p] for p in sorted(entries)])

    def _paths_info(self, request: _Request, repo_id: str, revision: str) -> _Response:
        commit = self._commit_at(self._visible_repo(request, repo_id), revision)
        form = parse_qs(request.body.decode())
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                entries.append(_file_entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                entries.append(_folder_entry(path, commit.files))
        return _json_response(entries)

    def _list_commits(self, request: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._visible_repo(request, repo_id)
        commit: _Commit | None = self._commit_at(repo, revision)
        history = []
        while commit is not None:
            history.append({"id": commit.sha, "title": commit.title, "message": commit.message,
                            "authors": [{"user": commit.author}], "date": _iso(commit.date)})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return _json_response(history)

    def _refs(self, request: _Request, repo_id: str) -> _Response:
        repo = self._visible_repo(request, repo_id)

        def refs(kind: str, names: dict[str, str]) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": sha} for n, sha in names.items()]

        answer = {"branches": refs("heads", repo.branches), "converts": [], "tags": refs("tags", repo.tags)}
        if request.flag("include_prs"):
            answer["pullRequests"] = []
        return _json_response(answer)

    def _create_tag(self, request: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._owned_repo(request, repo_id)
        commit = self._commit_at(repo, revision)
        tag = request.json().get("tag")
        if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", tag):
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = commit.sha
        return _json_response({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.sha})

    def _delete_tag(self, request: _Request, repo_id: str, tag: str) -> _Response:
        repo = self._owned_repo(request, repo_id)
        if repo.tags.pop(tag, None) is None:
            raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        return _json_response({})

    # ----------------------------------------------------------------- downloads

    def _resolve(self, request: _Request, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._downloadable_repo(request, repo_id)
        commit = self._commit_at(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        content = self._content(blob)
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{_git_oid(blob)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if isinstance(blob, _LfsPointer):
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        byte_range = request.headers.get("Range")
        if byte_range is None:
            return _Response(200, memoryview(content), headers)
        start, end = _parse_range(byte_range, len(content))
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(content)}"
        return _Response(206, memoryview(content)[start:end], headers)

    # ----------------------------------------------------------------- access requests

    def _list_access(self, request: _Request, repo_id: str, status: str) -> _Response:
        repo = self._gated_owned_repo(request, repo_id)
        return _json_response([_access_json(r) for r in repo.access_requests.values() if r.status == status])

    def _handle_access(self, request: _Request, repo_id: str) -> _Response:
        """accept / reject / cancel (back to pending) an existing request."""
        repo = self._gated_owned_repo(request, repo_id)
        payload = request.json()
        username, status = payload.get("user"), payload.get("status")
        if status not in ("pending", "accepted", "rejected"):
            raise HubError(400, f"Invalid status: {status!r}")
        if len(payload.get("rejectionReason") or "") > 200:
            raise HubError(400, "The rejection reason must be at most 200 characters")
        if username not in self._users:
            raise HubError(404, f"User {username} not found")
        access = repo.access_requests.get(username)
        if access is None:
            raise HubError(404, f"No access request from {username} on {repo_id}")
        if access.status == status:
            raise HubError(404, f"The access request of {username} is already in the {status} list")
        access.status = status
        return _json_response({"success": True})

    def _grant_access(self, request: _Request, repo_id: str) -> _Response:
        repo = self._gated_owned_repo(request, repo_id)
        username = request.json().get("user")
        if username not in self._users:
            raise HubError(404, f"User {username} not found")
        access = repo.access_requests.get(username)
        if access is not None and access.status == "accepted":
            raise HubError(400, f"{username} already has access to {repo_id}")
        access = repo.access_requests[username] = _AccessRequest(username, "accepted", _now(), None, None)
        return _json_response(_access_json(access))

    # ----------------------------------------------------------------- storage

    def _add_commit(self, repo: _Repo, branch: str, files: dict[str, _Blob], title: str,
                    message: str, author: str) -> _Commit:
        parent = repo.branches.get(branch)
        seed = json.dumps([repo.repo_id, parent, title, next(self._sequence),
                           sorted((path, _git_oid(blob)) for path, blob in files.items())])
        commit = _Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, files, title, message, author, _now())
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def _commit_at(self, repo: _Repo, revision: str) -> _Commit:
        sha = repo.branches.get(revision) or repo.tags.get(revision) or revision
        if sha not in repo.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    def _content(self, blob: _Blob) -> bytes:
        return self._lfs_blobs[blob.sha256] if isinstance(blob, _LfsPointer) else blob


class _HTTPServer(ThreadingHTTPServer):
    """Thread per connection; remembers open connections so `stop` can close idle keep-alives."""

    daemon_threads = True
    block_on_close = False  # never wait on a client's idle keep-alive connection

    def __init__(self, address: tuple[str, int], hub: HubServer):
        super().__init__(address, _Handler)
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: 1,000 small requests reuse one connection
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between headers and body
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        self.server.hub._serve(self)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are recorded in `HubServer.stats.requests` instead."""


# --------------------------------------------------------------------- HTTP helpers

def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Bodies are read whole before answering, so that a keep-alive connection stays in step.
    The client always sends a Content-Length (even for file objects), so chunked is refused."""
    if "Transfer-Encoding" in handler.headers:
        raise HubError(411, "Content-Length required: the Hub test double does not read chunked bodies")
    return _read_exact(handler.rfile, int(handler.headers.get("Content-Length") or 0))


def _read_exact(rfile: Any, length: int) -> bytes:
    """Read in 1 MiB pieces joined once: linear in the body size."""
    parts, remaining = [], length
    while remaining:
        part = rfile.read(min(remaining, _CHUNK))
        if not part:
            raise ConnectionError("client closed the connection mid-body")
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _send(handler: BaseHTTPRequestHandler, method: str, response: _Response, cut: int | None) -> None:
    handler.send_response(response.status)
    for name, value in response.headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(response.body)))
    handler.end_headers()
    if method == "HEAD":
        return
    handler.wfile.write(response.body if cut is None else response.body[:cut])
    if cut is not None:
        handler.close_connection = True


def _json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(data).encode(),
                     {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """A single `bytes=` range as [start, end); 416 when it cannot be satisfied."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise HubError(416, f"Unsupported Range: {header}", headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last) + 1 if last else size, size)
    else:
        start, end = max(size - int(last), 0), size
    if start >= end:
        raise HubError(416, f"Range not satisfiable: {header}", headers={"Content-Range": f"bytes */{size}"})
    return start, end


# --------------------------------------------------------------------- git and LFS helpers

def _git_oid(blob: _Blob) -> str:
    """The git blob sha1: of the content for regular files, of the pointer for LFS files."""
    data = blob.text if isinstance(blob, _LfsPointer) else blob
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _size(blob: _Blob) -> int:
    return blob.size if isinstance(blob, _LfsPointer) else len(blob)


def _lfs_json(blob: _Blob) -> dict[str, Any] | None:
    if not isinstance(blob, _LfsPointer):
        return None
    return {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.text)}


def _file_entry(path: str, blob: _Blob) -> dict[str, Any]:
    entry = {"type": "file", "oid": _git_oid(blob), "size": _size(blob), "path": path}
    if lfs := _lfs_json(blob):
        entry["lfs"] = lfs
    return entry


def _folder_entry(folder: str, files: dict[str, _Blob]) -> dict[str, Any]:
    """A stable tree id derived from what the folder holds (not git's, which tests never need)."""
    inside = sorted((p, _git_oid(b)) for p, b in files.items() if p.startswith(folder + "/"))
    return {"type": "directory", "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(),
            "size": 0, "path": folder}


def _sibling(path: str, blob: _Blob, with_blobs: bool) -> dict[str, Any]:
    if not with_blobs:
        return {"rfilename": path}
    sibling = {"rfilename": path, "size": _size(blob), "blobId": _git_oid(blob)}
    if lfs := _lfs_json(blob):
        sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
    return sibling


def _lfs_patterns(gitattributes: _Blob | None) -> list[str]:
    if not isinstance(gitattributes, bytes):
        return []
    lines = (line.split() for line in gitattributes.decode(errors="replace").splitlines())
    return [parts[0] for parts in lines if len(parts) > 1 and "filter=lfs" in parts[1:]]


def _goes_to_lfs(path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
    """The Hub's rule: 10 MiB or more, a binary sample, or a `filter=lfs` .gitattributes pattern
    (one without "/" matches the file name at any depth, as in git)."""
    name = path.rsplit("/", 1)[-1]
    return (size >= LFS_SIZE_THRESHOLD or b"\0" in sample
            or any(fnmatch.fnmatchcase(path if "/" in p else name, p.lstrip("/")) for p in patterns))


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") \
            or any(part in ("", ".", "..", ".git") for part in path.rstrip("/").split("/")):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


# --------------------------------------------------------------------- misc

def _access_json(access: _AccessRequest) -> dict[str, Any]:
    user = {"user": access.username, "fullname": access.username, "type": "user"}
    if access.email is not None:
        user["email"] = access.email
    entry: dict[str, Any] = {"user": user, "status": access.status, "timestamp": _iso(access.timestamp)}
    if access.fields is not None:
        entry["fields"] = access.fields
    return entry


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    """The Hub's timestamp format, which `huggingface_hub.utils.parse_datetime` expects."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _hex_id(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:24]
