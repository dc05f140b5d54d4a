"""Console profiles and the column side of UniversalVectorProcessor: every expected vector here is
computed by hand, slot by slot, in the released nitrogen-v1 layout."""

from __future__ import annotations

import numpy as np
import pytest

from nitrogen_finetuner.actions import (
    PROFILES,
    STICK_RANGES,
    ActionLayout,
    UniversalVectorProcessor,
    detect_profile,
    detect_stick_range,
    normalize_column,
)
from nitrogen_finetuner.data.errors import DataError

# nitrogen-v1 slot indices, written out so that the tests do not lean on the code under test.
SLOT = {
    "BACK": 0, "DPAD_DOWN": 1, "DPAD_LEFT": 2, "DPAD_RIGHT": 3, "DPAD_UP": 4, "EAST": 5, "GUIDE": 6,
    "LEFT_SHOULDER": 7, "LEFT_THUMB": 8, "LEFT_TRIGGER": 9, "NORTH": 10, "RIGHT_BOTTOM": 11,
    "RIGHT_LEFT": 12, "RIGHT_RIGHT": 13, "RIGHT_SHOULDER": 14, "RIGHT_THUMB": 15, "RIGHT_TRIGGER": 16,
    "RIGHT_UP": 17, "SOUTH": 18, "START": 19, "WEST": 20,
    "LEFT_X": 21, "LEFT_Y": 22, "RIGHT_X": 23, "RIGHT_Y": 24,
}
LAYOUT = ActionLayout.resolve(25, old_layout=False)


def vec(**slots: float) -> np.ndarray:
    """A model-space vector: buttons 0 and sticks 0.5 unless given."""
    out = np.zeros(25, np.float32)
    out[21:] = 0.5
    for name, value in slots.items():
        out[SLOT[name]] = value
    return out


def mask(*names: str) -> np.ndarray:
    out = np.zeros(25, bool)
    out[[SLOT[n] for n in names]] = True
    return out


def objects(rows: list) -> np.ndarray:
    """What pyarrow gives for a list column: a 1-D object array of arrays (or None)."""
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = None if row is None else np.asarray(row, dtype=np.float64)
    return out


def convert(columns: dict, **processor_args):
    binding = UniversalVectorProcessor(LAYOUT, **processor_args).bind(list(columns), "rec.parquet")
    actions, bad = binding.convert(columns, "rec.parquet")
    return binding, actions, bad


# ------------------------------------------------------------------------------ column names
def test_normalize_column_drops_case_player_prefix_spaces_and_hyphens():
    assert normalize_column("P1 D-Pad Up") == "d_pad_up"
    assert normalize_column("p1_A") == "a"
    assert normalize_column("Player 2 LStick X") == "lstick_x"
    assert normalize_column("  SOUTH ") == "south"
    assert normalize_column("P1") == "p1"


@pytest.mark.parametrize("profile, columns", [
    ("nitrogen", ["south", "east", "west", "north", "left_shoulder", "right_shoulder", "left_trigger",
                  "right_trigger", "start", "back", "guide", "dpad_up", "dpad_down", "dpad_left", "dpad_right",
                  "left_thumb", "right_thumb", "j_left", "j_right"]),
    ("generic", ["SOUTH", "EAST", "left_x", "LEFT_Y"]),
    ("nes", ["P1 Up", "P1 Down", "P1 Left", "P1 Right", "P1 Select", "P1 Start", "P1 B", "P1 A"]),
    ("snes", ["P1 Up", "P1 Down", "P1 Left", "P1 Right", "P1 Select", "P1 Start", "P1 Y", "P1 B", "P1 X",
              "P1 A", "P1 L", "P1 R"]),
    ("genesis", ["P1 Up", "P1 Down", "P1 Left", "P1 Right", "P1 A", "P1 B", "P1 C", "P1 Start", "P1 X",
                 "P1 Y", "P1 Z", "P1 Mode"]),
    ("genesis", ["P1 Up", "P1 Down", "P1 Left", "P1 Right", "P1 A", "P1 B", "P1 C", "P1 Start"]),
    ("n64", ["P1 DPad U", "P1 DPad D", "P1 DPad L", "P1 DPad R", "P1 Start", "P1 Z", "P1 B", "P1 A",
             "P1 C Up", "P1 C Down", "P1 C Left", "P1 C Right", "P1 L", "P1 R", "P1 X Axis", "P1 Y Axis"]),
    ("playstation", ["P1 Up", "P1 Down", "P1 Left", "P1 Right", "P1 Select", "P1 Start", "P1 Square",
                     "P1 Triangle", "P1 Circle", "P1 Cross", "P1 L1", "P1 R1", "P1 L2", "P1 R2", "P1 L3",
                     "P1 R3", "P1 LStick X", "P1 LStick Y", "P1 RStick X", "P1 RStick Y"]),
    ("xbox", ["A", "B", "X", "Y", "LB", "RB", "LT", "RT", "Back", "Start", "Guide", "LS", "RS", "D-Pad Up",
              "D-Pad Down", "D-Pad Left", "D-Pad Right", "Left X", "Left Y", "Right X", "Right Y"]),
    ("generic", ["left_x", "left_y"]),  # a tie with xbox's "Left X": the first in PROFILES wins
    ("switch", ["A", "B", "X", "Y", "L", "R", "ZL", "ZR", "Plus", "Minus", "Home", "Left X", "Left Y",
                "Right X", "Right Y"]),  # the sticks' names are Xbox's: the Nintendo buttons decide
])
def test_detect_profile_by_column_names(profile, columns):
    assert detect_profile(columns + ["frame", "timestamp"]).name == profile


