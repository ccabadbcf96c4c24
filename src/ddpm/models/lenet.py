"""LeNet-5, the digit classifier of LeCun et al. 1998 ("Gradient-based learning applied to document
recognition", sec. II.B), in the modern form the series uses (part 2): ReLU for the scaled tanh, max-pooling
for the trainable sub-sampling, and a plain 10-way linear output for the RBF layer.

::

    x (1, 28, 28) ─ C1 conv 6@5×5, pad 2 ─ ReLU ─ S2 max-pool 2 ─ (6, 14, 14)
                  ─ C3 conv 16@5×5       ─ ReLU ─ S4 max-pool 2 ─ (16, 5, 5)
                  ─ C5 fc 120 ─ ReLU ─ F6 fc 84 ─ ReLU ─ fc 10 (logits)

The padding of C1 stands in for the paper's 32×32 input, MNIST's 28×28 digits centred in a larger field.
61,706 parameters. It is not a denoiser (it is not in :data:`ddpm.models.MODELS`): it judges samples. The
84 activations of F6 are the features of the Fréchet LeNet Distance, the MNIST analogue of the Fréchet
Inception Distance (Heusel et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5 for (B, 1, 28, 28) images in [-1, 1], the diffusion range; no other normalisation."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations (F6 after its ReLU), shape (B, 84)."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.fc1(h.flatten(1)))
        return F.relu(self.fc2(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (B, 10)."""
        return self.fc3(self.features(x))
