"""Train a small MLP on scikit-learn's digits twice, well and badly, and save both as safetensors.

    python benchmarks/train_digits.py [OUT_DIR]   (default benchmarks/_data/digits)

"well": SGD with momentum, learning rate 0.05, batch 16, 150 epochs. "badly": the same network
stopped after 20 steps. Each file's metadata records its test accuracy. Seeded and single-threaded,
so a rerun gives the same weights on the same machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

WIDTH = 768


def make_model() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(64, WIDTH), torch.nn.ReLU(),
        torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(),
        torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(),
        torch.nn.Linear(WIDTH, 10),
    )


def train(steps: int | None, epochs: int, seed: int = 0) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(X, digits.target, test_size=0.3, random_state=seed)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    done = 0
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 16):
            batch = order[start : start + 16]
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if steps is not None and done >= steps:
                break
        if steps is not None and done >= steps:
            break
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return model, accuracy


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, steps, epochs in (("well", None, 150), ("badly", 20, 1)):
        model, accuracy = train(steps, epochs)
        tensors = {f"layers.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(out / f"digits_{name}.safetensors"), metadata={"test_accuracy": f"{accuracy:.4f}"})
        print(json.dumps({"model": name, "test_accuracy": accuracy, "path": str(out / f"digits_{name}.safetensors")}))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "_data" / "digits")