def test_profiles_that_tie_and_read_a_column_differently_need_the_console_named():
    # A, B, Start and the d-pad: a NES, a SNES, a Genesis or an Xbox pad, whose "A" sit in three places.
    columns = ["P1 A", "P1 B", "P1 Start", "P1 Up", "P1 Down", "P1 Left", "P1 Right"]
    with pytest.raises(DataError, match=r"rec.csv: the columns fit the nes, snes, genesis, xbox profiles equally, "
                                        r"and these read 'P1 A' differently \(name the console .*data.profile"):
        detect_profile(columns, source="rec.csv")
    assert detect_profile(columns + ["P1 Select"]).name == "nes"  # nes and snes tie, and agree
    binding, actions, _ = convert({c: np.array([c == "P1 A"]) for c in columns}, profile="xbox")
    np.testing.assert_allclose(actions, vec(SOUTH=1)[None])


def test_detect_profile_fails_naming_the_columns_and_the_profiles():
    with pytest.raises(DataError, match=r"rec.csv: no console profile knows .*'frame'.*nitrogen, generic, nes"):
        detect_profile(["frame", "jump"], source="rec.csv")


def test_no_profile_expresses_the_four_right_stick_direction_buttons():
    for profile in PROFILES.values():
        assert not profile.expressed_slots & {"RIGHT_UP", "RIGHT_BOTTOM", "RIGHT_LEFT", "RIGHT_RIGHT"}


@pytest.mark.parametrize("values, dtype, console, expected", [
    ([0, 0, 100], np.int16, None, "int16"),                 # the column's type decides
    ([128, 128, 255, 0], np.int16, "uint8", "uint8"),       # unless the console's narrower range holds an int16's values
    ([0, 0, 0, 0], np.int16, "uint8", "int16"),             # (resting at 128 for an unsigned one: 0s are int16 at rest)
    ([0, 0, 200, 12], np.int16, "uint8", "int16"),
    ([0, 0, 80, -80], np.int16, "int8", "int8"),            # (a PlayStation or N64 recording widened to int16)
    ([0, 0, 300, -80], np.int16, "int8", "int16"),
    ([0, 0, 80, -80], np.int8, "int16", "int8"),            # a narrower type still decides
    ([128, 128, 255, 0], np.uint8, "int8", "uint8"),
    ([128, 128, 255, 0], np.int64, None, "uint8"),          # 0..255, neutral 128
    ([0, 0, 127, -128], np.int64, None, "int8"),
    ([0, 0, 200, -200], np.int64, None, "int16"),
    ([0.5, 0.5, 1.0, 0.0], np.float64, None, "float_01"),   # no negatives, neutral 0.5
    ([128 / 255, 128 / 255, 1.0, 0.0], np.float32, None, "float_01"),  # a byte scaled to 0..1
    ([0.5, 0.5, -1.0, 0.0], np.float64, None, "float_pm1"),
    ([0.0, 0.0, 0.3, 0.6], np.float64, None, "float_pm1"),  # no negatives but neutral 0
    ([0.0, 0.0, 1.5, -0.2], np.float64, None, "float_pm1"),  # not whole numbers: a float stick, 1.5 is bad
    # Held in one direction, no resting value: only the console's encoding can tell.
    ([1.0, 1.0, 0.5, 0.0], np.float64, None, None),
    ([1.0, 1.0, 0.5, 0.0], np.float64, "float_pm1", "float_pm1"),
    ([0.5, 0.5, 1.0, 0.0], np.float64, "uint8", "float_01"),  # an integer encoding says nothing of floats
    ([0, 0, 0, 128, 255], np.int64, None, None),
    ([0, 0, 0, 128, 255], np.int64, "uint8", "uint8"),
    ([127, 127, 0, 60], np.int64, "int8", "int8"),
    ([0, 0, 120], np.int64, "int16", "int16"),
    ([0, 40000], np.int64, "uint8", "int16"),  # beyond the console's range: detected (and 40000 is bad)
])
def test_auto_stick_range_rules(values, dtype, console, expected):
    values = np.array(values, dtype=dtype)
    assert detect_stick_range(values.astype(np.float64), values.dtype, console) == expected


