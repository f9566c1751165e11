"""The models: the original's linear classifier over byte features, and a small CNN for
decoded images. Softmax cross-entropy, plain SGD; initialised from the seed."""

from __future__ import annotations

import torch
from torch import nn

from forge.features import CLASSES, FEATURES


def make_model(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(FEATURES, CLASSES)
    if kind == "cnn":
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, CLASSES),
        )
    raise ValueError(f"model {kind!r}: expected 'linear' or 'cnn'")


class Trainer:
    """One SGD step at a time on ``device`` (with every rank of the job, when distributed)."""

    def __init__(
        self, model: nn.Module, lr: float, device: torch.device, distributed: bool = False
    ) -> None:
        self.model = model.to(device)
        if distributed:  # gradients averaged over every rank's batch at each step
            self.model = nn.parallel.DistributedDataParallel(self.model)
        self.device = device
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        inputs, labels = inputs.to(self.device), labels.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(inputs), labels)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())  # waits for the device: compute time is real time
