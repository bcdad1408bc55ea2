"""Small models bundled for the demo and the docs."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyCNN(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> adaptive avg pool -> flatten -> linear -> relu -> linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc1 = nn.Linear(64 * 4, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(F.relu(self.fc1(x)))


class TinyLSTM(nn.Module):
    """linear -> tanh -> 2-layer LSTM -> layernorm -> linear, classifying the last step."""

    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 5):
        super().__init__()
        self.embed = nn.Linear(features, 24)
        self.lstm = nn.LSTM(24, hidden, num_layers=2, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.embed(x)))
        return self.head(self.norm(out[:, -1]))


def demo_models():
    """(name, model, example inputs) for the demo."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return [
        ("TinyCNN", TinyCNN().eval(), (torch.randn(2, 3, 32, 32, generator=g),)),
        ("TinyLSTM", TinyLSTM().eval(), (torch.randn(2, 7, 16, generator=g),)),
    ]
