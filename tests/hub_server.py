"""A stand-in for the Hugging Face hub's HTTP API on 127.0.0.1, for tests that must not touch the network.

It serves the endpoints `huggingface_hub` calls to download a snapshot (repo info, tree listing,
HEAD/GET of each file) and to upload one (create repo, preupload, commit), so the real client code
runs unchanged, pointed at it with HF_ENDPOINT or `endpoint=`. Every request is recorded. Only the
HTTP boundary is replaced; anything it does not know answers 404 with the path, so a client that
starts calling something new fails loudly instead of passing by accident.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit

    def entry(self, path: str) -> dict:
        data = self.files[path]
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
        if path.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def etag(self, path: str) -> str:
        entry = self.entry(path)
        return entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]


class FakeHub:
    """Serve `repos` ({(repo_type, repo_id): Repo}); `requests` lists (method, path) as they come;
    `commits` holds each received commit: {"repo", "repo_type", "summary", "files": {path: bytes}}."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self.created: list[dict] = []
        self.validated: list[dict] = []  # README metadata the client asked the hub to check
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, status: int, data) -> None:
                self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_HEAD(self):
                self._route("HEAD")

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def _route(self, method: str) -> None:
                url = urlsplit(self.path)
                path = unquote(url.path)
                hub.requests.append((method, path))
                body = self._body() if method == "POST" else b""
                try:
                    handled = hub.handle(self, method, path, parse_qs(url.query), body)
                except Exception as error:  # a bug here must show in the client's error, not hang it
                    self._json(500, {"error": f"fake hub: {type(error).__name__}: {error}"})
                    return
                if not handled:
                    self._json(404, {"error": f"fake hub: no route for {method} {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_model(self, repo_id: str, folder: str | Path, commit: str, repo_type: str = "model") -> Repo:
        folder = Path(folder)
        files = {str(file.relative_to(folder)): file.read_bytes() for file in sorted(folder.rglob("*")) if file.is_file()}
        repo = Repo(commit, files, {"main": commit})
        self.repos[(repo_type, repo_id)] = repo
        return repo

    # ---- routes ----------------------------------------------------------------------------------
    def _repo(self, kind: str, repo_id: str) -> Repo | None:
        return self.repos.get(({"models": "model", "datasets": "dataset"}[kind], repo_id))

    def handle(self, handler, method: str, path: str, query: dict, body: bytes) -> bool:
        match = re.fullmatch(r"/api/(models|datasets)/(.+?)/revision/([^/]+)", path)
        if match and method == "GET":
            return self._info(handler, *match.groups())
        match = re.fullmatch(r"/api/(models|datasets)/(.+?)/tree/([^/]+)(/.*)?", path)
        if match and method == "GET":
            return self._tree(handler, *match.groups())
        match = re.fullmatch(r"/(?:datasets/)?(.+?)/resolve/([^/]+)/(.+)", path)
        if match and method in ("HEAD", "GET"):
            kind = "datasets" if path.startswith("/datasets/") else "models"
            return self._file(handler, method, kind, *match.groups())
        if path == "/api/repos/create" and method == "POST":
            request = json.loads(body)
            self.created.append(request)
            name = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            handler._json(200, {"url": f"{self.url}/{name}", "name": name})
            return True
        if path == "/api/validate-yaml" and method == "POST":
            self.validated.append(json.loads(body))
            handler._json(200, {"errors": [], "warnings": []})
            return True
        match = re.fullmatch(r"/api/(models|datasets)/(.+?)/preupload/([^/]+)", path)
        if match and method == "POST":
            files = json.loads(body)["files"]
            handler._json(200, {"files": [{"path": file["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for file in files]})
            return True
        match = re.fullmatch(r"/api/(models|datasets)/(.+?)/commit/([^/]+)", path)
        if match and method == "POST":
            return self._commit(handler, match[1], match[2], body)
        return False

    def _info(self, handler, kind: str, repo_id: str, revision: str) -> bool:
        repo = self._repo(kind, repo_id)
        if repo is None:
            handler._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            return True
        commit = repo.branches.get(revision, revision if revision == repo.commit else None)
        if commit is None:
            handler._send(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
            return True
        handler._json(200, {"id": repo_id, "sha": commit, "private": False,
                            "siblings": [{"rfilename": name} for name in repo.files]})
        return True

    def _tree(self, handler, kind: str, repo_id: str, revision: str, subfolder: str | None) -> bool:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return False
        handler._json(200, [repo.entry(name) for name in repo.files])
        return True

    def _file(self, handler, method: str, kind: str, repo_id: str, revision: str, name: str) -> bool:
        repo = self._repo(kind, repo_id)
        if repo is None or name not in repo.files:
            handler._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head=method == "HEAD")
            return True
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.branches.get(revision, revision), "ETag": f'"{repo.etag(name)}"',
                   "Content-Length": str(len(data))}
        handler._send(200, data, headers, head=method == "HEAD")
        return True

    def _commit(self, handler, kind: str, repo_id: str, body: bytes) -> bool:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {}
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] in ("lfsFile", "deletedFile", "deletedFolder", "copyFile"):
                raise ValueError(f"unexpected commit operation {line['key']}")
        self.commits.append({"repo": repo_id, "repo_type": kind[:-1], "summary": header.get("summary"),
                             "files": files})
        oid = hashlib.sha1(body).hexdigest()
        handler._json(200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                            "success": True})
        return True
