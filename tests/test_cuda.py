"""GPU checks (skipped without CUDA; run them on a GPU machine): exactness on the device, the
captured CUDA-graph sampler against the plain one, and training with CUDA graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import golden
from golden.cases import CASES, make_images, make_noise
from nitrogen_finetuner import load_policy
from nitrogen_finetuner.training.trainer import train
from runs import config, final_weights, logged

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_on_gpu_equals_official(case, case_checkpoints):
    policy = load_policy(case_checkpoints[case], device="cuda", verbose=False)
    out = policy.predict_batch(make_images(case), noise=make_noise(case))
    assert np.abs(out["raw"] - np.array(golden(case)["action_tensor"])).max() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_graph_sampler_equals_plain_sampler(case, dtype, case_checkpoints):
    policy = load_policy(case_checkpoints[case], device="cuda", dtype=dtype, verbose=False)
    frames, noise = make_images(case), make_noise(case)
    plain = policy.predict_batch(frames, noise=noise)["raw"]
    policy.enable_cuda_graphs()
    graphed = policy.predict_batch(frames, noise=noise)["raw"]
    again = policy.predict_batch(frames, noise=noise * 0.5)["raw"]  # replay with new inputs
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    np.testing.assert_allclose(graphed, plain, atol=atol, rtol=0)
    assert np.abs(again - graphed).max() > 10 * atol
    policy.use_cuda_graphs = False
    np.testing.assert_allclose(again, policy.predict_batch(frames, noise=noise * 0.5)["raw"], atol=atol, rtol=0)


def test_compiled_cuda_graph_sampler_matches_plain_sampler(case_checkpoints):
    case = "interleaved_sinusoidal"
    policy = load_policy(case_checkpoints[case], device="cuda", verbose=False)
    frames, noise = make_images(case), make_noise(case)
    plain = policy.predict_batch(frames, noise=noise)["raw"]
    compiled = policy.enable_cuda_graphs(compile=True).predict_batch(frames, noise=noise)["raw"]
    np.testing.assert_allclose(compiled, plain, atol=1e-4, rtol=0)


def test_a_steps_loss_travels_back_without_making_the_cpu_wait():
    from nitrogen_finetuner.training.trainer import StepReadout  # noqa: PLC0415

    readout = StepReadout(step=0)
    big = torch.randn(4096, 4096, device="cuda")
    for i in range(3):
        values = torch.stack([(big @ big).mean() * 0 + i, torch.zeros((), device="cuda")])
        torch.cuda.set_sync_debug_mode("error")  # a copy that waited for the GPU would raise here
        try:
            readout.push(values)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert readout.take(everything=False) == [(1, [0.0, 0.0]), (2, [1.0, 0.0])]
    assert readout.take(everything=True) == [(3, [2.0, 0.0])]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_cuda_graphs_train_what_the_compiled_layers_train_and_resume(recordings, tmp_path, monkeypatch, method):
    """``cuda_graphs`` replays the compiled layers' kernels: the same losses and weights as
    ``compile`` alone, through a checkpoint and a resume (no dropout, so no random draws differ)."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")
    settings = {"method": method, "dropout": 0.0, "lora.dropout": 0.0, "compile": True, "bf16_weights": True,
                "checkpoint_every": 2}
    train(config(recordings, tmp_path / "compiled", max_steps=4, **settings))
    train(config(recordings, tmp_path / "graphs", max_steps=2, cuda_graphs=True, **settings))
    train(config(recordings, tmp_path / "graphs", max_steps=4, cuda_graphs=True, **settings), resume=True)
    np.testing.assert_allclose(logged(tmp_path / "graphs", "train/loss"), logged(tmp_path / "compiled", "train/loss"),
                               rtol=1e-3, atol=0)
    a, b = final_weights(tmp_path / "compiled"), final_weights(tmp_path / "graphs")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4
