"""Replaying the whole sampler as one CUDA graph.

At batch 1 the sampler launches a few thousand small kernels; on a GPU their launch overhead,
not arithmetic, sets the latency. Capturing the whole chunk (vision tower, VL mixer, all Euler
steps) once per batch size into a CUDA graph and replaying it removes that overhead. Inputs are
copied into static buffers; the output is copied out, so callers never see the graph's memory.
"""

from __future__ import annotations

import torch

from .modeling import NitroGenModel


class CudaGraphSampler:
    def __init__(
        self, model: NitroGenModel, pixel_values: torch.Tensor, noise: torch.Tensor, warmup: int = 3, compile: bool = False
    ):
        if pixel_values.device.type != "cuda":
            raise ValueError("CudaGraphSampler needs CUDA tensors")
        if compile:
            for module in (model.action_encoder, model.model, model.action_decoder):
                module.compile(dynamic=False)
        self.model = model
        self.pixel_values = pixel_values.detach().clone()
        self.noise = noise.detach().clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                model.sample_actions(self.pixel_values, self.noise)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.actions = model.sample_actions(self.pixel_values, self.noise)

    def __call__(self, pixel_values: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.pixel_values.copy_(pixel_values)
        self.noise.copy_(noise)
        self.graph.replay()
        return self.actions.clone()
