"""UniversalVectorProcessor: the one place where gamepad data becomes model action vectors.

Two directions. ``pack``/``unpack`` move between gamepad state (buttons 0/1, sticks [-1, 1]) and
model-space vectors. ``bind``/``ColumnBinding.convert`` turn a recording's columns into
model-space vectors: a console profile (or the user's mapping) says which column drives which
slot, so the slots keep their meaning whatever console recorded the data.

Stick ranges, and how "auto" picks one per column (first match wins; the first ``convert`` of a
binding fixes the pick, so one file reads one way throughout). The most frequent value is the
neutral a resting stick leaves behind; a stick held in one direction leaves none, and then only
the console's own encoding (the profile's ``stick_range``) or the user can tell:

1. the column's own type: int8 -> int8, uint8 -> uint8, int16 -> int16, except that an int16
   column whose values the profile's narrower integer range holds takes that range, when it is
   signed (int8) or the values rest at 127 or 128 (uint8): a recorder that widened a PlayStation's
   0..255 to int16 wrote 128 at rest, a 0.4% push as int16, while 0s are an int16 stick at rest;
2. an integer column (int64 from a CSV, say) whose values the profile's integer range holds: that
   range (a drift of +-1 is drift, not a full push);
3. every value within [-1, 1], or any value that is not a whole number (floats): float_pm1 when
   one is negative; float_01 when the most frequent value is 0.5 (or 128/255 or 127/255, a byte
   scaled to 0..1); float_pm1 when it is 0; else the profile's range if it is a float one;
4. whole numbers beyond that: the profile's range if it is an integer one and holds them all;
   int8 or int16 when one is negative (the narrowest that holds them); int16 beyond 255; uint8
   when the most frequent value is 127 or 128;
5. otherwise no range can be told, and binding stops and asks for ``stick_range``.

A column that holds only 0 under a signed range is centred whatever that range is: it never
conflicts with the range of another file or of the stick's other axis. Otherwise the x and y
columns of one stick must read alike, and so must one column in every file.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..data.errors import DataError
from .layout import STICK_SLOTS, ActionLayout, LayoutError
from .profiles import PROFILES, STICK_SIDES, ConsoleProfile, column_player, detect_profile, normalize_column

Array = Union[np.ndarray, torch.Tensor]
FLOAT_TOLERANCE = 1e-3  # how far a float stick may overshoot its range (rounding in recorders)
CENTRE_TOLERANCE = 1 / 255  # a 0..1 stick made from a byte rests at 128/255 or 127/255


@dataclass(frozen=True)
class StickRange:
    """How one stick encoding maps raw numbers onto [-1, 1]."""

    name: str
    low: float
    high: float
    center: float
    scale: float
    integral: bool

    def to_unit(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values mapped to [-1, 1] (clipped), and where a raw value lies outside this range."""
        tolerance = 0.0 if self.integral else FLOAT_TOLERANCE
        outside = ~((values >= self.low - tolerance) & (values <= self.high + tolerance))
        if self.integral:
            outside |= values != np.round(values)
        return np.clip((values - self.center) / self.scale, -1.0, 1.0), outside

    def describe(self) -> str:
        kind = "integers" if self.integral else "floats"
        return f"the {self.name} stick range ({kind} {self.low:g}..{self.high:g})"


STICK_RANGES: dict[str, StickRange] = {r.name: r for r in (
    StickRange("float_pm1", -1.0, 1.0, 0.0, 1.0, False),
    StickRange("float_01", 0.0, 1.0, 0.5, 0.5, False),
    StickRange("int8", -128.0, 127.0, 0.0, 127.0, True),
    StickRange("uint8", 0.0, 255.0, 128.0, 127.0, True),
    StickRange("int16", -32768.0, 32767.0, 0.0, 32767.0, True),
)}
_SIGNED_RANGES = ("float_pm1", "int8", "int16")  # 0 is the centre
_DTYPE_RANGES = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16"}


def _value_summary(values: np.ndarray) -> str:
    return f"{values.min():g}..{values.max():g}, most often {_most_frequent(values):g}"


def _most_frequent(values: np.ndarray) -> float:
    uniques, counts = np.unique(values, return_counts=True)
    return float(uniques[np.argmax(counts)])


