"""bf16 weights: the model computes in bf16 end to end while AdamW updates float32 master weights.

Under autocast the weights stay float32: every matrix multiplication casts them, and layer norms
and the residual stream run in float32. With ``bf16_weights: true`` a bf16 copy of the model runs
the forward and backward passes with no autocast. Its gradients (summed over the step's
micro-batches, and across processes by DDP, in bf16) are cast up onto the float32 model, which
the optimizer updates, EMA follows, checkpoints save and export writes; the copy then takes the
new weights. So resuming and exporting see only float32 weights, exactly as without it.
"""

from __future__ import annotations

import copy

import torch


class Bf16Weights:
    """A bf16 copy of ``master`` (the float32 model being trained) and the two transfers of a step."""

    def __init__(self, master: torch.nn.Module):
        self.module = copy.deepcopy(master).to(torch.bfloat16)
        pairs = [(m, c) for m, c in zip(master.parameters(), self.module.parameters()) if m.requires_grad]
        self.masters = [m for m, _ in pairs]
        self.copies = [c for _, c in pairs]

    def gradients_to_master(self) -> None:
        """After the step's last backward pass: the copy's gradients become the masters' (float32)."""
        for master, bf16 in zip(self.masters, self.copies):
            master.grad = None if bf16.grad is None else bf16.grad.float()
            bf16.grad = None

    @torch.no_grad()
    def weights_from_master(self) -> None:
        """After an optimizer step or a resume: the copy takes the masters' weights, rounded to bf16."""
        torch._foreach_copy_(self.copies, self.masters)
