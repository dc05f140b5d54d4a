"""Parity with the official NitroGen implementation, against golden numbers it produced.

Recipe for ``tests/golden/<case>.json`` (run once, outside this repository):
  official source github MineDojo/NitroGen at commit 3260844, in a separate venv with torch 2.13.0
  (CPU), transformers 4.57.6, diffusers 0.35.2, huggingface_hub 0.36.2, polars, einops, pydantic;
  torch.set_num_threads(1), fp32, no autocast. For each case of ``golden/cases.py``:
  1. save ``SiglipVisionModel(SiglipVisionConfig(**TOWERS[tower]))`` and a slow
     ``SiglipImageProcessor`` (size = image_size, bicubic, rescale 1/255, mean = std = 0.5) to a
     local folder named after the tower, and point ``vision_encoder_name`` at it;
  2. build ``NitroGen(config=CkptConfig.model_validate(cfg).model_cfg)`` and
     ``NitrogenTokenizer(tokenizer_cfg)`` (training False), ``eval()``, then
     ``load_state_dict(seeded_state_dict(model.state_dict()), strict=True)``;
  3. per frame of ``make_images(case)``: ``img_proc([frame], return_tensors="pt")``, then
     ``tokenizer.encode`` as ``nitrogen/inference_session.py`` does, batch dims added and
     samples stacked; ``torch.manual_seed(NOISE_SEED); get_action(batch)`` (its first act draws
     the start noise, equal to ``make_noise(case)``) and ``tokenizer.decode``;
  4. loss: ``forward`` on the same pixel values with ``make_training_batch(case)``, embodiment 0,
     in eval mode (no dropout), after ``torch.manual_seed(LOSS_SEED)``;
  5. record the state-dict key names and shapes, ``CkptConfig.model_dump()``, the pixel values,
     ``action_tensor``, the decoded actions and the loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

try:  # transformers 5: the PIL implementation has its own name; 4.x: it is SiglipImageProcessor
    from transformers import SiglipImageProcessorPil as SiglipPilProcessor
except ImportError:
    from transformers import SiglipImageProcessor as SiglipPilProcessor

from conftest import golden, make_tower_folder
from golden.cases import CASES, LOSS_SEED, make_images, make_noise, make_training_batch
from nitrogen_finetuner import load_policy
from nitrogen_finetuner.model.checkpoint import read_checkpoint
from nitrogen_finetuner.model.vision import ImagePreprocessor

ALL_CASES = sorted(CASES)


@pytest.fixture(scope="module")
def policies(case_checkpoints):
    return {case: load_policy(path, verbose=False) for case, path in case_checkpoints.items()}


@pytest.mark.parametrize("case", ALL_CASES)
def test_state_dict_names_and_shapes_equal_official(case, policies):
    ours = {k: list(v.shape) for k, v in policies[case].model.state_dict().items()}
    assert ours == golden(case)["state_dict"]


@pytest.mark.parametrize("case", ALL_CASES)
def test_preprocessing_equals_official_processor(case, policies):
    pixels = policies[case].preprocess(make_images(case))
    expected = torch.tensor(golden(case)["pixel_values"], dtype=torch.float32)
    assert pixels.shape == expected.shape
    assert (pixels - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("shape", [(45, 60), (300, 200), (256, 256), (17, 400)])
def test_preprocessing_equals_siglip_pil_image_processor(shape):
    """The PIL processor the official player used (transformers 4.x ``SiglipImageProcessor``).
    The torchvision backend of transformers 5 rounds some resized pixels one level differently."""
    size = 256
    reference = SiglipPilProcessor(
        size={"height": size, "width": size}, resample=Image.Resampling.BICUBIC,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    frame = np.random.RandomState(sum(shape)).randint(0, 256, size=(*shape, 3), dtype=np.uint8)
    expected = reference([frame], return_tensors="pt")["pixel_values"]
    ours = ImagePreprocessor(size=size)([frame])
    assert (ours - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("case", ALL_CASES)
def test_predict_equals_official_get_action(case, policies):
    g = golden(case)
    out = policies[case].predict_batch(make_images(case), noise=make_noise(case))
    assert np.abs(out["raw"] - np.array(g["action_tensor"])).max() <= 1e-4
    np.testing.assert_array_equal(out["buttons"], np.array(g["decoded"]["buttons"]))
    for stick in ("j_left", "j_right"):
        assert np.abs(out[stick] - np.array(g["decoded"][stick])).max() <= 1e-4


@pytest.mark.parametrize("case", ALL_CASES)
def test_loss_equals_official_forward(case, policies):
    g = golden(case)
    batch = make_training_batch(case)
    torch.manual_seed(LOSS_SEED)
    loss = policies[case].model.compute_loss(
        torch.tensor(g["pixel_values"], dtype=torch.float32),
        batch["actions"], batch["actions_mask"], batch["has_real_action"],
    )
    assert loss.item() == pytest.approx(g["loss"], abs=1e-5)


@pytest.mark.parametrize("case", ALL_CASES)
def test_checkpoint_in_official_layout_loads(case, case_checkpoints, tmp_path):
    """A file as the official code writes one: its full model_dump, its key order, step/epoch."""
    g = golden(case)
    ckpt_config = g["ckpt_config_dump"]
    ckpt_config["model_cfg"]["vision_encoder_name"] = str(make_tower_folder(tmp_path, CASES[case]["tower"]))
    weights = read_checkpoint(case_checkpoints[case])["model"]
    path = tmp_path / "official.pt"
    torch.save({"model": {k: weights[k] for k in g["state_dict"]}, "ckpt_config": ckpt_config, "step": 7, "epoch": 1}, path)
    policy = load_policy(path, verbose=False)
    out = policy.predict_batch(make_images(case), noise=make_noise(case))
    assert np.abs(out["raw"] - np.array(g["action_tensor"])).max() <= 1e-4
    assert (policy.step, policy.epoch) == (7, 1)


@pytest.mark.parametrize("case", ALL_CASES)
def test_saved_checkpoint_is_official_format(case, policies, tmp_path):
    policy = policies[case]
    path = policy.save(tmp_path / "saved.pt", step=3)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "ckpt_config", "step", "epoch"} <= set(ckpt)
    assert {k: list(v.shape) for k, v in ckpt["model"].items()} == golden(case)["state_dict"]
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())
    assert ckpt["ckpt_config"] == policy.raw_config
    assert ckpt["step"] == 3
    reloaded = load_policy(path, verbose=False)
    noise = make_noise(case)
    a = policy.predict_batch(make_images(case), noise=noise)["raw"]
    b = reloaded.predict_batch(make_images(case), noise=noise)["raw"]
    np.testing.assert_array_equal(a, b)
