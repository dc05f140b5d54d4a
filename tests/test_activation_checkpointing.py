"""Activation checkpointing keeps less for backward and changes nothing in the results."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from nitrogen_finetuner.model.presets import build_preset
from nitrogen_finetuner.training.activation_checkpointing import enable_activation_checkpointing
from nitrogen_finetuner.training.compiling import compile_layers


def loss_gradients_and_saved_bytes(checkpointed: bool, compiled: bool = False):
    """One training forward and backward of the tiny preset (dropout on), counting the bytes of
    the non-parameter tensors autograd keeps for backward outside the checkpoints."""
    torch.manual_seed(0)
    model, _ = build_preset("tiny")
    model.train()
    if checkpointed:
        enable_activation_checkpointing(model)
    if compiled:
        compile_layers(model)
    cfg, size = model.config, model.vision_encoder.config.image_size
    shape = (4, cfg.action_horizon, cfg.action_dim)
    generator = torch.Generator().manual_seed(1)
    batch = (torch.randn(4, 3, size, size, generator=generator), torch.rand(shape, generator=generator),
             torch.ones(shape, dtype=torch.bool), torch.randn(shape, generator=generator),
             torch.rand(4, generator=generator))
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    torch.manual_seed(2)  # dropout
    with saved_tensors_hooks(pack, lambda tensor: tensor):
        squared, _ = model(*batch)
    squared.backward()
    gradients = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return squared.detach(), gradients, sum(kept.values())


@pytest.fixture
def deterministic():
    """As the trainer does on CPU: the action encoder's per-embodiment gather otherwise sums its
    gradient in a varying order."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before)


def test_checkpointed_layers_give_the_same_loss_and_gradients_bit_for_bit(deterministic):
    loss, gradients, _ = loss_gradients_and_saved_bytes(checkpointed=False)
    loss_ac, gradients_ac, _ = loss_gradients_and_saved_bytes(checkpointed=True)
    assert torch.equal(loss, loss_ac)
    assert gradients.keys() == gradients_ac.keys() and len(gradients) > 0
    assert [n for n in gradients if not torch.equal(gradients[n], gradients_ac[n])] == []


def test_checkpointed_layers_keep_a_fraction_of_the_activations():
    *_, plain = loss_gradients_and_saved_bytes(checkpointed=False)
    *_, checkpointed = loss_gradients_and_saved_bytes(checkpointed=True)
    assert checkpointed < 0.4 * plain


@pytest.mark.slow
def test_compiled_layers_recompute_too():
    """``compile`` and ``activation_checkpointing`` together: the layers run compiled and keep
    little for backward (at the released size, batch 1: 48 MiB against 486 compiled alone and 47
    eager with checkpointing; the tiny preset's small layers keep relatively more)."""
    plain_loss, plain_gradients, plain = loss_gradients_and_saved_bytes(checkpointed=False, compiled=True)
    torch._dynamo.reset()
    loss, gradients, checkpointed = loss_gradients_and_saved_bytes(checkpointed=True, compiled=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert checkpointed < 0.6 * plain
    torch.testing.assert_close(loss, plain_loss)  # fused kernels: the same to float32 rounding
    torch.testing.assert_close(gradients, plain_gradients, rtol=1e-4, atol=1e-4)
