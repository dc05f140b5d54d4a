"""The universal action layout: slot order, stick ranges, old layout, other action sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nitrogen_finetuner import BUTTON_ORDERS, ActionLayout, UniversalVectorProcessor
from nitrogen_finetuner.actions import LayoutError


def test_released_layout_packs_buttons_then_sticks_in_model_space():
    layout = ActionLayout.resolve(25, old_layout=False)
    assert layout.slot_names[:3] == ("BACK", "DPAD_DOWN", "DPAD_LEFT")
    assert layout.slot_names[18] == "SOUTH" and layout.slot_names[-4:] == ("LEFT_X", "LEFT_Y", "RIGHT_X", "RIGHT_Y")
    buttons = np.zeros(21)
    buttons[18] = 1  # SOUTH
    buttons[19] = 1  # START
    packed = UniversalVectorProcessor(layout).pack(buttons, np.array([-1.0, 0.5]), np.array([0.0, 1.0]))
    expected = np.zeros(25, dtype=np.float32)
    expected[18] = expected[19] = 1.0
    expected[21:] = [0.0, 0.75, 0.5, 1.0]
    np.testing.assert_array_equal(packed, expected)


def test_pack_refuses_sticks_of_the_wrong_shape_or_range_and_takes_lists():
    processor = UniversalVectorProcessor(ActionLayout.resolve(25, old_layout=False))
    with pytest.raises(LayoutError, match=r"j_left: \[x, y\] values \(..., 2\), got shape \(3,\)"):
        processor.pack(np.zeros(21), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"j_right: stick values lie in \[-1, 1\]"):
        processor.pack(np.zeros(21), np.zeros(2), np.array([5.0, 0.0]))
    with pytest.raises(LayoutError, match="expected 21 buttons, got shape"):
        processor.pack(np.zeros(20), np.zeros(2), np.zeros(2))
    packed = processor.pack([0] * 21, [0.0, 1.0], [-1.0, 0.0])
    assert packed.shape == (25,) and packed[-4:].tolist() == [0.5, 1.0, 0.0, 0.5]
    assert processor.unpack(packed.tolist())["j_left"].tolist() == [0.0, 1.0]


def test_old_layout_puts_sticks_first():
    layout = ActionLayout.resolve(25, old_layout=True)
    packed = UniversalVectorProcessor(layout).pack(
        torch.ones(2, 21), torch.tensor([[1.0, -1.0]] * 2), torch.tensor([[0.0, 0.0]] * 2)
    )
    assert packed.shape == (2, 25)
    torch.testing.assert_close(packed[0, :4], torch.tensor([1.0, 0.0, 0.5, 0.5]))
    assert torch.all(packed[:, 4:] == 1)


def test_unpack_thresholds_buttons_and_clips_sticks():
    layout = ActionLayout.resolve(25, old_layout=False)
    raw = np.full((3, 25), 0.5, dtype=np.float32)
    raw[0, 0] = 0.51
    raw[1, 0] = 0.49
    raw[2, 21:] = [1.7, -0.3, 0.25, 0.5]
    out = UniversalVectorProcessor(layout).unpack(raw)
    assert out["buttons"][:, 0].tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(out["j_left"][2], [1.0, -1.0])
    np.testing.assert_allclose(out["j_right"][2], [-0.5, 0.0])


def test_round_trip_through_the_processor():
    layout = ActionLayout.resolve(25, old_layout=False)
    proc = UniversalVectorProcessor(layout)
    rng = np.random.default_rng(0)
    buttons = (rng.random((18, 21)) > 0.5).astype(np.float32)
    j_left, j_right = rng.uniform(-1, 1, (18, 2)), rng.uniform(-1, 1, (18, 2))
    out = proc.unpack(proc.pack(buttons, j_left, j_right))
    np.testing.assert_array_equal(out["buttons"], buttons)
    np.testing.assert_allclose(out["j_left"], j_left, atol=1e-6)
    np.testing.assert_allclose(out["j_right"], j_right, atol=1e-6)


def test_other_action_dims_take_their_buttons_from_configuration():
    with pytest.raises(LayoutError, match="give the 5 button names"):
        ActionLayout.resolve(9, old_layout=False)
    layout = ActionLayout.resolve(9, old_layout=False, buttons=["A", "B", "SELECT", "START", "UP"])
    assert layout.action_dim == 9 and layout.slot_names[4] == "UP"
    with pytest.raises(LayoutError, match="action_dim is 9"):
        ActionLayout.resolve(9, old_layout=False, buttons=["A", "B"])
    with pytest.raises(LayoutError, match="every button needs a name"):  # `--buttons A,B,SELECT,START,`
        ActionLayout.resolve(9, old_layout=False, buttons=["A", "B", "SELECT", "START", ""])
    with pytest.raises(LayoutError, match="LEFT_X is a stick axis, which every layout has after the buttons"):
        ActionLayout.resolve(9, old_layout=False, buttons=["LEFT_X", "B", "SELECT", "START", "UP"])
    with pytest.raises(LayoutError, match="right_y is a stick axis"):
        ActionLayout.resolve(9, old_layout=False, buttons=["A", "B", "SELECT", "START", "right_y"])


def test_button_orders_are_named_settings():
    assert len(BUTTON_ORDERS["nitrogen-v1"]) == 21
    assert list(BUTTON_ORDERS["nitrogen-v1"]) == sorted(BUTTON_ORDERS["nitrogen-v1"])
    with pytest.raises(LayoutError, match="unknown button order"):
        ActionLayout.resolve(25, old_layout=False, button_order="nope")
    assert ActionLayout.from_dict(ActionLayout.resolve(25, False).to_dict()) == ActionLayout.resolve(25, False)
