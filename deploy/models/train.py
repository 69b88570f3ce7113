"""A small, seeded training loop: enough to make `make demo` deploy a real trained model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from deploy.models.digits import Split


@dataclass
class TrainResult:
    epochs: int
    final_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float


def accuracy(predict: Callable[[np.ndarray], np.ndarray], split: Split, batch_size: int = 128) -> float:
    """Top-1 accuracy of ``predict`` (NCHW float32 -> logits) on ``split``."""
    correct = 0
    for start in range(0, len(split.y), batch_size):
        logits = predict(split.x[start : start + batch_size].numpy())
        correct += int((np.asarray(logits).argmax(axis=1) == split.y[start : start + batch_size].numpy()).sum())
    return correct / len(split.y)


def torch_predict(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy-in, numpy-out view of an eval-mode torch model."""

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return predict


def train_classifier(
    model: nn.Module,
    train: Split,
    test: Split,
    epochs: int,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train with AdamW and a cosine schedule; ``on_step(step, loss)`` reports progress."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    steps_per_epoch = (len(train.y) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    step, loss = 0, torch.tensor(float("nan"))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train.y), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(train.x[idx]), train.y[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if on_step is not None:
                on_step(step, float(loss))
    model.eval()
    predict = torch_predict(model)
    return TrainResult(
        epochs=epochs,
        final_loss=float(loss),
        train_accuracy=accuracy(predict, train),
        test_accuracy=accuracy(predict, test),
        seconds=time.perf_counter() - start,
    )