def detect_stick_range(values: np.ndarray, dtype: np.dtype, console: Optional[str] = None) -> Optional[str]:
    """The stick range of a column from its type, its valid values and the range its console
    writes (rules: module docstring); None when they cannot tell."""
    low, high = float(values.min()), float(values.max())
    console_range = STICK_RANGES.get(console)
    whole = not np.any(values != np.round(values))
    fits_console = bool(console_range and console_range.integral and whole
                        and console_range.low <= low and high <= console_range.high)
    if dtype in _DTYPE_RANGES:
        # An unsigned console's values show it by resting at 128: a column of 0s is an int16 stick at rest.
        widened = fits_console and _DTYPE_RANGES[dtype] == "int16" and (
            console_range.low < 0 or _most_frequent(values) in (127, 128))
        return console if widened else _DTYPE_RANGES[dtype]
    if fits_console and dtype.kind in "iu":
        return console
    if max(-low, high) <= 1.0 + FLOAT_TOLERANCE or not whole:
        rest = _most_frequent(values)
        if low < -FLOAT_TOLERANCE or rest == 0:
            return "float_pm1"
        if abs(rest - 0.5) <= CENTRE_TOLERANCE:
            return "float_01"
        return console if console_range and not console_range.integral else None
    if fits_console:
        return console
    if low < 0:
        return "int8" if low >= -128 and high <= 127 else "int16"
    if high > 255:
        return "int16"
    return "uint8" if _most_frequent(values) in (127, 128) else None


# ------------------------------------------------------------------------------------ targets
@dataclass(frozen=True)
class _Target:
    """What one column drives: kind "button", "axis", "pair" ([x, y]) or "stick_button"."""

    kind: str
    slots: tuple[str, ...]
    factor: float = 1.0  # axis sign, or the value a stick button pushes its axis to
    analog: bool = False  # a button column that may hold analog trigger values

    def label(self) -> str:
        if self.kind == "pair":
            return self.slots[0].split("_")[0]
        if self.kind == "axis":
            return ("-" if self.factor < 0 else "") + self.slots[0]
        if self.kind == "stick_button":
            return f"{self.slots[0]}={self.factor:+g}"
        return self.slots[0] + (" (analog)" if self.analog else "")


def _profile_target(profile: ConsoleProfile, name: str) -> _Target:
    if name in profile.buttons:
        return _Target("button", (profile.buttons[name],), analog=name in profile.analog_triggers)
    if name in profile.stick_axes:
        axis, sign = profile.stick_axes[name]
        return _Target("axis", (axis,), float(sign))
    if name in profile.stick_pairs:
        side = profile.stick_pairs[name]
        return _Target("pair", (f"{side}_X", f"{side}_Y"))
    axis, value = profile.stick_buttons[name]
    return _Target("stick_button", (axis,), float(value))


_Targets = dict[str, tuple[_Target, tuple[int, ...]]]  # column -> (what it drives, slot indices)
_MAPPING_ONLY = ConsoleProfile("custom", "No profile knows the columns; only the user's mapping applies.")
_MAPPING_HINT = ("a target is a slot name, LEFT/RIGHT for an [x, y] column, a stick axis with a leading '-' "
                 "to flip it, or null to ignore the column")


# ------------------------------------------------------------------------------- raw columns
_SKIP = "set data.skip_bad_rows (--skip-bad-rows)"
_HINT_NULL = f"fill or drop these rows, or {_SKIP} to leave them out"
_HINT_BUTTON = f"a button holds 0/1 or true/false; map an analog column to LEFT_TRIGGER or RIGHT_TRIGGER, or {_SKIP}"
_HINT_TRIGGER = f"an analog trigger holds 0..1 or whole numbers 0..255; or {_SKIP}"
_HINT_RANGE = f"give data.stick_range for this column ({', '.join(STICK_RANGES)}), or {_SKIP}"
_HINT_PAIR = f"each row of an [x, y] column holds two numbers; or {_SKIP}"


def _is_none(values: np.ndarray) -> np.ndarray:
    return np.fromiter(map(operator.is_, values, repeat(None)), bool, len(values))


def _show(value) -> str:
    return repr(value.tolist() if hasattr(value, "tolist") else value)


def _first_unreadable(values: np.ndarray, convert) -> int:
    """The first row a conversion fails on (only called to locate an error)."""
    for i, value in enumerate(values):
        try:
            if value is not None:
                convert(value)
        except (TypeError, ValueError):
            return i
    return 0


