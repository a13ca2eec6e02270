"""Hugging Face Hub model ids: resolved through the cache that huggingface_hub itself lays out.

The cache is filled by the library's own downloads from a small Hub served here on localhost
(HF_ENDPOINT), which then stops: every later lookup runs offline. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_htmp

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(BaseHTTPRequestHandler):
    """Just what hf_hub_download and list_repo_files ask of the Hub: file metadata and bytes, the file tree."""

    repos: dict[str, dict[str, bytes]] = {}
    requested: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _file(self) -> tuple[str, bytes] | None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            if name in self.repos.get(repo, {}):
                return name, self.repos[repo][name]
        return None

    def _send(self, body: bytes, content_type: str = "application/octet-stream", head: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _missing(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802
        found = self._file()
        if found is None:
            return self._missing()
        self._send(found[1], head=True)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path.startswith("/api/models/") and "/tree/" in path:
            repo = "/".join(path[len("/api/models/"):].split("/")[:2])
            if repo not in self.repos:
                return self._missing()
            tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in self.repos[repo].items()]
            return self._send(json.dumps(tree).encode(), "application/json")
        found = self._file()
        if found is None:
            return self._missing()
        self.requested.append(found[0])
        self._send(found[1])


@pytest.fixture()
def hub(tmp_path: Path, make_formats):  # type: ignore[no-untyped-def]
    """A one-repo Hub on localhost (org/tiny: a safetensors model, its config, and a large file a
    loader never needs) and an empty cache; yields the environment that points the library at them."""
    weights_file = tmp_path / "model.safetensors"
    make_formats.write_safetensors_file(weights_file, make_formats.transformer_weights())
    _Hub.repos = {"org/tiny": {"model.safetensors": weights_file.read_bytes(), "config.json": b"{}",
                               "flax_model.msgpack": bytes(2**20)}}
    _Hub.requested = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
    yield env, server, weights_file
    server.shutdown()


def test_a_hub_id_is_downloaded_once_then_read_from_the_cache_offline(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env, server, weights_file = hub
    online = run_htmp("analyze", "org/tiny", "-f", "json", env=env, cwd=tmp_path)
    assert online.returncode == 0, online.stderr
    assert _Hub.requested == ["model.safetensors"]  # just the weights: not the config, not the large file
    first = json.loads(online.stdout)
    assert "downloaded model.safetensors into the cache" in " ".join(first["source"]["notes"])
    snapshot = Path(env["HF_HOME"]) / "hub" / "models--org--tiny" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").is_file() and not (snapshot / "flax_model.msgpack").exists()
    server.shutdown()  # from here on the Hub is gone, and the library told so
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    for source in ("org/tiny", f"org/tiny@{COMMIT}"):
        cached = run_htmp("analyze", source, "-f", "json", env=offline, cwd=tmp_path)
        assert cached.returncode == 0, cached.stderr
        again = json.loads(cached.stdout)
        assert "from the local cache" in " ".join(again["source"]["notes"])
        assert [layer["power_law"]["alpha"] for layer in again["layers"]] == \
            [layer["power_law"]["alpha"] for layer in first["layers"]]
    listing = run_htmp("ls", "org/tiny", env=offline, cwd=tmp_path)
    assert listing.returncode == 0 and "matrices to analyse" in listing.stdout
    scan = run_htmp("scan", "org/tiny", "--db", str(tmp_path / "scan.sqlite"), "--export", str(tmp_path / "rows.jsonl"),
                    env=offline, cwd=tmp_path)
    assert scan.returncode == 0, scan.stderr
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 1
    local = run_htmp("analyze", str(weights_file), "-f", "json", cwd=tmp_path)
    assert [layer["power_law"]["alpha"] for layer in json.loads(local.stdout)["layers"]] == \
        [layer["power_law"]["alpha"] for layer in first["layers"]]


def test_offline_with_nothing_cached_is_one_line_exit_2(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env, _, _ = hub
    proc = run_htmp("analyze", "org/absent", env={**env, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "org/absent" in proc.stderr and "not in the Hugging Face cache" in proc.stderr
    assert "HF_HUB_OFFLINE is set" in proc.stderr
    online = run_htmp("analyze", "org/absent", env=env, cwd=tmp_path)
    assert online.returncode == 2 and "org/absent" in online.stderr and len(online.stderr.strip().splitlines()) == 1
    assert _Hub.requested == []


def test_a_path_that_exists_wins_over_an_id(hub, tmp_path: Path, make_formats) -> None:  # type: ignore[no-untyped-def]
    env, _, _ = hub
    folder = tmp_path / "org" / "tiny"
    folder.mkdir(parents=True)
    weights = {"only.weight": np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32)}
    make_formats.write_safetensors_file(folder / "model.safetensors", weights)
    proc = run_htmp("analyze", "org/tiny", "-f", "json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [layer["name"] for layer in json.loads(proc.stdout)["layers"]] == ["only.weight"]
    assert _Hub.requested == []
