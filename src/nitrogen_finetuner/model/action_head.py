"""Action encoder and decoder with one weight set per embodiment (category).

NitroGen was released with a single embodiment, but the weights keep the per-category shape
``W: (categories, in, out)``, ``b: (categories, out)``, so we keep it too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CategorySpecificLinear(nn.Module):
    """A linear layer per category. Initialised with fan-in scaling: the official 0.02 starves the
    path from the noisy actions to the output when a model trains from random weights (loaded
    checkpoints overwrite the initialisation anyway)."""

    def __init__(self, num_categories: int, input_dim: int, output_dim: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(num_categories, input_dim, output_dim) * input_dim**-0.5)
        self.b = nn.Parameter(torch.zeros(num_categories, output_dim))

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.W[category]) + self.b[category].unsqueeze(1)


class ActionDecoder(nn.Module):
    """DiT output tokens -> velocity in action space (``layer1`` ReLU ``layer2``)."""

    def __init__(self, num_categories: int, hidden_size: int, action_dim: int):
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_categories, hidden_size, hidden_size)
        self.layer2 = CategorySpecificLinear(num_categories, hidden_size, action_dim)

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.relu(self.layer1(x, category)), category)


def flow_time_features(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) discrete flow time -> (B, dim) [sin, cos] features of the action encoder."""
    half = dim // 2
    exponent = -torch.arange(half, dtype=torch.float32, device=timesteps.device) * (
        torch.log(torch.tensor(10000.0)) / half
    )
    angles = timesteps.float().unsqueeze(-1) * exponent.exp()
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ActionEncoder(nn.Module):
    """Noisy action chunk + flow time -> action tokens: W1, concat time features, W2, swish, W3."""

    def __init__(self, action_dim: int, hidden_size: int, num_categories: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.W1 = CategorySpecificLinear(num_categories, action_dim, hidden_size)
        self.W2 = CategorySpecificLinear(num_categories, 2 * hidden_size, hidden_size)
        self.W3 = CategorySpecificLinear(num_categories, hidden_size, hidden_size)

    def forward(self, actions: torch.Tensor, timesteps: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """actions (B, T, action_dim); timesteps (B,) discrete; category (B,)."""
        a = self.W1(actions, category)
        tau = flow_time_features(timesteps, self.hidden_size).to(a.dtype)
        x = torch.cat([a, tau.unsqueeze(1).expand(-1, a.shape[1], -1)], dim=-1)
        return self.W3(F.silu(self.W2(x, category)), category)
