"""FSDP for full fine-tuning: PyTorch's ``fully_shard`` (FSDP2) over the model's transformer layers.

Each process keeps a shard of the float32 weights, gradients and AdamW state; a layer's full
weights are gathered just before it runs. The units are the SigLIP encoder layers, the VL mixer
blocks and the whole DiT (it precomputes every block's timestep modulation before running them).
The root holds the rest: the patch embedding, the action encoder and decoder, and the loss.

Mixed precision is FSDP's own: with ``mixed_precision: bf16`` the layers gather their weights as
bf16 and the three transformers run in bf16 end to end, with no autocast and no float32
residual stream, while the optimizer updates float32 master weights and gradients are reduced
in float32. Each transformer hands float32 back, so the patch embedding, the action encoder and
decoder and the loss stay float32.

Checkpoints hold full tensors, whatever the sharding: ``full_tensors`` gathers them (every
process must call it) and ``shard_like`` cuts a loaded tensor back to this process's shard. Both
pass plain tensors through, so the trainer calls them on every path.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from ..model.modeling import NitroGenModel

PARAM_DTYPES = {"no": None, "bf16": torch.bfloat16}


def fsdp_layers(model: NitroGenModel) -> list[torch.nn.Module]:
    """The layers of the vision tower and the VL mixer, each gathered as one piece when it runs."""
    return [*model.vision_encoder.encoder.layers, *model.vl_self_attention_model.transformer_blocks]


def fsdp_stacks(model: NitroGenModel) -> list[torch.nn.Module]:
    """The three transformers, at whose edges the precision returns to float32. The DiT is one
    piece: it computes every block's timestep modulation before running the blocks."""
    return [model.vision_encoder.encoder, model.vl_self_attention_model, model.model]


def shard_model(model: NitroGenModel, device: torch.device, precision: str) -> NitroGenModel:
    """Shard ``model`` in place across the processes of the process group."""
    if not dist.is_initialized():
        # FSDP needs a process group even in one process: a private one spans just this process
        # (``Accelerator.end_training`` ends it, as it ends a launcher's).
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # Alone, a process gains no memory by dropping the gathered weights between forward and
    # backward, and would gather them twice.
    reshard = dist.get_world_size() > 1
    layers = MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[precision], reduce_dtype=torch.float32)
    stacks = MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[precision], reduce_dtype=torch.float32,
                                  output_dtype=torch.float32)
    model.to(device)
    # The DiT's output is a view; nothing modifies it in place (the action decoder only reads it).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPDiT\) returned a view tensor")
    for layer in fsdp_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=layers, reshard_after_forward=reshard)
    for stack in fsdp_stacks(model):
        fully_shard(stack, mesh=mesh, mp_policy=stacks, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
    return model


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """All weights gathered, for code that calls the model by other methods than ``forward``
    (the flow sampler). Every process must enter it, and run the same calls inside."""
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, sharded or not (a collective for a sharded one)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: its shard of a sharded one, else the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_tensors(tensors: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """The whole tensors, on the CPU, for the process that writes them (``keep``); the others get
    nothing. A collective: every process calls it, in the same order. Each tensor is gathered and
    moved off the accelerator in turn, so saving a sharded run needs no room for a second whole
    model and optimizer state on any GPU, nor a host copy per process."""
    whole = {}
    for name, tensor in tensors.items():
        full = full_tensor(tensor)
        if keep:
            whole[name] = full.detach().cpu()
    return whole


def shard_like(reference: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` (as loaded, on the CPU) on ``reference``'s device and in its dtype, cut like it if it is sharded."""
    full = full.to(reference.device, reference.dtype)
    if not isinstance(reference, DTensor):
        return full
    return distribute_tensor(full, reference.device_mesh, reference.placements)


def full_optimizer_state(state: dict, keep: bool = True) -> dict:
    """An optimizer ``state_dict`` with every tensor gathered whole onto the CPU (see ``full_tensors``)."""
    return {**state, "state": {i: full_tensors(s, keep) for i, s in state["state"].items()}}


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full optimizer ``state_dict`` cut to this process's shards of the optimizer's parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {
        **state,
        "state": {
            i: {k: shard_like(params[int(i)], v) if v.ndim else v for k, v in s.items()}
            for i, s in state["state"].items()
        },
    }