def as_number(value) -> float:
    """A cell as a float, NaN where it is no number (a word, a null)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _button_words(raw):
    """A button written as the text true or false (any case, as some exporters write it) as 1 or 0."""
    arr = np.asarray(raw)
    if arr.dtype != object and arr.dtype.kind != "U":
        return raw
    words = {"true": 1, "false": 0}
    return np.array([words.get(v.strip().lower(), v) if isinstance(v, str) else v for v in arr.tolist()], dtype=object)


def _is_boolean(raw, dtype: np.dtype) -> bool:
    """A column of true/false (with nulls, pyarrow hands it over as objects)."""
    if dtype == bool:
        return True
    return dtype == object and all(isinstance(v, (bool, np.bool_)) for v in raw if v is not None) and \
        any(v is not None for v in raw)


def _trigger_scale(values: np.ndarray) -> Optional[float]:
    """The scale an analog trigger's valid values show: 0..1 when more of them lie between 0 and 1
    than are whole numbers above 1, else 0..255; None when they are only 0 and 1 (either scale).
    So one stray value is an error in its row, not the scale of the file."""
    fractions = np.count_nonzero((values > 0) & (values < 1))
    whole_above_one = np.count_nonzero((values > 1) & (values == np.round(values)))
    if not fractions and not whole_above_one:
        return None
    return 1.0 if fractions > whole_above_one else 255.0


def _numbers(raw, column: str, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.dtype]:
    """One number per row: float64 values (0 where null or not a number), where null, where not a
    number (a list, a word), and the column's dtype."""
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise DataError("holds several values per row where one number is expected", file=source,
                        column=column, hint="map an [x, y] column to LEFT or RIGHT")
    none = np.zeros(len(arr), bool)
    if arr.dtype == object:
        missing = _is_none(arr)
        values = np.zeros(len(arr))
        try:
            values[~missing] = arr[~missing].astype(np.float64)
        except (TypeError, ValueError):  # some rows hold no number: each becomes a bad row
            values[~missing] = np.fromiter(map(as_number, arr[~missing]), np.float64, int((~missing).sum()))
            unreadable = ~missing & np.isnan(values) & ~np.fromiter(map(_is_nan, arr), bool, len(arr))
            values[unreadable] = 0.0
            return values, missing, unreadable, arr.dtype
        return values, missing, none, arr.dtype
    if arr.dtype.kind not in "biuf":
        raise DataError(f"holds {arr.dtype} values, not numbers", file=source, column=column,
                        hint="map the column to null in `mapping` to ignore it")
    return arr.astype(np.float64), none, none, arr.dtype


def _text_pair(value):
    """A pair written as text ("[0.5, -1]": a CSV cell) as a list; any other value as it is."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, list) else value
    return value


def _is_nan(value) -> bool:
    """A float NaN as such (a bad value), as opposed to a value that is not a number at all."""
    return isinstance(value, float) and value != value


def _pairs(raw, column: str, source: str, first_row: int):
    """[x, y] per row: float64 (n, 2) values, where null, where not two numbers, and the dtype."""
    arr = raw if isinstance(raw, np.ndarray) else np.fromiter(raw, dtype=object, count=len(raw))
    n = len(arr)
    if arr.ndim == 2 and arr.dtype != object:
        values = arr.astype(np.float64)
        wrong = np.full(n, arr.shape[1] != 2)
        return (values if arr.shape[1] == 2 else np.zeros((n, 2))), np.zeros(n, bool), wrong, arr.dtype
    if arr.ndim == 2:  # rows of Python objects: read them one row each, like a list column
        arr = np.fromiter(arr, dtype=object, count=n)
    arr = np.fromiter(map(_text_pair, arr), dtype=object, count=n)
    missing = _is_none(arr)
    try:
        lengths = np.fromiter(map(len, arr[~missing]), np.int64, int((~missing).sum()))
    except TypeError:
        i = _first_unreadable(arr, len)
        raise DataError(f"holds {_show(arr[i])} where an [x, y] pair is expected", file=source,
                        row=first_row + i, column=column,
                        hint="map separate x and y columns to LEFT_X/LEFT_Y or RIGHT_X/RIGHT_Y") from None
    good = ~missing
    good[good] = lengths == 2
    values = np.zeros((n, 2))
    dtype = np.dtype(np.float64)
    if good.any():
        try:
            flat = np.concatenate(arr[good])  # a struct ({"x", "y"}) has a length but no order
            dtype = flat.dtype
            if dtype == object:  # lists with a None inside: flagged as non-finite below
                flat = np.where(_is_none(flat), np.nan, flat)
            values[good] = flat.astype(np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            i = _first_unreadable(arr, lambda v: np.asarray(v, dtype=np.float64))
            if isinstance(arr[i], Mapping):
                raise DataError(f"holds a struct {_show(arr[i])} where an [x, y] list is expected", file=source,
                                row=first_row + i, column=column,
                                hint="store the stick as an [x, y] list, or x and y in columns mapped to "
                                     "LEFT_X/LEFT_Y or RIGHT_X/RIGHT_Y") from None
            raise DataError(f"[x, y] value {_show(arr[i])} is not two numbers", file=source, row=first_row + i,
                            column=column, hint="ignore the column with null in `mapping`") from None
    return values, missing, ~good & ~missing, dtype


@dataclass
class _Decoded:
    """One column's contribution (n, len(slots)), 0 on bad rows, and its problems in check order."""

    values: np.ndarray
    problems: list[tuple[np.ndarray, str, str]]  # (rows, what is wrong with {value}, hint)

    @property
    def bad(self) -> np.ndarray:
        return np.logical_or.reduce([rows for rows, _, _ in self.problems])


