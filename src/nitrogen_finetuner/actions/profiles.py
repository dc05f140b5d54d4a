"""Console profiles: which recording column drives which universal gamepad slot.

Recordings name their columns after the console's own buttons ("P1 A", "Cross", "C Up"). A
profile maps those names to the universal slots of the NitroGen layout (SOUTH, EAST, ...,
LEFT_X, ...). Face buttons follow the RetroArch convention: a console button goes to the slot in
the same physical position on an Xbox-style pad, so a learned "press the bottom face button"
means the same thing on every console.

Column names are compared after ``normalize_column`` (case, player prefix, spaces and hyphens
do not matter), so one spelling covers "P1 D-Pad Up", "d_pad_up" and "D Pad Up".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping, Optional

from ..data.errors import DataError
from .layout import STICK_SLOTS

STICK_SIDES = ("LEFT", "RIGHT")
# The 17 buttons NVIDIA's dataset records. RIGHT_UP/RIGHT_BOTTOM/RIGHT_LEFT/RIGHT_RIGHT have no
# column in any known source, so no profile expresses them.
RECORDED_BUTTONS = (
    "SOUTH", "EAST", "WEST", "NORTH", "LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_TRIGGER", "RIGHT_TRIGGER",
    "START", "BACK", "GUIDE", "DPAD_UP", "DPAD_DOWN", "DPAD_LEFT", "DPAD_RIGHT", "LEFT_THUMB", "RIGHT_THUMB",
)

_PLAYER_PREFIX = re.compile(r"^(?:p|player)[\s_\-]*(\d+)[\s_\-.:]+(?=\S)")


def column_player(name: str) -> int:
    """The player number a column's prefix names ("P2 A" -> 2); 1 without a prefix."""
    match = _PLAYER_PREFIX.match(name.strip().lower())
    return int(match.group(1)) if match else 1


def normalize_column(name: str) -> str:
    """The comparable form of a column name: lower case, no player prefix, "_" for spaces and
    hyphens ("P1 D-Pad Up" -> "d_pad_up")."""
    text = _PLAYER_PREFIX.sub("", name.strip().lower(), count=1)
    return re.sub(r"[\s\-]+", "_", text)


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType({normalize_column(k): v for k, v in mapping.items()})