def test_every_profile_names_a_known_stick_range():
    assert {p.stick_range for p in PROFILES.values()} - {None} <= set(STICK_RANGES)


# --------------------------------------------------------------------------------- consoles
def test_nes_recording_maps_to_universal_slots_and_masks_what_a_nes_lacks():
    names = ["P1 A", "P1 B", "P1 Select", "P1 Start", "P1 Up", "P1 Down", "P1 Left", "P1 Right"]
    rows = [  # A, B, Select, Start, Up, Down, Left, Right
        [1, 0, 0, 0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 1, 1, 0],
    ]
    table = np.array(rows)
    columns = {name: table[:, j].astype(bool) for j, name in enumerate(names)}
    columns["P1 Start"] = table[:, 3].astype(np.int64)  # 0/1 integers are buttons too
    binding, actions, bad = convert(columns)
    assert binding.profile.name == "nes" and binding.columns == names
    expected = [vec(EAST=1, DPAD_UP=1), vec(SOUTH=1, BACK=1, DPAD_RIGHT=1), vec(),
                vec(START=1, DPAD_DOWN=1, DPAD_LEFT=1)]
    np.testing.assert_array_equal(actions, np.stack(expected))
    assert actions.dtype == np.float32 and not bad.any()
    np.testing.assert_array_equal(
        binding.slot_mask, mask("EAST", "SOUTH", "BACK", "START", "DPAD_UP", "DPAD_DOWN", "DPAD_LEFT", "DPAD_RIGHT"))
    assert "profile nes" in binding.describe() and "'P1 A'->EAST" in binding.describe()


def test_xbox_int16_sticks_flip_y_apply_the_deadzone_and_threshold_analog_triggers():
    columns = {
        "A": np.array([False, False, True]),
        "LT": np.array([255, 127, 128], np.uint8),      # 0..255: pressed above 127.5
        "RT": np.array([0.7, 0.51, 0.5]),                # 0..1: pressed above 0.5
        "Left X": np.array([32767, 1000, 0], np.int16),
        "Left Y": np.array([32767, -16384, 0], np.int16),  # +y is up on an Xbox pad
        "Right X": np.array([-32768, 1638, 0], np.int16),
        "Right Y": np.array([0, 1639, 0], np.int16),
    }
    binding, actions, _ = convert(columns)
    assert binding.profile.name == "xbox"
    assert binding.stick_ranges == {c: "int16" for c in ("Left X", "Left Y", "Right X", "Right Y")}
    expected = [
        # x 1 -> 1; y +1 (up) -> -1 -> 0; -32768/32767 clips to -1 -> 0
        vec(LEFT_TRIGGER=1, RIGHT_TRIGGER=1, LEFT_X=1.0, LEFT_Y=0.0, RIGHT_X=0.0, RIGHT_Y=0.5),
        # 1000/32767 = 0.031 and 1638/32767 = 0.04999 are inside the 0.05 deadzone; 1639/32767 = 0.05002 is not
        vec(RIGHT_TRIGGER=1, LEFT_X=0.5, LEFT_Y=(16384 / 32767 + 1) / 2, RIGHT_X=0.5, RIGHT_Y=(-1639 / 32767 + 1) / 2),
        vec(SOUTH=1, LEFT_TRIGGER=1),
    ]
    np.testing.assert_allclose(actions, np.stack(expected), atol=1e-6)
    np.testing.assert_array_equal(binding.slot_mask, mask(
        "SOUTH", "LEFT_TRIGGER", "RIGHT_TRIGGER", "LEFT_X", "LEFT_Y", "RIGHT_X", "RIGHT_Y"))
    # Plain int64 columns (a CSV) land on int16 by their values; a higher threshold releases LT=128.
    wide = {k: (v.astype(np.int64) if v.dtype == np.int16 else v) for k, v in columns.items()}
    binding, again, _ = convert(wide, trigger_threshold=0.6)
    assert binding.stick_ranges["Left X"] == "int16"
    released = np.stack([vec(LEFT_TRIGGER=1, RIGHT_TRIGGER=1), vec(), vec(SOUTH=1)])
    np.testing.assert_allclose(again[:, :21], released[:, :21])
    np.testing.assert_allclose(again[:, 21:], actions[:, 21:])


