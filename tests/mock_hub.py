"""A minimal Hugging Face Hub server on 127.0.0.1 for tests that push and load models.

It implements the HTTP routes that huggingface_hub 2.4 and transformers 5 call for `create_repo`,
`create_branch`, `upload_folder` / `create_commit`, `model_info`, `list_repo_tree`, `hf_hub_download` and
`from_pretrained`, for model repositories only. Every commit keeps its own file tree, so a branch name and a
commit sha both work as a revision. Files are held in memory.

The preupload route returns upload mode "regular" for every file, so file contents arrive base64-encoded
inside the commit NDJSON and no LFS or Xet storage is needed. Point a client at it with `HF_ENDPOINT=hub.endpoint`,
set before huggingface_hub is imported (the library reads it at import time).

    with MockHub() as hub:
        subprocess.run([...], env={**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "dummy"})
        hub.files("org/model")  # {path: bytes} at the head of main
"""

import base64
import hashlib
import itertools
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


logger = logging.getLogger(__name__)

DEFAULT_BRANCH = "main"
INITIAL_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob, as `git hash-object` and the Hub compute it."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, bytes]
    date: str
    changed_paths: list[str] = field(default_factory=list)  # paths added, replaced or deleted by this commit


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)


class HubError(Exception):
    """An error response: HTTP status, the Hub's `X-Error-Code` (what huggingface_hub maps to exceptions), message."""

    def __init__(
        self, status: int, message: str, error_code: str | None = None, commit: str | None = None, **extra_body
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.commit = commit
        self.extra_body = extra_body


class MockHub:
    """The server and its repositories. `start()` binds a free port on 127.0.0.1."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> str:
        handler = type("BoundHubHandler", (HubRequestHandler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mock-hub", daemon=True)
        self._thread.start()
        logger.info("Mock hub listening on %s", self.endpoint)
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
            logger.info("Mock hub stopped")

    def __enter__(self) -> "MockHub":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("The mock hub is not running; call start() first.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- inspection for tests --------------------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = DEFAULT_BRANCH) -> dict[str, bytes]:
        """The files of `repo_id` at a branch or commit sha."""
        with self._lock:
            repo = self._repo(repo_id)
            return dict(repo.commits[self._resolve(repo, revision)].files)

    def changed_paths(self, repo_id: str, commit: str) -> list[str]:
        """Paths that the commit `commit` added, replaced or deleted."""
        with self._lock:
            return list(self._repo(repo_id).commits[commit].changed_paths)

    def commit_history(self, repo_id: str, branch: str = DEFAULT_BRANCH) -> list[str]:
        """Commit shas of `branch`, oldest first."""
        with self._lock:
            repo = self._repo(repo_id)
            history, oid = [], repo.branches[branch]
            while oid is not None:
                history.append(oid)
                oid = repo.commits[oid].parent
            return history[::-1]

    # -- repository state (callers hold the lock) ------------------------------------------------------------

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found.", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_commit(
        self, repo: Repo, parent: str | None, title: str, files: dict[str, bytes], changed_paths: list[str]
    ) -> Commit:
        digest = hashlib.sha1(f"{repo.repo_id}\n{parent}\n{title}\n{next(self._counter)}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha1(files[path])}\n".encode())
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        commit = Commit(digest.hexdigest(), parent, title, files, date, changed_paths)
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        with self._lock:
            if repo_id in self.repos:
                # huggingface_hub's `create_repo(exist_ok=True)` reads the repository URL from this 409 body.
                raise HubError(409, "You already created this model repo", url=f"{self.endpoint}/{repo_id}")
            repo = Repo(repo_id=repo_id, private=private)
            # The real Hub starts every repository with a commit that adds `.gitattributes`.
            files = {".gitattributes": INITIAL_GITATTRIBUTES}
            initial = self._new_commit(repo, None, "initial commit", files, [".gitattributes"])
            repo.branches[DEFAULT_BRANCH] = initial.oid
            self.repos[repo_id] = repo
            return repo

    def create_branch(self, repo_id: str, branch: str, starting_point: str | None) -> None:
        with self._lock:
            repo = self._repo(repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            repo.branches[branch] = self._resolve(repo, starting_point or DEFAULT_BRANCH)

    def commit(self, repo_id: str, branch: str, lines: list[dict]) -> Commit:
        with self._lock:
            repo = self._repo(repo_id)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.branches[branch]
            header = lines[0]["value"] if lines and lines[0].get("key") == "header" else {}
            if header.get("parentCommit") not in (None, head):
                parent = header["parentCommit"]
                raise HubError(412, f"A commit has happened since. Parent commit {parent} is not {head}.")
            files = dict(repo.commits[head].files)
            changed_paths = [_apply_operation(files, line) for line in lines[1:]]
            commit = self._new_commit(repo, head, header.get("summary") or "Upload files", files, changed_paths)
            repo.branches[branch] = commit.oid
            return commit


def _apply_operation(files: dict[str, bytes], line: dict) -> str:
    """Apply one NDJSON commit operation to `files` and return its path."""
    key, value = line.get("key"), line.get("value", {})
    if key == "file":
        if value.get("encoding") != "base64":
            raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {value.get('path')}.")
        files[value["path"]] = base64.b64decode(value["content"])
        return value["path"]
    if key == "deletedFile":
        if files.pop(value["path"], None) is None:
            raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
        return value["path"]
    if key == "deletedFolder":
        prefix = value["path"].rstrip("/") + "/"
        for path in [path for path in files if path.startswith(prefix)]:
            del files[path]
        return prefix
    if key == "lfsFile":
        raise HubError(400, f"{value.get('path')}: LFS uploads are not supported; preupload returns 'regular'.")
    raise HubError(400, f"Unsupported commit operation {key!r}.")


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to the `MockHub` bound as the class attribute `hub`."""

    hub: MockHub
    protocol_version = "HTTP/1.1"

    # -- dispatch --------------------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        # Revisions and tree paths arrive percent-encoded as one segment ("refs%2Fpr%2F1"), so decode per segment.
        segments = [unquote(segment) for segment in url.path.strip("/").split("/")]
        self.hub.requests.append((method, url.path))
        body = self._read_body()
        try:
            self._route(method, segments, body)
        except HubError as error:
            logger.debug("%s %s failed with %d: %s", method, self.path, error.status, error.message)
            self._send_error(error)
        except Exception as error:  # noqa: BLE001  (a bug in the mock must reach the client, not hang it)
            logger.exception("Mock hub failed on %s %s", method, self.path)
            self._send_error(HubError(500, f"Mock hub error: {error!r}"))

    def _route(self, method: str, segments: list[str], body: bytes) -> None:
        if segments[:1] == ["api"]:
            return self._route_api(method, segments[1:], body)
        # /{namespace}/{name}/resolve/{revision}/{path...}
        if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(method, "/".join(segments[:2]), segments[3], "/".join(segments[4:]))
        raise HubError(404, f"Not found: {method} {self.path}")

    def _route_api(self, method: str, segments: list[str], body: bytes) -> None:
        if method == "POST" and segments == ["repos", "create"]:
            return self._create_repo(json.loads(body))
        if method == "POST" and segments == ["validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if len(segments) < 3 or segments[0] != "models":
            raise HubError(404, f"Not found: {method} {self.path} (the mock hub serves model repositories only)")
        repo_id, action, rest = "/".join(segments[1:3]), segments[3:4], segments[4:]
        if method == "GET" and action == []:
            return self._repo_info(repo_id, DEFAULT_BRANCH)
        if method == "GET" and action == ["revision"] and rest:
            return self._repo_info(repo_id, "/".join(rest))
        if method == "GET" and action == ["tree"] and rest:
            return self._list_tree(repo_id, rest[0], "/".join(rest[1:]))
        if method == "POST" and action == ["branch"] and rest:
            self._require_token()
            payload = json.loads(body) if body else {}
            self.hub.create_branch(repo_id, "/".join(rest), payload.get("startingPoint"))
            return self._send_json({})
        if method == "POST" and action == ["preupload"] and rest:
            return self._preupload(repo_id, "/".join(rest), json.loads(body))
        if method == "POST" and action == ["commit"] and rest:
            return self._commit(repo_id, "/".join(rest), body)
        raise HubError(404, f"Not found: {method} {self.path}")

    # -- write routes ----------------------------------------------------------------------------------------

    def _require_token(self) -> None:
        if not self.headers.get("authorization", "").startswith("Bearer "):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _create_repo(self, payload: dict) -> None:
        self._require_token()
        if payload.get("type", "model") != "model":
            raise HubError(400, f"Repository type {payload.get('type')!r} is not supported by the mock hub.")
        name, organization = payload["name"], payload.get("organization") or "mock-user"
        repo_id = f"{organization}/{name}"
        self.hub.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._send_json({"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        """Check that the README front matter parses as a YAML mapping, as the Hub's metadata check does first."""
        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            front_matter = content.split("---", 2)[1] if content.count("---") >= 2 else None
            try:
                metadata = yaml.safe_load(front_matter) if front_matter is not None else None
            except yaml.YAMLError as error:
                metadata, errors = None, [{"message": f"Invalid YAML: {error}"}]
            if not errors and not isinstance(metadata, dict):
                errors = [{"message": "The metadata block must be a YAML mapping closed by '---'."}]
        if errors:
            return self._send_json({"errors": errors, "warnings": []}, status=400)
        self._send_json({"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
        self._require_token()
        with self.hub._lock:
            repo = self.hub._repo(repo_id)
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            existing = repo.commits[repo.branches[revision]].files
        answers = [
            {
                "path": entry["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(existing[entry["path"]]) if entry["path"] in existing else None,
            }
            for entry in payload["files"]
        ]
        self._send_json({"files": answers, "commitOid": None})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        self._require_token()
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by the mock hub.")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        commit = self.hub.commit(repo_id, revision, lines)
        self._send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    # -- read routes -----------------------------------------------------------------------------------------

    def _readable_commit(self, repo_id: str, revision: str) -> tuple[Repo, Commit]:
        with self.hub._lock:
            repo = self.hub._repo(repo_id)
            if repo.private and not self.headers.get("authorization"):
                raise HubError(404, f"Repository {repo_id} not found.", "RepoNotFound")
            return repo, repo.commits[self.hub._resolve(repo, revision)]

    def _repo_info(self, repo_id: str, revision: str) -> None:
        repo, commit = self._readable_commit(repo_id, revision)
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }
        card_data = _front_matter(commit.files.get("README.md", b""))
        if card_data is not None:
            info["cardData"] = card_data
        self._send_json(info)

    def _list_tree(self, repo_id: str, revision: str, folder: str) -> None:
        _, commit = self._readable_commit(repo_id, revision)
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        if prefix and not any(path.startswith(prefix) for path in commit.files):
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound", commit=commit.oid)
        entries, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix) :]
            parts = relative.split("/")
            # Every folder between `prefix` and the file is listed once; files below a folder only when recursive.
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                content = commit.files[path]
                entries.append({"type": "file", "oid": git_blob_sha1(content), "size": len(content), "path": path})
        for path in sorted(folders):
            folder_oid = hashlib.sha1(path.encode()).hexdigest()
            entries.append({"type": "directory", "oid": folder_oid, "size": 0, "path": path})
        self._send_json(entries)

    def _resolve_file(self, method: str, repo_id: str, revision: str, path: str) -> None:
        _, commit = self._readable_commit(repo_id, revision)
        content = commit.files.get(path)
        if content is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=commit.oid)
        oid = git_blob_sha1(content)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", f'"{oid}"')
        self.send_header("X-Repo-Commit", commit.oid)
        self.send_header("Accept-Ranges", "none")
        self.end_headers()
        if method == "GET":
            self.wfile.write(content)

    # -- HTTP helpers ----------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, payload, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, error: HubError) -> None:
        data = json.dumps({"error": error.message, **error.extra_body}).encode()
        self.send_response(error.status, HTTPStatus(error.status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Error-Message", error.message)
        if error.error_code:
            self.send_header("X-Error-Code", error.error_code)
        if error.commit:
            self.send_header("X-Repo-Commit", error.commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002  (signature of BaseHTTPRequestHandler)
        logger.debug("%s %s", self.address_string(), format % args)


def _front_matter(readme: bytes) -> dict | None:
    text = readme.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    parts = text.split("---", 2)
    if len(parts) < 3:
        return None
    try:
        metadata = yaml.safe_load(parts[1])
    except yaml.YAMLError:
        return None
    return metadata if isinstance(metadata, dict) else None