@dataclass(frozen=True)
class ConsoleProfile:
    """How one console's recording columns map to universal slots.

    buttons: column -> button slot. stick_axes: column -> (stick axis, sign); sign -1 flips a
    device whose +y means up (universal y > 0 is down). stick_pairs: column holding [x, y] ->
    "LEFT"/"RIGHT". stick_buttons: digital column -> (stick axis, value it pushes the axis to).
    analog_triggers: button columns that may hold analog values. stick_range: the encoding the
    console's recorders write its sticks in, which values that fit it are read as (a stick held in
    one direction all file long leaves no resting value to detect a range from). detected_by: when
    given, detection offers the profile only to files with one of these columns (a console whose
    button names other consoles share, told apart by its sticks). A slot that no column of a file
    drives stays out of the loss: a missing column says nothing about that button or stick. Keys
    are stored normalized.
    """

    name: str
    description: str
    buttons: Mapping[str, str] = field(default_factory=dict)
    stick_axes: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    stick_pairs: Mapping[str, str] = field(default_factory=dict)
    stick_buttons: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    analog_triggers: frozenset[str] = frozenset()
    stick_range: Optional[str] = None
    detected_by: frozenset[str] = frozenset()

    def __post_init__(self):
        for axis, sign in self.stick_axes.values():
            if axis not in STICK_SLOTS or sign not in (1, -1):
                raise ValueError(f"profile {self.name}: stick axis must be one of {STICK_SLOTS} with sign +-1")
        for axis, _ in self.stick_buttons.values():
            if axis not in STICK_SLOTS:
                raise ValueError(f"profile {self.name}: stick button axis must be one of {STICK_SLOTS}")
        if not set(self.stick_pairs.values()) <= set(STICK_SIDES):
            raise ValueError(f"profile {self.name}: stick pairs go to LEFT or RIGHT")
        for name in ("buttons", "stick_axes", "stick_pairs", "stick_buttons"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        for name in ("analog_triggers", "detected_by"):
            object.__setattr__(self, name, frozenset(normalize_column(c) for c in getattr(self, name)))

    @property
    def columns(self) -> frozenset[str]:
        """Every (normalized) column name the profile knows."""
        return frozenset(self.buttons) | set(self.stick_axes) | set(self.stick_pairs) | set(self.stick_buttons)

    @property
    def expressed_slots(self) -> frozenset[str]:
        """The universal slots this console can drive."""
        pairs = {f"{side}_{axis}" for side in self.stick_pairs.values() for axis in "XY"}
        return (frozenset(self.buttons.values()) | {a for a, _ in self.stick_axes.values()} | pairs
                | {a for a, _ in self.stick_buttons.values()})

    def reading(self, name: str) -> tuple:
        """What the profile makes of a (normalized) column, comparable across profiles."""
        for kind in ("buttons", "stick_axes", "stick_pairs", "stick_buttons"):
            if name in getattr(self, kind):
                return kind, getattr(self, kind)[name]
        return ()


def _dpad(*prefixes: str, short: bool = False) -> dict[str, str]:
    """D-pad columns under each prefix ("" -> "up", "dpad_" -> "dpad_up"; short adds "dpad_u")."""
    names = {}
    for direction in ("UP", "DOWN", "LEFT", "RIGHT"):
        for prefix in prefixes:
            names[prefix + direction.lower()] = f"DPAD_{direction}"
        if short:
            names["dpad_" + direction[0].lower()] = f"DPAD_{direction}"
    return names


_XBOX_STICKS = {"LEFT_X": ("left_x", "lx", "sthumblx"), "LEFT_Y": ("left_y", "ly", "sthumbly"),
                "RIGHT_X": ("right_x", "rx", "sthumbrx"), "RIGHT_Y": ("right_y", "ry", "sthumbry")}
_UNIVERSAL_BUTTONS = {b.lower(): b for b in RECORDED_BUTTONS}
_UNIVERSAL_TRIGGERS = frozenset({"left_trigger", "right_trigger"})
_BIZHAWK_DPAD = _dpad("", "dpad_", "d_pad_")  # BizHawk logs "P1 Up"; other tools "D-Pad Up"

PROFILES: dict[str, ConsoleProfile] = {p.name: p for p in (
    ConsoleProfile(
        "nitrogen",
        "NitroGen's own format (NVIDIA's dataset, the BizHawk converter): 17 booleans named after "
        "the universal buttons, j_left/j_right as [x, y] in [-1, 1].",
        buttons=_UNIVERSAL_BUTTONS,
        stick_pairs={"j_left": "LEFT", "j_right": "RIGHT"},
        analog_triggers=_UNIVERSAL_TRIGGERS,
        stick_range="float_pm1",
    ),
    ConsoleProfile(
        # Before the console profiles so that a file named only with universal names (and so also
        # matching Xbox's "Left X", whose y points up) reads as universal on a tie.
        "generic",
        "Columns named like the universal slots (SOUTH, dpad_up, left_x, ...), sticks in the "
        "universal convention (y > 0 is down).",
        buttons=_UNIVERSAL_BUTTONS,
        stick_axes={axis.lower(): (axis, 1) for axis in STICK_SLOTS},
        analog_triggers=_UNIVERSAL_TRIGGERS,
    ),
    ConsoleProfile(
        "nes",
        "NES pad (BizHawk: 'P1 A'...): A is the right face button -> EAST, B the bottom -> SOUTH.",
        buttons={"a": "EAST", "b": "SOUTH", "select": "BACK", "start": "START", **_BIZHAWK_DPAD},
    ),
    ConsoleProfile(
        "snes",
        "SNES pad, positional: A right -> EAST, B bottom -> SOUTH, X top -> NORTH, Y left -> WEST.",
        buttons={"a": "EAST", "b": "SOUTH", "x": "NORTH", "y": "WEST", "l": "LEFT_SHOULDER",
                 "r": "RIGHT_SHOULDER", "select": "BACK", "start": "START", **_BIZHAWK_DPAD},
    ),
    ConsoleProfile(
        "genesis",
        "Mega Drive/Genesis 6-button pad: bottom row A B C -> WEST SOUTH EAST, top row X Z -> "
        "shoulders and Y -> NORTH (RetroArch's Genesis Plus GX layout); Mode -> BACK.",
        buttons={"a": "WEST", "b": "SOUTH", "c": "EAST", "x": "LEFT_SHOULDER", "y": "NORTH",
                 "z": "RIGHT_SHOULDER", "mode": "BACK", "start": "START", **_BIZHAWK_DPAD},
    ),
    ConsoleProfile(
        "n64",
        "N64 pad: A -> SOUTH, B -> WEST, Z (under the grip) -> LEFT_TRIGGER; the analog stick is "
        "int8 with +y up (flipped); C buttons push the right stick, as RetroArch maps them.",
        buttons={"a": "SOUTH", "b": "WEST", "z": "LEFT_TRIGGER", "l": "LEFT_SHOULDER",
                 "r": "RIGHT_SHOULDER", "start": "START", **_dpad("d_", "dpad_", "d_pad_", short=True)},
        stick_axes={"x_axis": ("LEFT_X", 1), "y_axis": ("LEFT_Y", -1),
                    "analog_x": ("LEFT_X", 1), "analog_y": ("LEFT_Y", -1)},
        stick_buttons={"c_up": ("RIGHT_Y", -1.0), "c_down": ("RIGHT_Y", 1.0),
                       "c_left": ("RIGHT_X", -1.0), "c_right": ("RIGHT_X", 1.0)},
        stick_range="int8",
    ),
    ConsoleProfile(
        "gamecube",
        "GameCube pad (Dolphin's names), by position: A (the big one) -> SOUTH, B left -> WEST, "
        "X right -> EAST, Y top -> NORTH, Z -> RIGHT_SHOULDER; L/R are the triggers, may be analog "
        "0..255; Main Stick and C Stick uint8, 128 neutral, +y up (flipped).",
        buttons={"a": "SOUTH", "b": "WEST", "x": "EAST", "y": "NORTH", "z": "RIGHT_SHOULDER",
                 "l": "LEFT_TRIGGER", "r": "RIGHT_TRIGGER", "start": "START", **_BIZHAWK_DPAD},
        stick_axes={"main_stick_x": ("LEFT_X", 1), "main_stick_y": ("LEFT_Y", -1),
                    "c_stick_x": ("RIGHT_X", 1), "c_stick_y": ("RIGHT_Y", -1)},
        analog_triggers=frozenset({"l", "r"}),
        stick_range="uint8",
        detected_by=frozenset({"main_stick_x", "main_stick_y", "c_stick_x", "c_stick_y"}),
    ),
    ConsoleProfile(
        "playstation",
        "PlayStation DualShock (BizHawk Octoshock names): Cross/Circle/Square/Triangle by "
        "position; L2/R2 may be analog 0..255; sticks uint8 0..255, 128 neutral, y down.",
        buttons={"cross": "SOUTH", "circle": "EAST", "square": "WEST", "triangle": "NORTH",
                 "l1": "LEFT_SHOULDER", "r1": "RIGHT_SHOULDER", "l2": "LEFT_TRIGGER",
                 "r2": "RIGHT_TRIGGER", "l3": "LEFT_THUMB", "r3": "RIGHT_THUMB", "select": "BACK",
                 "share": "BACK", "start": "START", "options": "START", "ps": "GUIDE", **_BIZHAWK_DPAD},
        stick_axes={"lstick_x": ("LEFT_X", 1), "lstick_y": ("LEFT_Y", 1),
                    "rstick_x": ("RIGHT_X", 1), "rstick_y": ("RIGHT_Y", 1)},
        analog_triggers=frozenset({"l2", "r2"}),
        stick_range="uint8",
    ),
    ConsoleProfile(
        "xbox",
        "Xbox pad (the universal layout itself): LT/RT may be analog 0..255 or 0..1; sticks int16 "
        "with +y up (flipped). Also XInput field names (sThumbLX, bLeftTrigger).",
        buttons={"a": "SOUTH", "b": "EAST", "x": "WEST", "y": "NORTH",
                 "lb": "LEFT_SHOULDER", "left_bumper": "LEFT_SHOULDER",
                 "rb": "RIGHT_SHOULDER", "right_bumper": "RIGHT_SHOULDER",
                 "lt": "LEFT_TRIGGER", "left_trigger": "LEFT_TRIGGER", "blefttrigger": "LEFT_TRIGGER",
                 "rt": "RIGHT_TRIGGER", "right_trigger": "RIGHT_TRIGGER", "brighttrigger": "RIGHT_TRIGGER",
                 "back": "BACK", "view": "BACK", "start": "START", "menu": "START", "guide": "GUIDE",
                 "ls": "LEFT_THUMB", "left_thumb": "LEFT_THUMB", "rs": "RIGHT_THUMB",
                 "right_thumb": "RIGHT_THUMB", **_dpad("dpad_", "d_pad_", "")},
        stick_axes={name: (axis, -1 if axis.endswith("Y") else 1)
                    for axis, names in _XBOX_STICKS.items() for name in names},
        analog_triggers=frozenset({"lt", "rt", "left_trigger", "right_trigger", "blefttrigger", "brighttrigger"}),
        stick_range="int16",
    ),
    ConsoleProfile(
        "switch",
        "Nintendo Switch Pro Controller / Joy-Cons, positional like the SNES: A right -> EAST, "
        "B bottom -> SOUTH, X top -> NORTH, Y left -> WEST; ZL/ZR -> triggers, Plus/Minus/Home -> "
        "START/BACK/GUIDE; sticks int16 with +y up (flipped).",
        buttons={"a": "EAST", "b": "SOUTH", "x": "NORTH", "y": "WEST", "l": "LEFT_SHOULDER",
                 "r": "RIGHT_SHOULDER", "zl": "LEFT_TRIGGER", "zr": "RIGHT_TRIGGER", "plus": "START",
                 "minus": "BACK", "home": "GUIDE", "lstick": "LEFT_THUMB", "rstick": "RIGHT_THUMB",
                 **_dpad("dpad_", "d_pad_", "")},
        stick_axes={name: (axis, -1 if axis.endswith("Y") else 1)
                    for axis, names in _XBOX_STICKS.items() for name in names[:2]},
        stick_range="int16",
    ),
)}


def detect_profile(columns: Iterable[str], source: Optional[str] = None) -> ConsoleProfile:
    """The profile that knows the most of these columns. Profiles that tie must read the columns
    alike (the first in ``PROFILES`` is taken), or the console has to be named: "A" is the right
    face button on a NES and the bottom one on an Xbox pad. Universal names (``generic``) win their
    ties, as the universal slots are what they name."""
    columns = list(columns)
    names = {normalize_column(c) for c in columns}
    offered = [p for p in PROFILES.values() if not p.detected_by or names & p.detected_by]
    best = max(offered, key=lambda p: len(names & p.columns))
    if not names & best.columns:
        raise DataError(
            f"no console profile knows any of the columns {sorted(columns)}", file=source,
            hint=f"name a profile ({', '.join(PROFILES)}) and map the columns to slots with `mapping`",
        )
    if best.name == "generic":
        return best
    tied = [p for p in offered if len(names & p.columns) == len(names & best.columns)]
    for name in sorted(names & best.columns):
        readings = {p.name: p.reading(name) for p in tied if name in p.columns}
        if len(set(readings.values())) > 1:
            column = next(c for c in columns if normalize_column(c) == name)
            raise DataError(
                f"the columns fit the {', '.join(readings)} profiles equally, and these read {column!r} "
                f"differently", file=source,
                hint="name the console that recorded them: --set data.profile=NAME for train, "
                     "--profile NAME for data inspect and eval",
            )
    return best