# ------------------------------------------------------------------------------------ binding
class ColumnBinding:
    """How one file's columns fill the layout's slots; ``convert`` applies it to the data."""

    def __init__(self, layout: ActionLayout, profile: ConsoleProfile, targets: _Targets, slot_mask: np.ndarray,
                 stick_ranges: dict[str, str], analog_deadzone: float, trigger_threshold: float):
        self.layout = layout
        self.profile = profile
        self.columns = list(targets)
        self.slot_mask = slot_mask  # (action_dim,) bool: where the loss applies
        self.stick_ranges = stick_ranges  # column -> range name; "auto" columns appear after convert
        self.given_ranges = set(stick_ranges)  # the user's, as opposed to detected
        self.centred_columns: set[str] = set()  # detected signed, holding only 0: centred in any range
        self.trigger_scales: dict[str, float] = {}  # analog trigger column -> 1 or 255, as the dataset decided
        self.analog_deadzone = analog_deadzone
        self.trigger_threshold = trigger_threshold
        self._targets = targets
        self._neutral = np.zeros(layout.action_dim, np.float32)
        self._neutral[layout.stick_slice] = 0.5

    def readings(self) -> dict[str, str]:
        """What each bound column drives, as "SOUTH" or "-LEFT_Y" (a trigger read as analog or not alike)."""
        return {column: replace(target, analog=False).label() for column, (target, _) in self._targets.items()}

    def describe(self) -> str:
        parts = []
        for column, (target, _) in self._targets.items():
            text = f"{column!r}->{target.label()}"
            if target.kind in ("axis", "pair"):
                text += f" [{self.stick_ranges.get(column, 'auto')}]"
            parts.append(text)
        return (f"profile {self.profile.name}: {', '.join(parts)}; "
                f"loss on {int(self.slot_mask.sum())}/{self.layout.action_dim} slots")

    def convert(self, data: Mapping[str, Union[np.ndarray, list]], source: str, first_row: int = 0,
                skip_bad_rows: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the bound columns -> (float32 (N, action_dim) model-space actions, bool (N,) bad rows).

        A bad row raises a DataError for the first one, or with ``skip_bad_rows`` becomes a neutral
        vector (buttons 0, sticks 0.5) flagged in the second array.
        """
        for column in self.columns:
            if column not in data:
                raise DataError("column is missing from the data", file=source, column=column,
                                hint="bind again for this file's columns")
        lengths = {len(data[c]) for c in self.columns}
        if len(lengths) > 1:
            raise DataError(f"the columns {self.columns} have different lengths {sorted(lengths)}", file=source)
        n = lengths.pop()
        actions = np.zeros((n, self.layout.action_dim), np.float32)  # sticks in [-1, 1] until the end
        bad = np.zeros(n, bool)
        first = None  # (row, column, message, hint) of the earliest bad row
        for column, (target, slots) in self._targets.items():
            decoded = self._decode(column, target, data[column], source, first_row)
            if target.kind == "button":
                np.maximum(actions[:, slots[0]], decoded.values[:, 0], out=actions[:, slots[0]])
            else:
                actions[:, list(slots)] += decoded.values
            column_bad = decoded.bad
            bad |= column_bad
            if not skip_bad_rows and column_bad.any():
                row = int(np.argmax(column_bad))
                if first is None or row < first[0]:
                    what, hint = next((w, h) for rows, w, h in decoded.problems if rows[row])
                    first = (row, column, what.format(value=_show(data[column][row])), hint)
        if first is not None:
            row, column, what, hint = first
            raise DataError(what, file=source, row=first_row + row, column=column, hint=hint)
        self._check_axes_agree(source)
        sticks = self.layout.stick_slice
        actions[:, sticks] = (np.clip(actions[:, sticks], -1.0, 1.0) + 1.0) / 2.0
        actions[bad] = self._neutral
        return actions, bad

    @property
    def analog_trigger_columns(self) -> list[str]:
        return [column for column, (target, _) in self._targets.items() if target.kind == "button" and target.analog]

    def trigger_scale_shown(self, data: Mapping[str, Union[np.ndarray, list]], source: str
                            ) -> dict[str, tuple[str, Optional[float]]]:
        """Each numeric analog trigger column's slot and the scale this file's values show: 1 or
        255 (``_trigger_scale``), or None when they are only 0 and 1. A true/false column is a
        digital trigger: it is left out, says nothing of the others' scale and reads as 0/1."""
        shown = {}
        for column in self.analog_trigger_columns:
            values, missing, unreadable, dtype = _numbers(data[column], column, source)
            if not _is_boolean(np.asarray(data[column]), dtype):
                target, _ = self._targets[column]
                shown[column] = (target.label(), _trigger_scale(values[~missing & ~unreadable & np.isfinite(values)]))
        return shown

    def agree(self, column: str, other_range: str) -> bool:
        """Whether ``column`` reads as ``other_range`` or, holding only 0s, centred as it would there."""
        name = self.stick_ranges.get(column)
        return name == other_range or (column in self.centred_columns and other_range in _SIGNED_RANGES)

    def _check_axes_agree(self, source: str) -> None:
        """The x and y columns of one stick read alike: a 0..1 stick held at 0 on one axis would
        otherwise read as -1..1 there, and centred."""
        by_axis = {target.slots[0]: column for column, (target, _) in self._targets.items() if target.kind == "axis"}
        for side in STICK_SIDES:
            pair = [by_axis.get(f"{side}_X"), by_axis.get(f"{side}_Y")]
            if None in pair:
                continue
            (x, y), (x_range, y_range) = pair, [self.stick_ranges.get(c) for c in pair]
            if all(c in self.given_ranges for c in pair):
                if x_range != y_range:
                    raise DataError(f"stick_range gives the {side.lower()} stick's columns two ranges: {x!r} "
                                    f"{x_range}, {y!r} {y_range}", file=source,
                                    hint="one stick's x and y are written alike: give both the range the recorder "
                                         "wrote")
                continue
            if not (x_range and y_range) or self.agree(x, y_range) or self.agree(y, x_range):
                continue
            if x_range != y_range:
                raise DataError(f"the {side.lower()} stick's columns read as two ranges: {x!r} as {x_range}, "
                                f"{y!r} as {y_range}", file=source,
                                hint=f"set stick_range for both to the range the recorder wrote, "
                                     f"e.g. {{{x}: {x_range}, {y}: {x_range}}}; ranges: {', '.join(STICK_RANGES)}")

    def _decode(self, column: str, target: _Target, raw, source: str, first_row: int) -> _Decoded:
        if target.kind == "pair":
            return self._decode_stick(column, target, *_pairs(raw, column, source, first_row), source)
        values, missing, unreadable, dtype = _numbers(raw if target.kind == "axis" else _button_words(raw), column,
                                                      source)
        if target.kind == "axis":
            decoded = self._decode_stick(column, target, values[:, None], missing | unreadable,
                                         np.zeros(len(values), bool), dtype, source)
            hint = f"a stick axis holds numbers; map an [x, y] column to LEFT or RIGHT, or {_SKIP}"
        else:
            decoded = self._decode_button(target, values, missing | unreadable, self.trigger_scales.get(column))
            hint = _HINT_TRIGGER if target.analog else _HINT_BUTTON
        decoded.problems.insert(0, (unreadable, "{value} is not a number", hint))
        return decoded

    def _decode_button(self, target: _Target, values: np.ndarray, missing: np.ndarray,
                       trigger_scale: Optional[float] = None) -> _Decoded:
        infinite = ~np.isfinite(values)
        valid = ~missing & ~infinite
        if target.analog:
            # Normalised to 0..1: whole numbers 0..255 when they exceed 1 (here, or in the
            # dataset's other files: ``trigger_scales``), else as they are.
            scale = trigger_scale or _trigger_scale(values[valid]) or 1.0
            wrong = valid & ((values < 0) | (values > scale) | ((scale > 1) & (values != np.round(values))))
            pressed = values / scale > self.trigger_threshold
            check = ("trigger value {value} is neither in 0..1 nor a whole number in 0..255", _HINT_TRIGGER)
        else:
            wrong = valid & (values != 0) & (values != 1)
            pressed = values == 1
            check = ("button value {value} is not 0/1 or true/false", _HINT_BUTTON)
        not_a_number = ~missing & np.isnan(values)  # a CSV's empty cell in a column of numbers
        problems = [(missing, "missing value (null)", _HINT_NULL),
                    (not_a_number, "missing value (NaN or an empty cell)", _HINT_NULL),
                    (infinite & ~not_a_number, "value {value} is infinite", _HINT_NULL), (wrong, *check)]
        ok = valid & ~wrong
        return _Decoded(np.where(ok & pressed, target.factor, 0.0)[:, None], problems)

    def _decode_stick(self, column: str, target: _Target, values: np.ndarray, missing: np.ndarray,
                      wrong_shape: np.ndarray, dtype: np.dtype, source: str) -> _Decoded:
        infinite = ~missing & ~wrong_shape & ~np.isfinite(values).all(axis=1)
        valid = ~missing & ~wrong_shape & ~infinite
        name = self.stick_ranges.get(column)
        if name is None and valid.any():
            name = detect_stick_range(values[valid].ravel(), dtype, self.profile.stick_range)
            if name is None:
                raise DataError(f"the stick range of this column cannot be told from its values "
                                f"({_value_summary(values[valid].ravel())}): no resting value stands out",
                                file=source, column=column,
                                hint=f"set stick_range for this column, e.g. {{{column}: float_pm1}}; "
                                     f"ranges: {', '.join(STICK_RANGES)}")
            self.stick_ranges[column] = name
            if name in _SIGNED_RANGES and not np.any(values[valid]):
                self.centred_columns.add(column)
        stick_range = STICK_RANGES[name or "float_pm1"]  # no valid row to detect from: every row is bad
        unit, outside = stick_range.to_unit(np.where(valid[:, None], values, stick_range.center))
        outside = outside.any(axis=1)
        unit = np.where(np.abs(unit) < self.analog_deadzone, 0.0, unit) * target.factor
        problems = [(missing, "missing value (null)", _HINT_NULL),
                    (wrong_shape, "expected [x, y], got {value}", _HINT_PAIR),
                    (infinite, "stick value {value} is not a finite number", _HINT_NULL),
                    (outside, f"stick value {{value}} is outside {stick_range.describe()}", _HINT_RANGE)]
        unit[~valid | outside] = 0.0
        return _Decoded(unit, problems)


# ---------------------------------------------------------------------------------- processor
def _array(values) -> Array:
    """A tensor as it is; anything else (a list, an array) as a numpy array of numbers."""
    return values if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float32)


