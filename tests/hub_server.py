"""A small Hub-compatible HTTP server for tests: the endpoints huggingface_hub calls to create a repo (and a branch or
a pull request), pre-upload and commit files, and to download them (`snapshot_download`, `hf_hub_download`).

Every file is stored as a regular git blob: the pre-upload answer asks for `uploadMode: "regular"`, so commits
carry base64 contents and no LFS or Xet transfer happens. Writes need `Authorization: Bearer <token>`.

    with FakeHub(token="hf_...") as hub:   # HF_ENDPOINT=hub.url
        ...
        hub.files("user/repo")              # {path: bytes} at main
"""

import base64
import hashlib
import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from huggingface_hub import ModelCard

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("GET", re.compile(r"/api/whoami-v2"), "whoami"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "commit"),
    ("POST", re.compile(rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)"), "create_branch"),
    ("POST", re.compile(rf"/api/models/{_REPO}/discussions"), "create_discussion"),
    ("GET", re.compile(rf"/api/models/{_REPO}/discussions/(?P<num>\d+)"), "discussion"),
    ("GET", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?"), "tree"),
    ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "model_info"),
    ("GET", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
    ("HEAD", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "resolve"),
]


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, which huggingface_hub compares with a regular file's local sha1."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.commit = status, code, commit


class FakeHub:
    """State: repos -> {private, refs: {branch or refs/pr/N: commit}, commits: {sha: {files, parent, summary}},
    prs: {num: title}}. `requests` records (method, path) of every request, `auth_headers` every Authorization
    header received."""

    def __init__(self, token: str, user: str = "tester"):
        self.token, self.user = token, user
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- queries for tests ------------------------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo["commits"][self._resolve(repo, revision)]["files"])

    def commits(self, repo_id: str) -> list[str]:
        """Summaries of the commits of a repo, oldest first (the creation commit included)."""
        return [commit["summary"] for commit in self.repos[repo_id]["commits"].values()]

    # -- state ------------------------------------------------------------------------------------------------

    def _repo(self, repo_id: str, authorized: bool) -> dict:
        repo = self.repos.get(repo_id)
        if repo is None or (repo["private"] and not authorized):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: dict, revision: str) -> str:
        if revision in repo["refs"]:
            return repo["refs"][revision]
        if revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _new_commit(repo: dict, parent: str | None, files: dict[str, bytes], summary: str) -> str:
        listing = sorted((path, git_blob_oid(content)) for path, content in files.items())
        sha = hashlib.sha1(json.dumps([parent, listing, summary, len(repo["commits"])]).encode()).hexdigest()
        repo["commits"][sha] = {"files": files, "parent": parent, "summary": summary}
        return sha

    # -- endpoints: each returns (status, headers, body) ------------------------------------------------------

    def create_repo(self, request, authorized, **_):
        payload = request.json()
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {}, {"error": "You already created this model repo", "url": url}
        repo = {"private": payload.get("visibility") == "private", "refs": {}, "commits": {}, "prs": {}}
        repo["refs"]["main"] = self._new_commit(repo, None, {}, "initial commit")
        self.repos[repo_id] = repo
        return 200, {}, {"url": url, "name": repo_id}

    def validate_yaml(self, request, authorized, **_):
        """The README metadata must parse as a model card (YAML dict, valid model-index), as on the Hub."""
        try:
            ModelCard(request.json()["content"])
        except (ValueError, yaml.YAMLError) as err:
            return 400, {}, {"errors": [{"message": str(err)}], "warnings": []}
        return 200, {}, {"errors": [], "warnings": []}

    def whoami(self, request, authorized, **_):
        return 200, {}, {"type": "user", "name": self.user, "orgs": []}

    def preupload(self, request, authorized, repo, rev, **_):
        record = self._repo(repo, authorized)
        existing = record["commits"][self._resolve(record, rev)]["files"]
        files = [
            {
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_oid(existing[item["path"]]) if item["path"] in existing else None,
            }
            for item in request.json()["files"]
        ]
        return 200, {}, {"files": files}

    def commit(self, request, authorized, repo, rev, **_):
        record = self._repo(repo, authorized)
        lines = [json.loads(line) for line in request.body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if request.query.get("create_pr") == ["1"]:
            rev = self._open_pr(record, header["summary"])
        head = self._resolve(record, rev)
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(record["commits"][head]["files"])
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: data for path, data in files.items() if not path.startswith(prefix)}
            elif key != "header":
                raise HubError(400, f"this test server takes regular files only, got {key!r}")
        sha = self._new_commit(record, head, files, header["summary"])
        if rev in record["refs"]:
            record["refs"][rev] = sha
        pr_url = f"{self.url}/{repo}/discussions/{rev.rsplit('/', 1)[1]}" if rev.startswith("refs/pr/") else None
        return 200, {}, {"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": pr_url}

    def create_branch(self, request, authorized, repo, branch, **_):
        record = self._repo(repo, authorized)
        if branch in record["refs"]:
            raise HubError(409, f"Branch {branch} already exists")
        start = (request.json() or {}).get("startingPoint") or "main"
        record["refs"][branch] = self._resolve(record, start)
        return 200, {}, {}

    def _open_pr(self, record: dict, title: str) -> str:
        num = len(record["prs"]) + 1
        record["prs"][num] = title
        ref = f"refs/pr/{num}"
        record["refs"][ref] = record["refs"]["main"]
        return ref

    def create_discussion(self, request, authorized, repo, **_):
        record = self._repo(repo, authorized)
        payload = request.json()
        if not payload.get("pullRequest"):
            raise HubError(400, "this test server opens pull requests only")
        ref = self._open_pr(record, payload["title"])
        num = int(ref.rsplit("/", 1)[1])
        return 200, {}, {"num": num, "url": f"{self.url}/{repo}/discussions/{num}"}

    def discussion(self, request, authorized, repo, num, **_):
        record = self._repo(repo, authorized)
        if int(num) not in record["prs"]:
            raise HubError(404, f"Discussion {num} not found")
        return 200, {}, {
            "num": int(num), "title": record["prs"][int(num)], "author": {"name": self.user}, "createdAt": _now(),
            "status": "open", "repo": {"name": repo, "type": "model"}, "isPullRequest": True, "events": [],
            "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [], "diff": "",
        }

    def model_info(self, request, authorized, repo, rev=None, **_):
        record = self._repo(repo, authorized)
        sha = self._resolve(record, rev or "main")
        files = record["commits"][sha]["files"]
        return 200, {}, {
            "id": repo, "author": repo.split("/")[0], "sha": sha, "private": record["private"],
            "lastModified": _now(), "tags": [],
            "siblings": [{"rfilename": path, "size": len(data)} for path, data in sorted(files.items())],
        }

    def tree(self, request, authorized, repo, rev, path=None, **_):
        record = self._repo(repo, authorized)
        files = record["commits"][self._resolve(record, rev)]["files"]
        prefix = f"{path.rstrip('/')}/" if path else ""
        recursive = request.query.get("recursive", ["False"])[0].lower() == "true"
        entries, folders = [], set()
        for name, data in sorted(files.items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append({"type": "file", "path": name, "size": len(data), "oid": git_blob_oid(data)})
        entries += [{"type": "directory", "path": folder, "oid": git_blob_oid(folder.encode())} for folder in folders]
        return 200, {}, sorted(entries, key=lambda entry: entry["path"])

    def resolve(self, request, authorized, repo, rev, path, **_):
        record = self._repo(repo, authorized)
        sha = self._resolve(record, rev)
        files = record["commits"][sha]["files"]
        if path not in files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=sha)
        data = files[path]
        headers = {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": sha, "Content-Type": "application/octet-stream"}
        return 200, headers, data

    # -- HTTP plumbing ----------------------------------------------------------------------------------------

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                self._dispatch("GET")

            def do_HEAD(self):
                self._dispatch("HEAD")

            def do_POST(self):
                self._dispatch("POST")

            def json(self):
                return json.loads(self.body or b"null")

            def _dispatch(self, method: str):
                split = urlsplit(self.path)
                self.query = parse_qs(split.query)
                self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization")
                with hub._lock:
                    hub.requests.append((method, split.path))
                    if auth:
                        hub.auth_headers.append(auth)
                    try:
                        status, headers, body = self._route(method, split.path, auth == f"Bearer {hub.token}")
                    except HubError as err:
                        status, body = err.status, {"error": str(err)}
                        headers = {key: value for key, value in (("X-Error-Code", err.code),
                                                                 ("X-Repo-Commit", err.commit)) if value}
                self._send(method, status, headers, body)

            def _route(self, method: str, path: str, authorized: bool):
                for route_method, pattern, name in _ROUTES:
                    match = pattern.fullmatch(path)
                    if route_method == method and match:
                        if method == "POST" and not authorized:
                            raise HubError(401, "Invalid credentials in Authorization header")
                        params = {key: unquote(value) for key, value in match.groupdict().items() if value}
                        return getattr(hub, name)(self, authorized, **params)
                raise HubError(404, f"no route for {method} {path}")

            def _send(self, method: str, status: int, headers: dict, body):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                if not isinstance(body, bytes):
                    self.send_header("Content-Type", "application/json")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

        return Handler
