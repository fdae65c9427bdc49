"""A small local stand-in for the Hugging Face Hub, enough for the real ``huggingface_hub`` client.

Serves model repos the way the Hub's endpoints do (as read from huggingface_hub 2.4's source):

* ``HEAD/GET /{repo}/resolve/{revision}/{path}``: regular files answer 200 with ``ETag`` (git blob
  sha1), ``X-Repo-Commit`` and ``Content-Length``; LFS files (``*.safetensors``) answer 302 to a
  separate "CDN" origin with ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and ``X-Repo-Commit``.
  Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).
* ``GET /api/models/{repo}[/revision/{rev}]`` (model_info / repo_info).
* Uploads: ``POST /api/repos/create``, ``POST /api/validate-yaml``, ``POST /api/models/{repo}/preupload/{rev}``
  (every file is answered ``uploadMode: regular``, so content travels base64 in the commit) and
  ``POST /api/models/{repo}/commit/{rev}`` (ndjson). Writes need ``Authorization: Bearer <token>``.

Faults for tests: ``truncate_transfer`` / ``corrupt_transfer`` hold ``"repo_id/path"`` entries whose CDN
download is cut short or has flipped bytes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(".safetensors")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branches and tags -> commit sha

    def resolve(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.refs.get(revision)


class FakeHub:
    """Repos in memory, served on 127.0.0.1 (Hub API) and a second port (LFS "CDN")."""

    def __init__(self, token: str = "hf_test_token") -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.user_agents: list[str] = []
        self.truncate_transfer: set[str] = set()
        self.corrupt_transfer: set[str] = set()
        self.blobs: dict[str, bytes] = {}
        self._counter = 0
        self._lock = threading.Lock()
        self._api = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(api=True))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(api=False))
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self._api, self._cdn)]
        self._running = False

    # ---------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._api.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> "FakeHub":
        for thread in self._threads:
            thread.start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            for server in (self._api, self._cdn):
                server.shutdown()
                server.server_close()
            self._running = False

    # ---------------------------------------------------------------- content
    def create_repo(self, repo_id: str) -> Repo:
        repo = self.repos.setdefault(repo_id, Repo())
        if not repo.commits:
            self.commit(repo_id, {".gitattributes": GITATTRIBUTES}, replace=True)
        return repo

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", replace: bool = False,
               deleted: tuple[str, ...] = ()) -> str:
        """Add a commit on ``branch`` that adds/overwrites ``files`` (or holds only them with ``replace``)."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            parent = repo.refs.get(branch)
            tree = {} if replace or parent is None else dict(repo.commits[parent])
            tree.update(files)
            for path in deleted:
                tree.pop(path, None)
            self._counter += 1
            sha = hashlib.sha1(f"{repo_id}:{self._counter}:{sorted(tree)}".encode()).hexdigest()
            repo.commits[sha] = tree
            repo.refs[branch] = sha
            for data in tree.values():
                self.blobs[hashlib.sha256(data).hexdigest()] = data
            return sha

    def add_folder(self, repo_id: str, folder: Path, branch: str = "main") -> str:
        self.create_repo(repo_id)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.commit(repo_id, files, branch)

    def tag(self, repo_id: str, name: str, sha: str) -> None:
        self.repos[repo_id].refs[name] = sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]

    # ---------------------------------------------------------------- HTTP
    def _handler(self, api: bool) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                self._dispatch("HEAD")

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _dispatch(self, method: str) -> None:
                hub.requests.append((method, self.path))
                hub.user_agents.append(self.headers.get("User-Agent", ""))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    if api:
                        hub._route_api(self, method, body)
                    else:
                        hub._route_cdn(self, method)
                except Exception as exc:  # a stand-in bug must show up as a 500, not a hang
                    send_json(self, 500, {"error": repr(exc)})

        return Handler

    def _route_cdn(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path).path.strip("/").split("/")
        data = self.blobs.get(parts[-1]) if parts[0] == "lfs" else None
        if data is None:
            return send_bytes(handler, 404, b"not found")
        path = unquote(parse_qs(urlsplit(handler.path).query).get("file", [""])[0])
        if path in self.truncate_transfer:
            data = data[: len(data) // 2]
        elif path in self.corrupt_transfer:
            data = data[:100] + bytes(b ^ 0xFF for b in data[100:164]) + data[164:]
        start = 0
        range_header = handler.headers.get("Range")
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        status = 200
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[6:].split("-")[0] or 0)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            status = 206
        send_bytes(handler, status, data[start:], headers, head=method == "HEAD")

    def _route_api(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        url = urlsplit(handler.path)
        raw = url.path.strip("/").split("/")
        parts = [unquote(p) for p in raw]
        if method in ("HEAD", "GET") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(handler, method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        if method == "GET" and parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            if len(parts) == 4 or parts[4] == "revision":
                return self._model_info(handler, repo_id, parts[5] if len(parts) > 5 else "main")
        if method == "POST":
            if not self._authorized(handler):
                return self._error(handler, 401, "Unauthorized", "Invalid credentials in Authorization header")
            if parts == ["api", "repos", "create"]:
                return self._create(handler, json.loads(body))
            if parts == ["api", "validate-yaml"]:
                return self._validate_yaml(handler, json.loads(body))
            if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
                return self._preupload(handler, f"{parts[2]}/{parts[3]}", parts[5], json.loads(body))
            if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
                return self._commit(handler, f"{parts[2]}/{parts[3]}", parts[5], body)
        self._error(handler, 404, "NotFound", f"no route for {method} {url.path}")

    def _authorized(self, handler: BaseHTTPRequestHandler) -> bool:
        return handler.headers.get("Authorization") == f"Bearer {self.token}"

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str | None, message: str,
               extra: dict[str, str] | None = None, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        send_bytes(handler, status, json.dumps({"error": message}).encode(), headers, head=head)

    def _lookup(self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str,
                head: bool = False) -> tuple[Repo, str] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(handler, 401, "RepoNotFound", "Repository not found", head=head)
            return None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return None
        return repo, sha

    def _resolve(self, handler: BaseHTTPRequestHandler, method: str, repo_id: str, revision: str, path: str) -> None:
        head = method == "HEAD"
        found = self._lookup(handler, repo_id, revision, head)
        if found is None:
            return
        repo, sha = found
        data = repo.commits[sha].get(path)
        if data is None:
            return self._error(handler, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha}, head)
        if is_lfs(path):
            digest = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(data)}\n".encode()
            headers = {
                "Location": f"{self.cdn}/lfs/{digest}?file={quote(f'{repo_id}/{path}')}",
                "X-Linked-Etag": f'"{digest}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{git_blob_sha1(pointer)}"',
                "X-Repo-Commit": sha,
            }
            return send_bytes(handler, 302, b"", headers, head=head)
        headers = {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        send_bytes(handler, 200, data, headers, head=head)

    def _model_info(self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str) -> None:
        found = self._lookup(handler, repo_id, revision)
        if found is not None:
            repo, sha = found
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "library_name": "brainseg",
                    "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])]}
            send_json(handler, 200, info)

    def _create(self, handler: BaseHTTPRequestHandler, payload: dict) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.repos:
            return send_json(handler, 409, {"error": "You already created this model repo", "url": self._url(repo_id)})
        self.create_repo(repo_id)
        send_json(handler, 200, {"url": self._url(repo_id), "name": repo_id})

    def _validate_yaml(self, handler: BaseHTTPRequestHandler, payload: dict) -> None:
        content = payload["content"]
        errors = []
        if not content.startswith("---\n") or "\n---" not in content[4:]:
            errors.append({"message": "README.md has no YAML front matter"})
        else:
            meta = yaml.safe_load(content[4:content.index("\n---", 4)])
            if not isinstance(meta, dict):
                errors.append({"message": "front matter is not a mapping"})
        send_json(handler, 400 if errors else 200, {"errors": errors, "warnings": []})

    def _preupload(self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str, payload: dict) -> None:
        found = self._lookup(handler, repo_id, revision)
        if found is None:
            return
        repo, sha = found
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_sha1(repo.commits[sha][f["path"]]) if f["path"] in repo.commits[sha] else None}
                 for f in payload["files"]]
        send_json(handler, 200, {"files": files, "commitOid": sha})

    def _commit(self, handler: BaseHTTPRequestHandler, repo_id: str, revision: str, body: bytes) -> None:
        found = self._lookup(handler, repo_id, revision)
        if found is None:
            return
        repo, _ = found
        if revision not in repo.refs:
            return self._error(handler, 400, None, f"cannot commit to {revision}: not a branch")
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                deleted.append(item["value"]["path"])
            elif item["key"] != "header":
                return self._error(handler, 400, None, f"stand-in does not support {item['key']}")
        sha = self.commit(repo_id, files, revision, deleted=tuple(deleted))
        send_json(handler, 200, {"success": True, "commitOid": sha, "commitUrl": f"{self._url(repo_id)}/commit/{sha}",
                                 "hookOutput": ""})

    def _url(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"


def send_bytes(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None,
              head: bool = False) -> None:
    """Send a complete response; HEAD gets the same headers and no body."""
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if not head:
        handler.wfile.write(body)


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
    send_bytes(handler, status, json.dumps(payload).encode(), {"Content-Type": "application/json"})