def _concat(parts: list[Array]) -> Array:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat([p.to(torch.float32) for p in parts], dim=-1)
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=-1)


def checked_profile(profile: Union[str, ConsoleProfile]) -> Union[str, ConsoleProfile]:
    """A profile name in lower case, known to ``PROFILES`` or "auto"; a ``ConsoleProfile`` as given."""
    if not isinstance(profile, str):
        return profile
    if profile.lower() != "auto" and profile.lower() not in PROFILES:
        raise DataError(f"unknown console profile {profile.lower()!r}", hint=f"use auto or one of {', '.join(PROFILES)}")
    return profile.lower()


def checked_stick_range(stick_range: Union[str, Mapping[str, str]]) -> Union[str, dict[str, str]]:
    """A stick range name (or column -> name) in lower case, each known to ``STICK_RANGES`` or "auto"."""
    lowered = ({k: v.lower() for k, v in stick_range.items()} if isinstance(stick_range, Mapping)
               else stick_range.lower())
    for name in lowered.values() if isinstance(lowered, dict) else [lowered]:
        if name != "auto" and name not in STICK_RANGES:
            raise DataError(f"unknown stick_range {name!r}", hint=f"use auto or one of {', '.join(STICK_RANGES)}")
    return lowered


class UniversalVectorProcessor:
    """Packs gamepad state into the model's action vectors and unpacks predictions; binds
    recording columns to the layout's slots.

    ``pack``/``unpack`` work on numpy arrays and torch tensors with any leading shape (..., slots).
    ``profile`` is a name from ``PROFILES``, a ``ConsoleProfile`` or "auto" (detected per file from
    its column names). ``mapping`` (source column -> slot, "-LEFT_Y", "LEFT"/"RIGHT" or None to
    ignore) extends and overrides the profile. ``stick_range`` is "auto", one of ``STICK_RANGES``
    for every stick column, or a dict column -> range (unlisted columns: auto).
    """

    def __init__(self, layout: ActionLayout, profile: Union[str, ConsoleProfile] = "auto",
                 mapping: Optional[dict[str, Optional[str]]] = None,
                 stick_range: Union[str, Mapping[str, str]] = "auto",
                 analog_deadzone: float = 0.05, trigger_threshold: float = 0.5):
        self.layout = layout
        self.profile = checked_profile(profile)
        self.stick_range = checked_stick_range(stick_range)
        for label, value in (("analog_deadzone", analog_deadzone), ("trigger_threshold", trigger_threshold)):
            if not 0.0 <= value < 1.0:
                raise DataError(f"{label} is {value}", hint="give a value in [0, 1)")
        self.analog_deadzone = analog_deadzone
        self.trigger_threshold = trigger_threshold
        self._slot_index = {name.upper(): i for i, name in enumerate(layout.slot_names)}
        self._mapping = {key: None if target is None else self._parse_target(key, target)
                         for key, target in (mapping or {}).items()}

    # ------------------------------------------------------------------------ gamepad state
    def pack(self, buttons: Array, j_left: Array, j_right: Array) -> Array:
        """buttons (..., n_buttons) in {0, 1}; sticks (..., 2) in [-1, 1] -> (..., action_dim)."""
        buttons, j_left, j_right = (_array(values) for values in (buttons, j_left, j_right))
        if buttons.shape[-1:] != (self.layout.n_buttons,):
            raise LayoutError(f"expected {self.layout.n_buttons} buttons, got shape {tuple(buttons.shape)}")
        for name, stick in (("j_left", j_left), ("j_right", j_right)):
            if stick.shape[-1:] != (2,):
                raise LayoutError(f"{name}: [x, y] values (..., 2), got shape {tuple(stick.shape)}")
            if not ((stick >= -1) & (stick <= 1)).all():
                raise ValueError(f"{name}: stick values lie in [-1, 1]")
        sticks = [(j_left + 1) / 2, (j_right + 1) / 2]
        parts = sticks + [buttons] if self.layout.old_layout else [buttons] + sticks
        return _concat(parts)

    def unpack(self, actions: Array) -> dict[str, Array]:
        """(..., action_dim) model-space vectors -> buttons {0, 1}, sticks clipped to [-1, 1]."""
        actions = _array(actions)
        if actions.shape[-1] != self.layout.action_dim:
            raise LayoutError(f"expected {self.layout.action_dim} action values, got {actions.shape[-1]}")
        sticks = actions[..., self.layout.stick_slice] * 2 - 1
        buttons = (actions[..., self.layout.button_slice] > 0.5) * 1.0
        return {
            "j_left": sticks[..., 0:2].clip(-1, 1),
            "j_right": sticks[..., 2:4].clip(-1, 1),
            "buttons": buttons,
        }

    # ------------------------------------------------------------------------- recordings
    def bind(self, columns: Sequence[str], source: str) -> ColumnBinding:
        """Which of a file's columns fill which slots: the profile's (detected from the column
        names with "auto"), then the user's mapping on top."""
        columns = list(columns)
        groups: dict[str, list[str]] = {}
        for column in columns:
            groups.setdefault(normalize_column(column), []).append(column)

        def pick(name: str) -> str:
            # "P1 A" and "P2 A" both read as "a": player 1 (or no prefix) wins, else the lowest player.
            candidates = groups[name]
            lowest = min(column_player(c) for c in candidates)
            chosen = [c for c in candidates if column_player(c) == lowest]
            if len(chosen) > 1:
                raise DataError(f"columns {chosen} all read as {name!r}", file=source,
                                hint="map the one to use in `mapping` and the others to null")
            return chosen[0]

        mapped: dict[str, Optional[_Target]] = {}
        for key, target in self._mapping.items():
            name = normalize_column(key)
            column = key if key in groups.get(name, ()) else pick(name) if name in groups else None
            if column is not None:
                mapped[column] = target
        profile = self._resolve_profile([c for c in columns if c not in mapped], source)
        chosen: dict[str, _Target] = {}
        for name in (n for n in groups if n in profile.columns):
            column = pick(name)
            if column not in mapped:
                chosen[column] = _profile_target(profile, name)
        for column, target in mapped.items():
            if target is not None:
                analog = target.analog or normalize_column(column) in profile.analog_triggers
                chosen[column] = replace(target, analog=analog)
        if not chosen:
            unmatched = self.unmatched_mapping(columns)
            raise DataError(f"none of the columns {columns} maps to a slot (profile {profile.name})", file=source,
                            hint=f"mapping names the column {unmatched[0]!r}, which this file does not have: check "
                                 "its spelling" if unmatched else
                            f"choose a profile ({', '.join(PROFILES)}) or map columns to slots with `mapping`")
        targets = {c: (chosen[c], self._slots(c, chosen[c], profile, source)) for c in columns if c in chosen}
        self._check_one_source_per_axis(targets, source)
        ranges = {c: self._user_range(c) for c, (t, _) in targets.items() if t.kind in ("axis", "pair")}
        return ColumnBinding(self.layout, profile, targets, self._slot_mask(targets),
                             {c: r for c, r in ranges.items() if r != "auto"}, self.analog_deadzone,
                             self.trigger_threshold)

    def ignores(self, column: str) -> bool:
        """Whether ``mapping`` sends the column to null on purpose."""
        return any(target is None and normalize_column(key) == normalize_column(column)
                   for key, target in self._mapping.items())

    def unmatched_mapping(self, columns: Sequence[str]) -> list[str]:
        """The ``mapping`` keys that name none of these columns (a typo maps nothing, silently)."""
        names = {normalize_column(c) for c in columns}
        return [key for key in self._mapping if normalize_column(key) not in names]

    def unmatched_stick_ranges(self, columns: Sequence[str]) -> list[str]:
        """The per-column ``stick_range`` keys that name none of these columns."""
        names = {normalize_column(c) for c in columns}
        keys = self.stick_range if isinstance(self.stick_range, Mapping) else {}
        return [key for key in keys if normalize_column(key) not in names]

    def _slot_mask(self, targets: _Targets) -> np.ndarray:
        """The slots the file's bound columns drive: the loss applies there only. A slot without a
        column (no right stick on a NES, a column an export left out) says nothing about what the
        player did with it."""
        mask = np.zeros(self.layout.action_dim, bool)
        for _, slots in targets.values():
            mask[list(slots)] = True
        return mask

    def _parse_target(self, key: str, target: str) -> _Target:
        text = target.strip()
        flip = text.startswith("-")
        name = text.lstrip("+-").strip().upper()
        if name in STICK_SIDES and not flip:
            return _Target("pair", (f"{name}_X", f"{name}_Y"))
        if name in STICK_SLOTS:
            return _Target("axis", (name,), -1.0 if flip else 1.0)
        if name in self._slot_index and not flip:
            return _Target("button", (name,), analog=name.endswith("_TRIGGER"))
        raise DataError(f"mapping {key!r} -> {target!r}: this checkpoint's layout has no such slot",
                        hint=f"{_MAPPING_HINT}; slots: {', '.join(self.layout.slot_names)}")

    def _resolve_profile(self, columns: list[str], source: str) -> ConsoleProfile:
        if isinstance(self.profile, ConsoleProfile):
            return self.profile
        if self.profile != "auto":
            return PROFILES[self.profile]
        names = {normalize_column(c) for c in columns}
        unknown = not any(names & p.columns for p in PROFILES.values())
        if unknown and any(target is not None for target in self._mapping.values()):
            return _MAPPING_ONLY
        return detect_profile(columns, source)

    def _slots(self, column: str, target: _Target, profile: ConsoleProfile, source: str) -> tuple[int, ...]:
        missing = [s for s in target.slots if s.upper() not in self._slot_index]
        if missing:  # a profile's button that a custom layout lacks (mapping targets are checked up front)
            raise DataError(f"the {profile.name} profile maps this column to {missing[0]}, which this checkpoint's "
                            "layout has no slot for", file=source, column=column,
                            hint=f"map the column to a slot or to null in `mapping`; "
                                 f"slots: {', '.join(self.layout.slot_names)}")
        return tuple(self._slot_index[s.upper()] for s in target.slots)

    def _check_one_source_per_axis(self, targets: _Targets, source: str) -> None:
        """Two analog columns on one stick axis is a mapping mistake (stick buttons add up, by design)."""
        owner: dict[int, str] = {}
        for column, (target, slots) in targets.items():
            if target.kind not in ("axis", "pair"):
                continue
            for slot in slots:
                if slot in owner:
                    both = f"columns {owner[slot]!r} and {column!r} both drive {self.layout.slot_names[slot]}"
                    raise DataError(both, file=source, hint="map one of them to null in `mapping`")
                owner[slot] = column

    def _user_range(self, column: str) -> str:
        if not isinstance(self.stick_range, Mapping):
            return self.stick_range
        exact = self.stick_range.get(column)
        if exact is not None:
            return exact
        by_name = {normalize_column(k): v for k, v in self.stick_range.items()}
        return by_name.get(normalize_column(column), "auto")