def test_nitrogen_pairs_detect_float_01_against_float_pm1():
    buttons = ["south", "east", "west", "north", "left_shoulder", "right_shoulder", "left_trigger", "right_trigger",
               "start", "back", "guide", "dpad_up", "dpad_down", "dpad_left", "dpad_right", "left_thumb", "right_thumb"]
    n = len(buttons)
    columns = {name: np.arange(n) == i for i, name in enumerate(buttons)}  # row i presses button i
    left = [[-1.0, 0.5], [0.02, -0.5]] + [[0.0, 0.0]] * (n - 2)   # has negatives: [-1, 1]
    right = [[0.5, 0.5], [1.0, 0.25]] + [[0.5, 0.5]] * (n - 2)    # no negatives, mostly 0.5: [0, 1]
    columns["j_left"], columns["j_right"] = objects(left), objects(right)
    binding, actions, _ = convert(columns)
    assert binding.profile.name == "nitrogen"
    assert binding.stick_ranges == {"j_left": "float_pm1", "j_right": "float_01"}
    for i, name in enumerate(buttons):
        assert actions[i, :21].tolist() == vec(**{name.upper(): 1})[:21].tolist()
    np.testing.assert_allclose(actions[0, 21:], [0.0, 0.75, 0.5, 0.5])
    np.testing.assert_allclose(actions[1, 21:], [0.5, 0.25, 1.0, 0.25])  # 0.02 is in the deadzone
    np.testing.assert_allclose(actions[2:, 21:], 0.5)
    # NitroGen's own format trains every slot it has a column for; no source has RIGHT_UP & co.
    np.testing.assert_array_equal(binding.slot_mask, ~mask("RIGHT_UP", "RIGHT_BOTTOM", "RIGHT_LEFT", "RIGHT_RIGHT"))
    # The same data as a 2-D float array and as Python lists; an explicit range wins over auto.
    columns["j_left"], columns["j_right"] = np.array(left), right
    binding, again, _ = convert(columns, stick_range={"j_right": "float_pm1"})
    np.testing.assert_allclose(again[:, 21:23], actions[:, 21:23])
    np.testing.assert_allclose(again[0, 23:], [0.75, 0.75])


def test_columns_a_nitrogen_file_leaves_out_stay_out_of_the_loss():
    # An export without j_right and guide says nothing about them: training them as released and
    # centred would teach the model to leave them alone.
    columns = {"south": np.array([True, False]), "east": np.array([False, True]),
               "j_left": objects([[0.5, 0.0], [0.0, 0.0]])}
    binding, actions, _ = convert(columns, profile="nitrogen")
    np.testing.assert_array_equal(binding.slot_mask, mask("SOUTH", "EAST", "LEFT_X", "LEFT_Y"))
    np.testing.assert_allclose(actions, np.stack([vec(SOUTH=1, LEFT_X=0.75), vec(EAST=1)]))


def test_pairs_written_as_text_read_like_lists():
    columns = {"south": np.array(["1", "0"], dtype=object),  # CSV cells are text
               "j_left": np.array(["[0.5, 0.0]", "[0, 1]"], dtype=object)}
    _, actions, _ = convert(columns, profile="nitrogen")
    np.testing.assert_allclose(actions, np.stack([vec(SOUTH=1, LEFT_X=0.75), vec(LEFT_Y=1.0)]))


