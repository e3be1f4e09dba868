"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for the real `huggingface_hub` client (HF_ENDPOINT).

It serves what the client asks when it resolves and downloads files (huggingface_hub's file_download.py and
hf_api.py): `GET /api/{models|datasets}/{repo}/revision/{rev}` (the commit and the file list) and
`HEAD`/`GET /{repo}/resolve/{rev}/{file}` (models) or `/datasets/{repo}/resolve/{rev}/{file}`, with the
headers the client reads (X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size, Content-Length) and HTTP Range
requests (resumed downloads). Faults for the tests: `cut_once` (files whose first GET stops after so many bytes, the
connection closed) and `corrupt` (files served with one byte flipped under the true checksum).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".parquet", ".safetensors")


def etag_of(name: str, data: bytes) -> str:
    """The Hub's checksum of a file: sha256 for LFS files, the git blob sha1 for small ones."""
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}  # (type, id) -> {"commit", "refs", "files"}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_once: dict[str, int] = {}  # file -> bytes sent before the connection drops
        self.corrupt: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_type: str, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A new commit of the repo holding exactly these files; the branch points at it. Returns the commit."""
        commit = hashlib.sha1(json.dumps([repo, sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()),
                                          len(self.repos)]).encode()).hexdigest()
        r = self.repos.setdefault((repo_type, repo), {"refs": {}, "commits": {}})
        r["commits"][commit] = dict(files)
        r["refs"][branch] = commit
        return commit

    def downloads(self, name: str) -> list[tuple[str, str | None]]:
        return [(m, rng) for m, p, rng in self.requests if p.endswith("/" + name)]

    # ------------------------------------------------------------------ serving
    def _error(self, h, code: int, error_code: str, msg: str):
        body = json.dumps({"error": msg}).encode()
        h.send_response(code)
        h.send_header("X-Error-Code", error_code)
        h.send_header("X-Error-Message", msg)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _lookup(self, repo_type, repo, rev):
        r = self.repos.get((repo_type, repo))
        if r is None:
            return None, "RepoNotFound"
        commit = r["refs"].get(rev, rev if rev in r["commits"] else None)
        if commit is None:
            return None, "RevisionNotFound"
        return commit, r["commits"][commit]

    def _serve(self, h, head: bool):
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        m = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+)/revision/(.+)$", path)
        if m:
            repo_type, repo, rev = m.group(1)[:-1], m.group(2), m.group(3)
            commit, files = self._lookup(repo_type, repo, rev)
            if commit is None:
                return self._error(h, 404, files, f"{repo_type} {repo}@{rev}: not found")
            body = json.dumps({"id": repo, "sha": commit, "siblings": [{"rfilename": n} for n in sorted(files)]}).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
            return
        m = re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if not m:
            return self._error(h, 404, "EntryNotFound", f"{path}: not served")
        repo_type, repo, rev, name = ("dataset" if m.group(1) else "model"), m.group(2), m.group(3), m.group(4)
        commit, files = self._lookup(repo_type, repo, rev)
        if commit is None:
            return self._error(h, 404, files, f"{repo_type} {repo}@{rev}: not found")
        if name not in files:
            h.send_response(404)
            h.send_header("X-Error-Code", "EntryNotFound")
            h.send_header("X-Repo-Commit", commit)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data = files[name]
        etag = etag_of(name, data)
        if name in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        start = 0
        rng = h.headers.get("Range")
        if rng:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        part = data[start:]
        h.send_response(206 if rng else 200)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{etag}"')
        if name.endswith(LFS_SUFFIXES):
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(data)))
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(part)))
        h.end_headers()
        if head:
            return
        if name in self.cut_once and not rng:
            h.wfile.write(part[: self.cut_once.pop(name)])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the connection drops midway: the client resumes with a Range request
            return
        h.wfile.write(part)
