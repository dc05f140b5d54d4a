"""Architecture checks: sizes of the released model, sampler caching, tower shapes, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import SiglipVisionConfig

from golden.cases import CASES, make_images, make_noise
from nitrogen_finetuner import load_policy
from nitrogen_finetuner.data.errors import DataError
from nitrogen_finetuner.model.presets import build_preset
from nitrogen_finetuner.model.vision import TOWER_CONFIGS, tower_config_from_state_dict

# Per-component parameter counts of NVIDIA's ng.pt (../shared/NITROGEN_FACTS.md).
RELEASED_COUNTS = {
    "vision_encoder": 315_956_224,
    "model": 121_992_192,
    "vl_self_attention_model": 50_384_896,
    "action_encoder": 3_174_400,
    "action_decoder": 1_075_225,
    "position_embedding": 1_048_576,
}


@pytest.fixture(scope="module")
def released_meta():
    model, _ = build_preset("released", device="meta")
    return model


def test_released_config_has_exactly_the_released_parameter_count(released_meta):
    assert sum(p.numel() for p in released_meta.parameters()) == 493_631_513
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in released_meta.named_children()}
    assert counts == RELEASED_COUNTS
    # No persistent buffers in the released file: every state-dict entry is a parameter.
    assert len(released_meta.state_dict()) == len(list(released_meta.parameters()))


def test_tower_config_is_read_off_the_tensors(released_meta):
    config = tower_config_from_state_dict("google/siglip2-large-patch16-256", released_meta.state_dict())
    expected = SiglipVisionConfig(**TOWER_CONFIGS["google/siglip2-large-patch16-256"])
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "image_size", "patch_size", "num_channels", "layer_norm_eps", "hidden_act"):
        assert getattr(config, field) == getattr(expected, field), field


def test_released_freezes_vision_layer_11_and_the_pooling_head(released_meta):
    frozen = {n for n, p in released_meta.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("vision_encoder.encoder.layers.11.", "vision_encoder.head.")) for n in frozen)
    assert any(n.startswith("vision_encoder.head.") for n in frozen)
    assert sum(released_meta.get_parameter(n).numel() for n in frozen) == 12_596_224 + 12_595_200


def test_tune_switches_freeze_their_components():
    model, raw = build_preset("tiny")
    model.config.tune_vision_tower = False
    model.config.tune_multi_projector = False
    model.apply_tune_switches()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model", "vl_self_attention_model"}


def naive_sample(model, pixel_values, noise):
    """The official loop: VL mixer and cross-attention projections recomputed at every step."""
    cfg = model.config
    vl = None
    actions = noise.clone()
    category = torch.zeros(noise.shape[0], dtype=torch.long)
    for i in range(cfg.num_inference_timesteps):
        vl = model.vl_tokens(pixel_values)
        t = int(i / float(cfg.num_inference_timesteps) * cfg.num_timestep_buckets)
        v = model.velocity(actions, torch.full((noise.shape[0],), t), category, vl_tokens=vl)
        actions = actions + (1.0 / cfg.num_inference_timesteps) * v
    return actions


@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_sampler_equals_the_naive_loop(case, case_checkpoints):
    policy = load_policy(case_checkpoints[case], verbose=False)
    pixels = policy.preprocess(make_images(case))
    noise = make_noise(case)
    with torch.no_grad():
        expected = naive_sample(policy.model, pixels, noise)
    cached = policy.model.sample_actions(pixels, noise)
    assert (cached - expected).abs().max() <= 1e-6


def test_batched_predict_equals_one_frame_at_a_time(case_checkpoints):
    case = "plain_old_layout"
    policy = load_policy(case_checkpoints[case], verbose=False)
    frames, noise = make_images(case), make_noise(case)
    batched = policy.predict_batch(frames, noise=noise)
    for i, frame in enumerate(frames):
        single = policy.predict(frame, noise=noise[i])
        for key in ("raw", "j_left", "j_right", "buttons"):
            np.testing.assert_allclose(single[key], batched[key][i], atol=1e-6)
    assert batched["raw"].shape == (2, 5, 25)
    assert batched["buttons"].shape == (2, 5, 21) and set(np.unique(batched["buttons"])) <= {0.0, 1.0}
    assert np.abs(batched["j_left"]).max() <= 1.0


def test_predict_accepts_pil_images_and_draws_noise_when_none(case_checkpoints):
    from PIL import Image

    policy = load_policy(case_checkpoints["interleaved_sinusoidal"], verbose=False)
    frame = make_images("interleaved_sinusoidal")[0]
    np.testing.assert_array_equal(
        policy.predict(Image.fromarray(frame), noise=torch.zeros(6, 25))["raw"],
        policy.predict(frame, noise=torch.zeros(6, 25))["raw"],
    )
    torch.manual_seed(0)
    a = policy.predict(frame)["raw"]
    torch.manual_seed(0)
    b = policy.predict(frame)["raw"]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"noise must have shape \(6, 25\), got \(5, 25\)"):
        policy.predict(frame, noise=torch.zeros(5, 25))
    with pytest.raises(ValueError, match="RGB uint8"):
        policy.predict(frame.astype(np.float32))
    np.testing.assert_array_equal(policy.predict(frame, noise=np.zeros((6, 25), np.float32))["raw"],
                                  policy.predict(frame, noise=torch.zeros(6, 25))["raw"])  # numpy noise too
    # 16-bit grey as a capture tool saves it: mid-grey, not clipped to white
    grey = Image.fromarray(np.full(frame.shape[:2], 32768, np.uint16))
    mid_grey = Image.new("RGB", grey.size, (128, 128, 128))
    assert policy.preprocessor.resize(grey).tolist() == policy.preprocessor.resize(mid_grey).tolist()
    # Grey and RGBA arrays as PIL reads them, not refused while the same PIL image is accepted
    pixels = np.random.RandomState(0).randint(0, 256, (20, 30), dtype=np.uint8)
    as_pil = policy.preprocessor.resize(Image.fromarray(pixels))
    assert np.array_equal(policy.preprocessor.resize(pixels), as_pil)
    assert np.array_equal(policy.preprocessor.resize(pixels[..., None]), as_pil)
    assert np.array_equal(policy.preprocessor.resize(np.dstack([pixels] * 3 + [pixels // 2])),
                          policy.preprocessor.resize(np.dstack([pixels] * 3)))
    for wrong, error, message in [
        (torch.from_numpy(frame), TypeError, "numpy array or a PIL image, got Tensor"),
        (frame.tolist(), TypeError, "got list"),
        (np.zeros((0, 0, 3), np.uint8), ValueError, "the image is empty"),
    ]:
        with pytest.raises(error, match=message):
            policy.predict(wrong)
    with pytest.raises(ValueError, match="noise must hold finite real floating-point numbers"):  # not the weights'
        policy.predict(frame, noise=np.full((6, 25), np.nan))
    for not_numbers in ("abc", [["a"] * 25] * 6, object()):
        with pytest.raises(ValueError, match="noise: a tensor or array of numbers, got "):
            policy.predict(frame, noise=not_numbers)
        with pytest.raises(ValueError, match="noise: a tensor or array of numbers, got "):
            policy.predict_batch([frame], noise=not_numbers)
    with pytest.raises(TypeError, match="predict_batch takes a list of frames, got ndarray"):
        policy.predict_batch(frame)
    with pytest.raises(ValueError, match="at least one frame"):
        policy.predict_batch([])


def test_load_policy_names_devices_dtypes_and_fits_in_one_line_and_save_keeps_what_it_plays_with(
        case_checkpoints, tmp_path, monkeypatch):
    path = case_checkpoints["interleaved_sinusoidal"]
    assert load_policy(path, device="CPU", dtype="bf16", verbose=False).model.action_encoder.W1.W.dtype == torch.bfloat16
    for device, message in [("gpu", "device 'gpu': not a device name"), (None, "device None: not a device name"),
                            ("meta", "device 'meta': the policy runs on cpu, cuda or mps")]:
        with pytest.raises(ValueError, match=message):
            load_policy(path, device=device, verbose=False)
    with pytest.raises(ValueError, match="image_fit 'zoom': one of pad, crop, stretch"):
        load_policy(path, image_fit="zoom", verbose=False)
    policy = load_policy(path, image_fit="crop", verbose=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    saved = policy.save("~/copy.pt")
    assert saved == tmp_path / "copy.pt" and load_policy(saved, verbose=False).preprocessor.fit == "crop"
    next(policy.model.parameters()).data.fill_(float("nan"))
    with pytest.raises(DataError, match="holds NaN or infinity: it would save a model that predicts no numbers"):
        policy.save(tmp_path / "broken.pt")
    assert not (tmp_path / "broken.pt").exists()


def test_button_names_are_a_list_and_one_way_of_naming_them(case_checkpoints):
    from nitrogen_finetuner.actions import LayoutError  # noqa: PLC0415

    path = case_checkpoints["interleaved_sinusoidal"]
    with pytest.raises(LayoutError, match="buttons is a list of names in slot order, got the string"):
        load_policy(path, buttons="SOUTH,EAST", verbose=False)
    names = load_policy(path, verbose=False).layout.buttons
    with pytest.raises(LayoutError, match="not both"):
        load_policy(path, buttons=names, button_order="nitrogen-v1", verbose=False)


def test_loss_ignores_masked_slots_and_samples_without_real_actions():
    torch.manual_seed(0)
    model, _ = build_preset("tiny")
    model.eval()
    pixels = torch.randn(2, 3, 64, 64)
    actions = torch.rand(2, 18, 25)
    noise, t = torch.randn(2, 18, 25), torch.tensor([0.3, 0.8])
    mask = torch.ones(2, 18, 25, dtype=torch.bool)
    mask[1] = False
    both = model.compute_loss(pixels, actions, mask, noise=noise, flow_time=t)
    # Changing the masked-out sample's targets must not change the loss.
    actions2 = actions.clone()
    actions2[1] = 0.0
    assert model.compute_loss(pixels, actions2, mask, noise=noise, flow_time=t).item() == both.item()
    real = torch.tensor([True, False])
    no_real = model.compute_loss(pixels, actions2, None, real, noise=noise, flow_time=t)
    assert no_real.item() == pytest.approx(both.item(), rel=1e-6)
    unmasked = model.compute_loss(pixels, actions2, noise=noise, flow_time=t)
    assert unmasked.item() != pytest.approx(both.item(), rel=1e-3)


def test_preset_checkpoint_round_trip_keeps_the_tower_and_the_outputs(tmp_path):
    """The tiny tower has 2 heads of 32, which its tensors alone cannot show: the tower's
    hyper-parameters must travel with the checkpoint."""
    from nitrogen_finetuner.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model, raw = build_preset("tiny")
    model.eval()
    path = save_checkpoint(tmp_path / "tiny.pt", model, raw)
    policy = load_policy(path, verbose=False)
    assert policy.model.vision_encoder.config.num_attention_heads == 2
    pixels, noise = torch.randn(2, 3, 64, 64), torch.randn(2, 18, 25)
    torch.testing.assert_close(policy.model.sample_actions(pixels, noise), model.sample_actions(pixels, noise))