def test_playstation_uint8_sticks_and_analog_l2_r2():
    columns = {
        "P1 Cross": np.array([True, False, False, False]),
        "P1 L2": np.array([200, 100, 0, 0], np.uint8),
        "P1 R2": np.array([0, 0, 255, 0], np.uint8),
        "P1 LStick X": np.array([0, 191, 128, 128], np.uint8),
        "P1 LStick Y": np.array([255, 128, 128, 128], np.uint8),  # y down is already positive
        "P1 RStick X": np.array([128, 128, 128, 128], np.uint8),
        "P1 RStick Y": np.array([130, 128, 128, 128], np.uint8),
    }
    expected = np.stack([
        # (0 - 128) / 127 clips to -1 -> 0; 255 -> 1; 130 -> 2/127 = 0.016 is in the deadzone
        vec(SOUTH=1, LEFT_TRIGGER=1, LEFT_X=0.0, LEFT_Y=1.0),
        vec(LEFT_X=(63 / 127 + 1) / 2),
        vec(RIGHT_TRIGGER=1),
        vec(),
    ])
    binding, actions, _ = convert(columns)
    assert binding.profile.name == "playstation" and set(binding.stick_ranges.values()) == {"uint8"}
    np.testing.assert_allclose(actions, expected, atol=1e-6)
    # int64 columns: 0..255 with 128 the most frequent value reads as uint8 too.
    binding, actions, _ = convert({k: v.astype(np.int64) for k, v in columns.items()})
    assert binding.stick_ranges["P1 LStick X"] == "uint8"
    np.testing.assert_allclose(actions, expected, atol=1e-6)


def test_n64_c_buttons_drive_the_right_stick_and_the_analog_y_flips():
    columns = {
        "P1 A": np.array([True, False, False, False]),
        "P1 Z": np.array([False, True, False, False]),
        "P1 C Up": np.array([True, False, False, False]),
        "P1 C Right": np.array([True, True, False, False]),
        "P1 C Left": np.array([False, True, False, False]),
        "P1 X Axis": np.array([127, -128, 0, 0]),
        "P1 Y Axis": np.array([127, -64, 0, 0]),   # +y is up on an N64 stick
    }
    binding, actions, _ = convert(columns)
    assert binding.profile.name == "n64" and binding.stick_ranges == {"P1 X Axis": "int8", "P1 Y Axis": "int8"}
    expected = np.stack([
        vec(SOUTH=1, LEFT_X=1.0, LEFT_Y=0.0, RIGHT_X=1.0, RIGHT_Y=0.0),  # C Up -> y -1, C Right -> x +1
        vec(LEFT_TRIGGER=1, LEFT_X=0.0, LEFT_Y=(64 / 127 + 1) / 2),        # C Left + C Right cancel
        vec(),
        vec(),
    ])
    np.testing.assert_allclose(actions, expected, atol=1e-6)
    np.testing.assert_array_equal(binding.slot_mask, mask(
        "SOUTH", "LEFT_TRIGGER", "LEFT_X", "LEFT_Y", "RIGHT_X", "RIGHT_Y"))


def test_a_gamecube_pad_reads_by_position_with_both_sticks():
    columns = {name: np.array([name == "A", name == "Z"]) for name in ("A", "B", "X", "Y", "Z", "L", "R", "Start")}
    columns.update({"Main Stick X": np.array([255, 128], np.uint8), "Main Stick Y": np.array([255, 128], np.uint8),
                    "C Stick X": np.array([128, 0], np.uint8), "C Stick Y": np.array([128, 128], np.uint8)})
    binding, actions, _ = convert(columns)
    assert binding.profile.name == "gamecube" and binding.columns == list(columns)  # not a SNES pad, sticks unread
    # Without its sticks, a pad of the same button names is another console's, as before
    snes = ["P1 Up", "P1 Down", "P1 Left", "P1 Right", "P1 Start", "P1 Y", "P1 B", "P1 X", "P1 A", "P1 L", "P1 R"]
    n64 = ["P1 A", "P1 B", "P1 Z", "P1 L", "P1 R", "P1 Start", "P1 DPad Up", "P1 DPad Down", "P1 DPad Left",
           "P1 DPad Right"]
    assert (detect_profile(snes).name, detect_profile(n64).name) == ("snes", "n64")
    np.testing.assert_allclose(actions, np.stack([vec(SOUTH=1, LEFT_X=1.0, LEFT_Y=(1 - 127 / 127) / 2),
                                                  vec(RIGHT_SHOULDER=1, RIGHT_X=0.0)]), atol=1e-6)


def test_switch_face_buttons_sit_by_position_like_the_snes():
    columns = {name: np.array([name == "A", name == "B"]) for name in ("A", "B", "X", "Y", "ZL", "ZR", "Plus", "Minus")}
    binding, actions, _ = convert(columns)
    assert binding.profile.name == "switch"
    np.testing.assert_allclose(actions, np.stack([vec(EAST=1), vec(SOUTH=1)]))


