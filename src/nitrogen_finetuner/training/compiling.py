"""``compile: true``: torch.compile one transformer layer at a time ("regional compilation").

The 24 SigLIP layers are alike, and so are the VL-mixer blocks and each kind of DiT block, so
compiling layer by layer builds a handful of graphs that the like layers share, where compiling
the whole model traces every layer into one graph. With LoRA on every attention projection at
the released size, the first step took 46 s instead of 161 s on the 2-core CPU, and the
whole-model compile of that set-up did not finish within 130 s on an H100. What runs between the
layers (the patch embedding, the action encoder and decoder, the loss) is small and stays eager.

Only the training step runs compiled, with static shapes: validation and the sampled chunks run
eager (``eager``), rather than compiling a variant of each layer for every batch size, gradient
mode and sampler call, and so running past dynamo's limit of variants.
"""

from __future__ import annotations

import torch

from ..model.modeling import NitroGenModel


def compile_layers(model: NitroGenModel, mode: str | None = None) -> None:
    """Compile each of ``model.transformer_layers()`` in place, so parameter names do not change
    (checkpoints, export, LoRA and FSDP see the same model). ``mode`` is torch.compile's.

    It first clears what torch.compile keeps in this process. Dynamo keeps the graphs of a
    function for every model whose layers share its code, up to ``recompile_limit`` (8). Past
    that limit a layer runs eager, with one warning line in the log, and a second run in one
    process (a sweep, a notebook, the benchmark's set-ups) got there: its LoRA run ended 2.8e-4
    away from the same run alone. Anything else compiled in the process compiles again when next
    called."""
    torch._dynamo.reset()
    for layer in model.transformer_layers():
        layer.compile(mode=mode, dynamic=False)


def eager():
    """A context in which compiled layers run their eager code (validation, sampling)."""
    return torch.compiler.set_stance("force_eager")
