"""Real trained weights: MiniLM-L6, against WeightWatcher 0.7.7 run live in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_htmp

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def weightwatcher_layers(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("ww") / "ww.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ww_reference.py"), str(minilm_path.parent), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["weightwatcher"] == "0.7.7"
    return {layer["name"]: layer for layer in data["layers"]}


def test_ww_mode_reproduces_weightwatcher_on_every_layer(minilm_path: Path, weightwatcher_layers: dict[str, dict]) -> None:
    proc = run_htmp("analyze", str(minilm_path), "--fit", "ww", "--min-dim", "8", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    ours = {layer["name"].removesuffix(".weight"): layer for layer in json.loads(proc.stdout)["layers"]}
    assert len(weightwatcher_layers) == 39
    for name, theirs in weightwatcher_layers.items():
        fit = ours[name]["power_law"]
        assert fit["status"] == "success", name
        assert (ours[name]["N"], ours[name]["M"]) == (theirs["N"], theirs["M"])
        for key in ("alpha", "xmin", "D"):
            assert abs(fit[key] - theirs[key]) <= 1e-6 * abs(theirs[key]), (name, key, fit[key], theirs[key])
        assert fit["tail_size"] == theirs["tail_size"], name


def test_default_analysis_covers_every_matrix_including_the_embedding(minilm_path: Path) -> None:
    proc = run_htmp("analyze", str(minilm_path), "-f", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by_name = {layer["name"]: layer for layer in data["layers"]}
    assert by_name["embeddings.word_embeddings.weight"]["shape"] == [30522, 384]
    assert by_name["embeddings.word_embeddings.weight"]["status"] == "success"
    assert len(data["layers"]) == 39  # every 2-D tensor but the 2 x 384 token-type embedding
    assert [s["name"] for s in data["skipped"] if "min-dim" in s["reason"]] == ["embeddings.token_type_embeddings.weight"]
    assert data["summary"]["n_failed_fits"] == 0