@pytest.mark.parametrize("columns, column, expected", [
    # A PlayStation stick held up most of the file: no 128 to rest at, yet the console writes uint8.
    ({"P1 Cross": [0] * 30, "P1 LStick Y": [0] * 20 + [128] * 8 + [255] * 2}, "P1 LStick Y",
     {0: -1.0, 20: 0.0, 28: 1.0}),
    # An N64 stick pushed forward (+127, up) most of the file: int8 with +y up.
    ({"P1 A": [0] * 30, "P1 Y Axis": [127] * 20 + [0] * 6 + [60] * 4}, "P1 Y Axis",
     {0: -1.0, 20: 0.0, 26: -60 / 127}),
    # An Xbox stick resting with a little drift: int16, inside the deadzone.
    ({"A": [0] * 20, "LB": [0] * 20, "Left X": [0] * 5 + [120] + [0] * 14}, "Left X", {5: 0.0}),
    # Integer columns whose values all lie in -1..1 are still the console's integers: drift, not pushes.
    ({"P1 A": [0] * 5, "P1 X Axis": [-1, 0, 0, 1, 0]}, "P1 X Axis", {0: 0.0, 3: 0.0}),
    ({"P1 Cross": [0] * 4, "P1 LStick Y": [0] * 4}, "P1 LStick Y", {0: -1.0}),  # held full up, all file long
])
def test_a_stick_held_in_one_direction_reads_in_its_consoles_encoding(columns, column, expected):
    binding, actions, _ = convert({k: np.array(v, np.int64) for k, v in columns.items()})
    slot = SLOT[binding.describe().split(f"'{column}'->")[1].split(" ")[0].lstrip("-")]
    for row, value in expected.items():
        assert actions[row, slot] * 2 - 1 == pytest.approx(value, abs=1e-6)


def test_a_stick_whose_values_cannot_tell_its_range_stops_and_asks_for_it():
    held_right = np.array([1.0] * 20 + [0.5] * 6 + [0.0] * 4)  # 0..1 or -1..1? no resting value says
    columns = {"south": np.zeros(30), "left_x": held_right}
    with pytest.raises(DataError, match=r"rec.parquet, column 'left_x': the stick range of this column cannot be "
                                        r"told from its values \(0..1, most often 1\).*stick_range"):
        convert(columns)
    _, actions, _ = convert(columns, stick_range={"left_x": "float_01"})
    assert actions[[0, 20, 26], SLOT["LEFT_X"]].tolist() == [1.0, 0.5, 0.0]
    # NitroGen's own [x, y] columns are -1..1 by definition.
    binding, _, _ = convert({"south": np.zeros(30), "j_left": objects([[v, 1.0] for v in held_right])})
    assert binding.stick_ranges == {"j_left": "float_pm1"}


def test_the_two_axes_of_one_stick_read_alike():
    columns = {"south": np.zeros(30), "left_x": np.array([0.5] * 24 + [0.7] * 6), "left_y": np.zeros(30)}
    with pytest.raises(DataError, match=r"rec.parquet: the left stick's columns read as two ranges: 'left_x' as "
                                        r"float_01, 'left_y' as float_pm1 \(set stick_range for both"):
        convert(columns)  # a 0..1 stick held full up, or a -1..1 stick at rest? left_x says 0..1
    _, actions, _ = convert(columns, stick_range="float_01")
    assert actions[0, SLOT["LEFT_Y"]] == 0.0
    with pytest.raises(DataError, match="the left stick's columns read as two ranges"):  # one given, one detected
        convert(columns, stick_range={"left_y": "float_pm1"})
    with pytest.raises(DataError, match=r"rec.parquet: stick_range gives the left stick's columns two ranges: 'left_x' "
                                        r"float_01, 'left_y' float_pm1 \(one stick's x and y are written alike"):
        convert(columns, stick_range={"left_x": "float_01", "left_y": "float_pm1"})
    # An unused axis (all 0 in a signed range) is centred whatever the other axis reads.
    columns = {"A": np.zeros(4), "LB": np.zeros(4), "Left X": np.array([0, 30000, -30000, 0]), "Left Y": np.zeros(4)}
    binding, _, _ = convert({k: v.astype(np.int64) for k, v in columns.items()}, profile="generic",
                            mapping={"A": "SOUTH", "LB": "LEFT_SHOULDER", "Left X": "LEFT_X", "Left Y": "LEFT_Y"})
    assert binding.stick_ranges == {"Left X": "int16", "Left Y": "float_pm1"}


