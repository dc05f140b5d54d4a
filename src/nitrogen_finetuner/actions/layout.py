"""The universal gamepad action layout: which slot of the model's action vector holds what.

A NitroGen action is one vector per game frame. With the released layout (``old_layout=False``)
it is ``[buttons..., left_x, left_y, right_x, right_y]``; with ``old_layout=True`` it is
``[left_x, left_y, right_x, right_y, buttons...]``. Sticks are in [-1, 1] outside the model
(y > 0 is down) and (v + 1) / 2 in [0, 1] inside it; buttons are 0/1 and decode as pressed
above 0.5.

Which button sits in which slot is not stored in ``ng.pt``. It is a named, versioned setting
(``BUTTON_ORDERS``); checkpoints we write record the order they were trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

BUTTON_ORDERS: dict[str, tuple[str, ...]] = {
    # The order the official NitroGen player decodes with (nitrogen/shared.py, commit 3260844):
    # alphabetical, including four right-stick directions that no dataset column fills.
    "nitrogen-v1": (
        "BACK", "DPAD_DOWN", "DPAD_LEFT", "DPAD_RIGHT", "DPAD_UP", "EAST", "GUIDE",
        "LEFT_SHOULDER", "LEFT_THUMB", "LEFT_TRIGGER", "NORTH", "RIGHT_BOTTOM", "RIGHT_LEFT",
        "RIGHT_RIGHT", "RIGHT_SHOULDER", "RIGHT_THUMB", "RIGHT_TRIGGER", "RIGHT_UP", "SOUTH",
        "START", "WEST",
    ),
}
DEFAULT_BUTTON_ORDER = "nitrogen-v1"
STICK_SLOTS = ("LEFT_X", "LEFT_Y", "RIGHT_X", "RIGHT_Y")
N_STICK_VALUES = len(STICK_SLOTS)


class LayoutError(ValueError):
    """The checkpoint and the requested action layout do not fit together."""


@dataclass(frozen=True)
class ActionLayout:
    """Where each button and stick axis lives in the model's action vector."""

    buttons: tuple[str, ...]
    old_layout: bool = False
    button_order: str = "custom"
    slot_names: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        if len(set(self.buttons)) != len(self.buttons):
            raise LayoutError(f"button names repeat: {list(self.buttons)}")
        if not all(isinstance(name, str) and name.strip() for name in self.buttons):
            raise LayoutError(f"every button needs a name (a trailing comma in --buttons leaves one empty): "
                              f"{list(self.buttons)}")
        sticks = [name for name in self.buttons if name.upper() in STICK_SLOTS]
        if sticks:
            raise LayoutError(f"{sticks[0]} is a stick axis, which every layout has after the buttons: name only "
                              f"the buttons, in slot order")
        slots = (STICK_SLOTS + self.buttons) if self.old_layout else (self.buttons + STICK_SLOTS)
        object.__setattr__(self, "slot_names", slots)

    @property
    def action_dim(self) -> int:
        return len(self.buttons) + N_STICK_VALUES

    @property
    def n_buttons(self) -> int:
        return len(self.buttons)

    @property
    def button_slice(self) -> slice:
        return slice(N_STICK_VALUES, None) if self.old_layout else slice(0, self.n_buttons)

    @property
    def stick_slice(self) -> slice:
        return slice(0, N_STICK_VALUES) if self.old_layout else slice(self.n_buttons, None)

    @classmethod
    def resolve(
        cls,
        action_dim: int,
        old_layout: bool,
        button_order: Optional[str] = None,
        buttons: Optional[Sequence[str]] = None,
    ) -> "ActionLayout":
        """The layout for a checkpoint's ``action_dim``: explicit ``buttons`` win, then a named
        ``button_order``, then the default order when it has the right length."""
        if isinstance(buttons, str):
            raise LayoutError(f"buttons is a list of names in slot order, got the string {buttons[:40]!r}")
        if buttons is not None:
            layout = cls(tuple(buttons), old_layout, button_order or "custom")
        else:
            name = button_order or DEFAULT_BUTTON_ORDER
            if name not in BUTTON_ORDERS:
                raise LayoutError(f"unknown button order {name!r}; known: {sorted(BUTTON_ORDERS)}")
            layout = cls(BUTTON_ORDERS[name], old_layout, name)
            if layout.action_dim != action_dim and button_order is None:
                raise LayoutError(
                    f"the checkpoint's action_dim is {action_dim}, which has no built-in layout "
                    f"(the {name} order gives {layout.action_dim}); give the {action_dim - N_STICK_VALUES} "
                    "button names in slot order (--buttons A,B,... or buttons=[...])"
                )
        if layout.action_dim != action_dim:
            raise LayoutError(
                f"layout has {layout.n_buttons} buttons + {N_STICK_VALUES} stick values = {layout.action_dim}, "
                f"but the checkpoint's action_dim is {action_dim}"
            )
        return layout

    def to_dict(self) -> dict:
        return {"buttons": list(self.buttons), "old_layout": self.old_layout, "button_order": self.button_order}

    @classmethod
    def from_dict(cls, raw: dict) -> "ActionLayout":
        return cls(tuple(raw["buttons"]), bool(raw["old_layout"]), raw.get("button_order", "custom"))

    def describe(self) -> str:
        buttons = f"{self.n_buttons} buttons ({self.button_order} order)"
        sticks = "left stick x,y + right stick x,y"
        parts = f"{sticks} + {buttons}" if self.old_layout else f"{buttons} + {sticks}"
        return f"{self.action_dim} = {parts}" + (" [old_layout]" if self.old_layout else "")

