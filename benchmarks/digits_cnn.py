"""A small CNN on scikit-learn's digits (8 x 8 images, shipped with scikit-learn): the network the
advise experiments train, prune and rebalance. Seeded and single-threaded: a rerun on the same
machine gives the same weights.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def make_cnn() -> torch.nn.Module:
    """Seven weight layers; htmp analyses six (the 1-channel stem has no spectrum worth the name)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(128 * 2 * 2, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits split 70/30 by `seed`: (x_train, y_train, x_test, y_test), images as (n, 1, 8, 8)."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(images, data.target, test_size=0.3, random_state=seed)
    return torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), torch.from_numpy(y_test)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(seed: int, epochs: int, lr: float = 0.05, batch: int = 32,
          optimizer_for: Callable[[torch.nn.Module, float], torch.optim.Optimizer] | None = None,
          after_epoch: Callable[[torch.nn.Module, torch.optim.Optimizer, object], None] | None = None,
          ) -> tuple[torch.nn.Module, float]:
    """Train with SGD (momentum 0.9, weight decay 5e-4) on a cosine schedule; returns the model and
    its test accuracy. `optimizer_for(model, lr)` replaces the optimizer (TempBalance's groups);
    `after_epoch(model, optimizer, scheduler)` runs after each epoch's scheduler step."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = digits(seed)
    model = make_cnn()
    optimizer = (optimizer_for(model, lr) if optimizer_for is not None
                 else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        if after_epoch is not None:
            after_epoch(model, optimizer, scheduler)
    return model, accuracy(model, x_test, y_test)


def magnitude_prune(model: torch.nn.Module, sparsities: dict[str, float]) -> None:
    """Zero the smallest-magnitude fraction `sparsities[module]` of each module's weight, in place."""
    with torch.no_grad():
        for name, sparsity in sparsities.items():
            weight = model.get_submodule(name).weight
            count = int(round(sparsity * weight.numel()))
            if count <= 0:
                continue
            threshold = weight.abs().flatten().kthvalue(count).values
            weight[weight.abs() <= threshold] = 0.0