def test_analog_triggers_under_the_universal_names():
    columns = {"south": np.zeros(3), "left_trigger": np.array([0.8, 0.2, 0.0]), "right_trigger": np.array([0, 1, 0])}
    _, actions, _ = convert(columns)
    assert actions[:, SLOT["LEFT_TRIGGER"]].tolist() == [1.0, 0.0, 0.0]
    assert actions[:, SLOT["RIGHT_TRIGGER"]].tolist() == [0.0, 1.0, 0.0]


def test_old_layout_puts_the_sticks_first():
    layout = ActionLayout.resolve(25, old_layout=True)
    columns = {"south": np.array([True]), "back": np.array([True]), "j_left": objects([[1.0, -1.0]])}
    binding = UniversalVectorProcessor(layout).bind(list(columns), "old.parquet")
    actions, _ = binding.convert(columns, "old.parquet")
    expected = np.zeros(25, np.float32)
    expected[:4] = [1.0, 0.0, 0.5, 0.5]
    expected[4 + SLOT["BACK"]] = expected[4 + SLOT["SOUTH"]] = 1.0
    np.testing.assert_array_equal(actions[0], expected)


# ---------------------------------------------------------------------------------- mapping
def test_user_mapping_extends_and_overrides_the_profile():
    columns = {
        "P1 A": np.array([True, False]),
        "P1 B": np.array([True, True]),
        "P1 Start": np.array([False, True]),
        "P2 A": np.array([False, True]),           # player 1 wins "a"; player 2 is ignored
        "Turbo": np.array([False, True]),
        "Wheel": np.array([0.5, -0.25]),
    }
    mapping = {"P1 A": "SOUTH", "p1_b": None, "Turbo": "west", "Wheel": "-LEFT_X"}
    binding, actions, _ = convert(columns, mapping=mapping, profile="nes")  # "a", "start": any pad's
    assert binding.profile.name == "nes" and binding.columns == ["P1 A", "P1 Start", "Turbo", "Wheel"]
    np.testing.assert_allclose(actions, np.stack([
        vec(SOUTH=1, LEFT_X=0.25),
        vec(START=1, WEST=1, LEFT_X=0.625),
    ]))
    np.testing.assert_array_equal(binding.slot_mask, mask("SOUTH", "START", "WEST", "LEFT_X"))


def test_mapping_alone_when_no_profile_knows_the_columns():
    columns = {"jump": np.array([1, 0]), "move": objects([[0.5, 1.0], [0.0, 0.0]]), "frame": np.array([0, 1])}
    binding, actions, _ = convert(columns, mapping={"jump": "SOUTH", "move": "RIGHT"})
    assert binding.profile.name == "custom" and binding.columns == ["jump", "move"]
    np.testing.assert_allclose(actions, np.stack([vec(SOUTH=1, RIGHT_X=0.75, RIGHT_Y=1.0), vec()]))
    np.testing.assert_array_equal(binding.slot_mask, mask("SOUTH", "RIGHT_X", "RIGHT_Y"))


def test_mapping_to_a_slot_the_layout_lacks_is_refused():
    with pytest.raises(DataError, match=r"mapping 'Jump' -> 'JUMP'.*no such slot.*SOUTH"):
        UniversalVectorProcessor(LAYOUT, mapping={"Jump": "JUMP"})
    with pytest.raises(DataError, match="no such slot"):
        UniversalVectorProcessor(LAYOUT, mapping={"Jump": "-SOUTH"})  # only stick axes flip
    custom = ActionLayout.resolve(9, old_layout=False, buttons=["A", "B", "SELECT", "START", "UP"])
    with pytest.raises(DataError, match=r"nes.csv, column 'P1 A': the nes profile maps this column to EAST"):
        UniversalVectorProcessor(custom, profile="nes").bind(["P1 A", "P1 Up"], "nes.csv")
    binding = UniversalVectorProcessor(custom, profile="nes", mapping={"P1 A": "A", "P1 Up": "up"}).bind(
        ["P1 A", "P1 Up"], "nes.csv")
    actions, _ = binding.convert({"P1 A": np.array([True]), "P1 Up": np.array([True])}, "nes.csv")
    np.testing.assert_array_equal(actions[0], [1, 0, 0, 0, 1, 0.5, 0.5, 0.5, 0.5])


def test_binding_errors_name_the_file_and_what_to_do():
    processor = UniversalVectorProcessor(LAYOUT, profile="nes")
    with pytest.raises(DataError, match=r"rec.csv: none of the columns \['frame'\] maps to a slot.*mapping"):
        processor.bind(["frame"], "rec.csv")
    with pytest.raises(DataError, match=r"rec.csv: columns \['A', 'a'\] all read as 'a'"):
        processor.bind(["A", "a"], "rec.csv")
    with pytest.raises(DataError, match=r"columns 'Left X' and 'lx' both drive LEFT_X"):
        UniversalVectorProcessor(LAYOUT).bind(["A", "LB", "Left X", "lx"], "rec.csv")
    with pytest.raises(DataError, match="unknown console profile"):
        UniversalVectorProcessor(LAYOUT, profile="atari")
    with pytest.raises(DataError, match="unknown stick_range"):
        UniversalVectorProcessor(LAYOUT, stick_range="int32")


# ------------------------------------------------------------------------------- bad values
GOOD = {"A": np.array([True] * 4), "LT": np.array([0, 10, 255, 0]), "Left X": np.array([0.0, 0.5, -1.0, 1.0005]),
        "j_right": objects([[0.0, 0.0]] * 4)}
BAD_CASES = [
    ("A", np.array([True, None, False, True], dtype=object), 1, "missing value"),
    ("A", np.array([1.0, 0.0, np.inf, 1.0]), 2, "value inf is infinite"),
    ("A", np.array([1.0, np.nan, 0.0, 1.0]), 1, r"missing value \(NaN or an empty cell\)"),
    ("A", np.array([0, 1, 2, 1]), 2, "button value 2 is not 0/1"),
    ("LT", np.array([0, 300, 255, 0]), 1, "trigger value 300"),
    ("LT", np.array([0, 2.5, 255, 0]), 1, "trigger value 2.5"),
    ("Left X", np.array([0.0, np.nan, 0.0, 0.0]), 1, "is not a finite number"),
    ("Left X", np.array([0.0, 0.0, 0.0, -1.01]), 3, "-1.01 is outside the float_pm1"),
    ("j_right", objects([[0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), 1, r"expected \[x, y\]"),
    ("j_right", objects([[0.0, 0.0], [0.0, 0.0], None, [0.0, 0.0]]), 2, "missing value"),
    ("j_right", objects([[0.0, np.nan], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), 0, "is not a finite number"),
]


@pytest.mark.parametrize("column, values, row, what", BAD_CASES)
def test_each_bad_value_raises_naming_file_row_and_column(column, values, row, what):
    data = {**GOOD, column: values}
    processor = UniversalVectorProcessor(LAYOUT, profile="xbox", mapping={"j_right": "RIGHT"})
    binding = processor.bind(list(data), "f.parquet")
    with pytest.raises(DataError, match=rf"^f.parquet, row {100 + row}, column '{column}': .*{what}.*\(.+\)$"):
        binding.convert(data, "f.parquet", first_row=100)
    actions, bad = binding.convert(data, "f.parquet", first_row=100, skip_bad_rows=True)
    assert bad.tolist() == [i == row for i in range(4)]
    np.testing.assert_array_equal(actions[row], vec())


def test_int_ranges_refuse_values_outside_them_or_between_integers():
    data = {"A": np.array([True, True, True]), "LB": np.array([0, 0, 0]), "Left X": np.array([0.0, 200.0, 3.5])}
    binding = UniversalVectorProcessor(LAYOUT, stick_range="int8").bind(list(data), "f.csv")
    with pytest.raises(DataError, match=r"f.csv, row 1, column 'Left X': stick value 200.0 is outside the int8"):
        binding.convert(data, "f.csv")
    _, bad = binding.convert(data, "f.csv", skip_bad_rows=True)
    assert bad.tolist() == [False, True, True]


def test_the_first_bad_row_across_columns_is_reported_and_all_are_counted():
    data = {"A": np.array([1, 1, 1, 5, 1]), "B": np.array([1, 7, 1, 1, 1]), "X": np.array([True] * 5)}
    binding = UniversalVectorProcessor(LAYOUT, profile="snes").bind(list(data), "f.csv")
    with pytest.raises(DataError, match=r"f.csv, row 1, column 'B'"):
        binding.convert(data, "f.csv")
    actions, bad = binding.convert(data, "f.csv", skip_bad_rows=True)
    assert int(bad.sum()) == 2 and bad.tolist() == [False, True, False, True, False]
    np.testing.assert_array_equal(actions[0], vec(SOUTH=1, EAST=1, NORTH=1))
    np.testing.assert_array_equal(actions[3], vec())
