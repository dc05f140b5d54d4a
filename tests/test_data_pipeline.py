"""The data pipeline on every source kind: episodes, alignment, padding, images, loading."""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from nitrogen_finetuner.actions.layout import ActionLayout
from nitrogen_finetuner.data.config import DataConfig
from nitrogen_finetuner.data.episodes import split_episodes
from nitrogen_finetuner.data.errors import DataError
from nitrogen_finetuner.data.images import FrameTransform, ImageDecodeError, decode_image
from nitrogen_finetuner.data.loader import make_loader
from nitrogen_finetuner.data.pipeline import ModelInputs, prepare_data
from nitrogen_finetuner.data.sources import _datasets_sources
from nitrogen_finetuner.model.vision import fit_square
from nitrogen_finetuner.training import batches as training_batches
from nitrogen_finetuner.training.checkpoints import Progress
from recordings import frame, frame_index, image_structs, nitrogen_rows, png_bytes, write_frames_folder, write_nitrogen_parquet

LAYOUT = ActionLayout.resolve(25, old_layout=False)
SOUTH = LAYOUT.slot_names.index("SOUTH")
LEFT_X = LAYOUT.slot_names.index("LEFT_X")
MODEL = ModelInputs(layout=LAYOUT, horizon=4, action_shift=2, image_size=32)


def prepared(path, **config):
    return prepare_data(DataConfig(dataset_name=str(path), analog_deadzone=0.0, **config), MODEL)


def unbatch(batches):
    for batch in batches:
        for i in range(len(batch["actions"])):
            yield {k: v[i] for k, v in batch.items() if k != "skipped_bad_frames"}  # a count per batch


def all_windows(data, **kwargs):
    return list(unbatch(data.dataset(batch_size=1, shuffle=False, **kwargs)))


def check_alignment(window):
    """Frame t predicts rows t+2 .. t+5: SOUTH on even rows, left x = row / 100."""
    t = frame_index(window["image"])
    for h in range(4):
        row = t + 2 + h
        if window["actions_mask"][h].any():
            assert window["actions"][h, SOUTH] == (1.0 if row % 2 == 0 else 0.0)
            assert window["actions"][h, LEFT_X] == pytest.approx((row / 100 + 1) / 2, abs=1e-6)
    return t


def test_parquet_file_is_one_episode_with_aligned_padded_windows(tmp_path):
    data = prepared(write_nitrogen_parquet(tmp_path / "run.parquet", n=10))
    assert len(data.index.episodes) == 1 and data.index.num_frames == 10
    windows = all_windows(data)
    # frames 0..7 have at least one action row after them (t + 2 < 10); 8 and 9 do not
    assert [check_alignment(w) for w in windows] == list(range(8))
    last = windows[-1]  # frame 7 -> rows 9, 10, 11, 12: one real row, three padded
    assert last["actions_mask"][:, SOUTH].tolist() == [True, False, False, False]
    np.testing.assert_array_equal(last["actions"][1:, :21], 0.0)
    np.testing.assert_array_equal(last["actions"][1:, 21:], 0.5)
    # the four right-stick direction buttons have no column in any source: masked everywhere
    for name in ("RIGHT_UP", "RIGHT_BOTTOM", "RIGHT_LEFT", "RIGHT_RIGHT"):
        assert not last["actions_mask"][:, LAYOUT.slot_names.index(name)].any()
    assert windows[0]["image"].shape == (32, 32, 3) and windows[0]["image"].dtype == np.uint8


def test_folder_of_parquet_files_gives_one_episode_per_file_and_windows_never_cross(tmp_path):
    write_nitrogen_parquet(tmp_path / "data" / "a.parquet", n=6, start=0)
    write_nitrogen_parquet(tmp_path / "data" / "b.parquet", n=6, start=50)
    data = prepared(tmp_path / "data")
    assert [len(e) for e in data.index.episodes] == [6, 6]
    frames = sorted(check_alignment(w) for w in all_windows(data))
    assert frames == [0, 1, 2, 3, 50, 51, 52, 53]


def test_a_folder_reads_each_recording_once_through_links_and_loops_and_leaves_hidden_files_out(tmp_path):
    root = tmp_path / "data"
    write_nitrogen_parquet(root / "real" / "a.parquet", n=6, start=0)
    write_nitrogen_parquet(root / "real" / "b.parquet", n=6, start=50)
    (root / "all_games").symlink_to("real")  # the same recordings by a second name
    (root / "real" / "up").symlink_to("..")  # a loop
    (root / "b_again.parquet").symlink_to(root / "real" / "b.parquet")
    write_nitrogen_parquet(root / ".cache" / "copy.parquet", n=6)
    (root / "real" / "._a.parquet").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "a_first").mkdir()
    (root / "a_first" / "link").symlink_to("../real")  # walked before real/ by name: still read as real/
    data = prepared(root)
    assert [e.name for e in data.index.episodes] == [str(root / "real" / "a.parquet"), str(root / "real" / "b.parquet")]


def test_a_button_written_as_the_words_true_and_false_reads_as_presses(tmp_path):
    south = ["True", "false", "TRUE", " false ", "1", "0"]  # as a spreadsheet or a JSON export writes them
    rows = {**nitrogen_rows(6), "south": pa.array(south, pa.string())}
    pq.write_table(pa.table({"image": image_structs(6), **rows}), tmp_path / "run.parquet")
    actions = prepared(tmp_path / "run.parquet").index.episodes[0].actions
    assert actions[:, SOUTH].tolist() == [1, 0, 1, 0, 1, 0]


def test_rows_read_in_file_order_that_run_back_in_time_are_refused(tmp_path):
    order = [5, 2, 0, 3, 1, 4]  # shuffled rows with a timestamp and no frame_index
    table = pa.table({"image": image_structs(6), **nitrogen_rows(6), "timestamp": [0.1 * i for i in range(6)]})
    pq.write_table(table.take(order), tmp_path / "shuffled.parquet")
    with pytest.raises(DataError, match=r"row 1, column 'timestamp': the rows are not in time order.*"
                                        r"set data.frame_column: timestamp"):
        prepared(tmp_path / "shuffled.parquet")
    ordered = prepared(tmp_path / "shuffled.parquet", frame_column="timestamp").index.episodes[0]
    assert list(ordered.rows) == [2, 4, 1, 3, 5, 0]  # the fix the hint gives reads them in time order
    assert len(prepared(tmp_path / "shuffled.parquet", frame_column="none").index.episodes[0]) == 6
    pq.write_table(table, tmp_path / "ordered.parquet")  # in order already: read as it is
    assert list(prepared(tmp_path / "ordered.parquet").index.episodes[0].rows) == [0, 1, 2, 3, 4, 5]


def test_a_recording_whose_rows_are_not_together_is_refused_where_rows_are_read_in_file_order(tmp_path):
    ids = [0, 0, 0, 1, 1, 1, 0, 0, 2, 2]  # recording 0 goes on after recording 1: a shuffled table, say
    table = pa.table({"image": image_structs(10), **nitrogen_rows(10), "episode_id": ids})
    pq.write_table(table, tmp_path / "mixed.parquet")
    with pytest.raises(DataError, match=r"row 6, column 'episode_id': the rows of episode 0 are not together.*"
                                        r"set data.frame_column: none \(--frame-column none\)"):
        prepared(tmp_path / "mixed.parquet")
    apart = prepared(tmp_path / "mixed.parquet", frame_column="none").index.episodes  # the user says file order
    assert [list(e.rows) for e in apart] == [[0, 1, 2, 6, 7], [3, 4, 5], [8, 9]]
    clocked = table.append_column("timestamp", pa.array([0.0, 0.1, 0.2, 0.0, 0.1, 0.2, 0.3, 0.4, 0.0, 0.1]))
    pq.write_table(clocked, tmp_path / "clocked.parquet")  # its order is not lost: the hint reads by its clock
    with pytest.raises(DataError, match=r"row 6, column 'episode_id': the rows of episode 0 are not together.*"
                                        r"\(set data.frame_column: timestamp \(--frame-column timestamp\) to read"):
        prepared(tmp_path / "clocked.parquet")
    assert [list(e.rows) for e in prepared(tmp_path / "clocked.parquet", frame_column="timestamp").index.episodes] \
        == [[0, 1, 2, 6, 7], [3, 4, 5], [8, 9]]
    numbered = table.append_column("frame_index", pa.array([0, 1, 2, 0, 1, 2, 3, 4, 0, 1]))
    pq.write_table(numbered, tmp_path / "numbered.parquet")  # a frame_index orders each recording
    assert [list(e.rows) for e in prepared(tmp_path / "numbered.parquet").index.episodes] == \
        [[0, 1, 2, 6, 7], [3, 4, 5], [8, 9]]


def test_a_recording_is_named_from_within_its_dataset_wherever_the_dataset_lies(tmp_path):
    from nitrogen_finetuner.data.episodes import recording_key

    root = tmp_path / "games [ps5]" / "data"  # a folder name with a bracket in it
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "run.parquet").write_bytes(b"")
    assert recording_key(str(root / "sub" / "run.parquet"), str(root)) == "sub/run.parquet"
    assert recording_key(f"{root / 'sub' / 'run.parquet'} [session=3]", str(root)) == "sub/run.parquet [session=3]"
    assert recording_key(str(root / "sub" / "run.parquet"), str(root / "sub" / "run.parquet")) == "run.parquet"
    assert recording_key("/cache/hub/train-00001.arrow [episode_index=2]", str(root)) == "train-00001.arrow [episode_index=2]"


def test_episode_column_splits_a_file(tmp_path):
    path = write_nitrogen_parquet(tmp_path / "run.parquet", n=12, extra={"episode_id": [0] * 5 + [1] * 7})
    data = prepared(path)
    assert [len(e) for e in data.index.episodes] == [5, 7]
    by_episode = Counter(w["episode"] for w in all_windows(data))
    assert by_episode == {0: 3, 1: 5}
    for w in all_windows(data):
        t = check_alignment(w)
        if w["episode"] == 0:  # frame 2 -> rows 4, 5, 6, 7: only row 4 is in episode 0
            assert t <= 2
            if t == 2:
                assert w["actions_mask"][:, SOUTH].tolist() == [True, False, False, False]


def test_a_lerobot_camera_column_is_the_image_column_when_it_is_the_only_camera(tmp_path):
    rows = {"observation.images.top": image_structs(6), **nitrogen_rows(6), "episode_index": [0] * 6,
            "frame_index": list(range(6))}
    pq.write_table(pa.table(rows), tmp_path / "one_camera.parquet")
    assert prepared(tmp_path / "one_camera.parquet").index.image_columns == ["observation.images.top"]
    pq.write_table(pa.table({**rows, "observation.images.wrist": image_structs(6)}), tmp_path / "two.parquet")
    with pytest.raises(DataError, match="no image column .*name it with image_column"):  # which camera? the user says
        prepared(tmp_path / "two.parquet")


def test_frame_index_puts_shuffled_rows_in_time_order_and_a_gap_cuts_the_recording(tmp_path):
    n = 14
    table = {"image": image_structs(n), "frame_index": list(range(n)), **nitrogen_rows(n)}
    kept = [int(i) for i in np.random.default_rng(0).permutation(n) if i != 9]  # shuffled, frame 9 missing
    pq.write_table(pa.table({k: [v[i] for i in kept] for k, v in table.items()}), tmp_path / "run.parquet")
    data = prepared(tmp_path / "run.parquet")
    assert [len(e) for e in data.index.episodes] == [9, 4] and data.index.frame_gaps == 1  # frames 0-8, 10-13
    assert data.index.recordings == [data.index.recordings[0]] * 2
    # Frame 7 would predict rows 9..: 9 is missing, so it makes no window (without the cut: frame 10's).
    assert sorted(check_alignment(w) for w in all_windows(data)) == [0, 1, 2, 3, 4, 5, 6, 10, 11]


def test_a_frame_that_appears_twice_in_an_episode_is_one_line(tmp_path):
    path = write_nitrogen_parquet(tmp_path / "run.parquet", n=4, extra={"frame_index": [0, 1, 1, 2]})
    with pytest.raises(DataError, match=r"run.parquet, row 2, column 'frame_index': frame 1 appears twice in the "
                                        r"episode \(drop the repeated rows, or name the column that tells episodes"):
        prepared(path)
    path = write_nitrogen_parquet(tmp_path / "words.parquet", n=3, extra={"frame_index": ["0", "one", "2"]})
    with pytest.raises(DataError, match=r"row 1, column 'frame_index': the frame number 'one' is not a number"):
        prepared(path)
    path = write_nitrogen_parquet(tmp_path / "null.parquet", n=3, extra={"frame_index": [0.0, None, 2.0]})
    with pytest.raises(DataError, match=r"row 1, column 'frame_index': the frame number is missing \(fix the row, "
                                        r"set data.skip_bad_rows \(--skip-bad-rows\) to leave it out, or set "
                                        r"data.frame_column: none"):
        prepared(path)


def test_skip_bad_rows_leaves_out_a_row_without_its_frame_number(tmp_path):
    frames = [float(i) for i in range(12)]
    frames[5] = None
    path = write_nitrogen_parquet(tmp_path / "run.parquet", n=12, extra={"frame_index": frames})
    data = prepared(path, skip_bad_rows=True)
    assert data.index.bad_action_rows == 1
    # Frame 5's row is left out, and its absence cuts the recording like any missing frame.
    assert [list(e.rows) for e in data.index.episodes] == [[0, 1, 2, 3, 4], [6, 7, 8, 9, 10, 11]]
    # The same with NaN in a float column (which Arrow hands over read-only) and a null timestamp.
    start = np.datetime64("2024-01-01T00:00:00", "ms")
    for name, column in [("nan.parquet", pa.array([f if f is not None else np.nan for f in frames], pa.float64())),
                         ("time.parquet", pa.array([None if f is None else start + np.timedelta64(int(f * 17), "ms")
                                                    for f in frames], pa.timestamp("ms")))]:
        path = write_nitrogen_parquet(tmp_path / name, n=12, extra={"frame_index": column})
        with pytest.raises(DataError, match=r"row 5, column 'frame_index': the frame number is missing"):
            prepared(path)
        data = prepared(path, skip_bad_rows=True)
        assert [list(e.rows) for e in data.index.episodes] == [[0, 1, 2, 3, 4], [6, 7, 8, 9, 10, 11]], name
    path = write_nitrogen_parquet(tmp_path / "none.parquet", n=12, extra={"frame_index": pa.array([None] * 12, pa.int64())})
    with pytest.raises(DataError, match=r"every row was left out as bad: none has a frame number \(12 bad rows\)"):
        prepared(path, skip_bad_rows=True)


def test_a_row_without_its_episode_id_stops_with_its_row_or_is_left_out(tmp_path):
    for name, ids in [("text.parquet", pa.array(["x", "x", None, "y", "y", None])),
                      ("ints.parquet", pa.array([1, 1, None, 2, 2, None], pa.int64()))]:  # read as floats with NaN
        path = write_nitrogen_parquet(tmp_path / name, n=6, extra={"episode_id": ids})
        with pytest.raises(DataError, match=r"row 2, column 'episode_id': the episode id is missing \(fill it in, or "
                                            r"set data.skip_bad_rows"):
            prepared(path)
        index = prepared(path, skip_bad_rows=True).index
        assert [list(e.rows) for e in index.episodes] == [[0, 1], [3, 4]] and index.bad_action_rows == 2
        assert [e.name.split(" ", 1)[1] for e in index.episodes] == (
            ["[episode_id=x]", "[episode_id=y]"] if name == "text.parquet" else ["[episode_id=1]", "[episode_id=2]"])
    path = write_nitrogen_parquet(tmp_path / "lists.parquet", n=6, extra={"episode_id": [[1]] * 3 + [[2]] * 3})
    with pytest.raises(DataError, match=r"row 0, column 'episode_id': the episode id is \[1\], not one value"):
        prepared(path)


def test_an_analog_trigger_reads_on_the_scale_of_the_whole_dataset(tmp_path):
    """A 0..255 trigger that only rested at 0 and 1 in one recording is not pressed there."""
    slot = LAYOUT.slot_names.index("LEFT_TRIGGER")
    triggers = {"wide.parquet": [0, 200, 255, 3, 0, 0, 90, 0], "resting.parquet": [0, 1, 1, 0, 1, 0, 0, 1]}
    for name, values in triggers.items():
        write_nitrogen_parquet(tmp_path / name, n=8, extra={"left_trigger": np.array(values, np.uint8)})
    data = prepared(tmp_path)
    pressed = {data.index.sources[e.source].name.split("/")[-1]: e.actions[:, slot].tolist() for e in data.index.episodes}
    assert pressed == {"wide.parquet": [0, 1, 1, 0, 0, 0, 0, 0], "resting.parquet": [0] * 8}
    # Alone, the 0s and 1s are a digital trigger's presses; so are a boolean column's next to 0..255.
    alone = prepared(tmp_path / "resting.parquet")
    assert alone.index.episodes[0].actions[:, slot].tolist() == triggers["resting.parquet"]
    write_nitrogen_parquet(tmp_path / "resting.parquet", n=8,
                           extra={"left_trigger": np.array(triggers["resting.parquet"], bool)})
    assert sum(e.actions[:, slot].sum() for e in prepared(tmp_path).index.episodes) == 2 + 4
    # True/false stays presses with a null (pyarrow then hands over objects), and says nothing of
    # the scale of another file, whose 0s and 1s go with the 0..255 file.
    write_nitrogen_parquet(tmp_path / "resting.parquet", n=8,
                           extra={"left_trigger": [False, True, True, False, True, False, None, True]})
    write_nitrogen_parquet(tmp_path / "digital.parquet", n=8, extra={"left_trigger": [False] * 8})
    renamed = {k: v for k, v in nitrogen_rows(8).items() if k != "left_trigger"}
    pq.write_table(pa.table({"image": image_structs(8), **renamed, "Left Trigger": np.array([0, 1] * 4, np.uint8)}),
                   tmp_path / "zero_one.parquet")
    data = prepared(tmp_path, skip_bad_rows=True)
    pressed = {data.index.sources[e.source].name.split("/")[-1]: int(e.actions[:, slot].sum())
               for e in data.index.episodes}
    # The same trigger under another spelling of its name takes the 0..255 scale too.
    assert pressed == {"wide.parquet": 2, "resting.parquet": 4, "digital.parquet": 0, "zero_one.parquet": 0}
    # In one file, a trigger resting at 0 and 1 goes with the file's other trigger, which shows 0..255.
    right = LAYOUT.slot_names.index("RIGHT_TRIGGER")
    one = write_nitrogen_parquet(tmp_path / "one" / "both.parquet", n=8, extra={
        "left_trigger": np.array(triggers["wide.parquet"], np.uint8),
        "right_trigger": np.array(triggers["resting.parquet"], np.uint8)})
    actions = prepared(one).index.episodes[0].actions
    assert actions[:, slot].tolist() == [0, 1, 1, 0, 0, 0, 0, 0] and actions[:, right].tolist() == [0] * 8


def test_one_stray_trigger_value_is_an_error_in_its_row_not_the_scale(tmp_path):
    values = [0.0, 0.8] * 4 + [2.0]
    path = write_nitrogen_parquet(tmp_path / "run.parquet", n=9, extra={"left_trigger": np.array(values, np.float32)})
    with pytest.raises(DataError, match=r"row 8, column 'left_trigger': trigger value 2.0 is neither in 0..1"):
        prepared(path)
    episode = prepared(path, skip_bad_rows=True).index.episodes[0]
    assert episode.actions[:, LAYOUT.slot_names.index("LEFT_TRIGGER")].tolist() == [0, 1] * 4 + [0]
    assert episode.bad.tolist() == [False] * 8 + [True]


def test_frames_kept_every_other_or_counted_in_milliseconds_are_no_gaps(tmp_path):
    no_gaps = {
        "stride.parquet": list(range(0, 24, 2)),
        "stride_after_one.parquet": [0] + list(range(1, 23, 2)),
        "ms.parquet": [16.667 * i for i in range(12)],
        "ms_whole.parquet": [int(i * 1000 / 60) for i in range(12)],  # steps of 16 and 17
        "ms_late_then_early.parquet": [0, 17, 33, 50, 75, 83, 100, 117, 133, 150, 167, 183],  # +25, +8
        "seconds_rounded.parquet": [round(i / 60, 2) for i in range(12)],  # steps of 0.01 and 0.02
    }
    for name, numbers in no_gaps.items():
        data = prepared(write_nitrogen_parquet(tmp_path / name, n=12, extra={"frame_index": numbers}))
        assert [len(e) for e in data.index.episodes] == [12] and data.index.frame_gaps == 0, name
    # A dropped frame in a millisecond count is a gap; frame_column: none reads the file as it is.
    numbers = [16.667 * i for i in range(6)] + [16.667 * i for i in range(7, 13)]
    path = write_nitrogen_parquet(tmp_path / "drop.parquet", n=12, extra={"frame_index": numbers})
    assert [len(e) for e in prepared(path).index.episodes] == [6, 6]
    assert [len(e) for e in prepared(path, frame_column="none").index.episodes] == [12]


def test_whole_millisecond_and_date_time_stamps_of_a_varying_frame_rate_are_no_gaps(tmp_path):
    steps = [16, 30, 16, 25, 16, 35, 22, 16, 28, 19, 33]  # 16 ms most often, the median 22: no step is 1.75 x it
    ms = np.concatenate([[0], np.cumsum(steps)])
    late = ms + (ms >= ms[8]) * 100  # a real gap: 100 ms missing before frame 8
    for column, pieces in [(pa.array(ms, pa.int64()), [12]), (pa.array(ms.astype("datetime64[ms]")), [12]),
                           (pa.array(late.astype("datetime64[ms]")), [8, 4])]:
        path = write_nitrogen_parquet(tmp_path / "vrr.parquet", n=12, extra={"timestamp": column})
        assert [len(e) for e in prepared(path, frame_column="timestamp").index.episodes] == pieces


def test_the_validation_split_keeps_the_pieces_of_a_recording_together():
    recordings = ["a", "a", "b", "c", "c", "d"]
    for seed in range(10):
        train, val = split_episodes(recordings, 0.5, seed)
        assert sorted(train + val) == list(range(6)) and len({recordings[e] for e in val}) == 2
        assert not {recordings[e] for e in train} & {recordings[e] for e in val}
    # One episode per recording: the split every earlier run made.
    assert split_episodes(["a", "b", "c", "d", "e"], 0.4, 3) == ([1, 2, 3], [0, 4])
    train, val = split_episodes(["a", "b", "c"], 0.99, 0)  # one recording at least is left to train on
    assert len(train) == 1 and len(val) == 2
    assert split_episodes(["a", "a"], 0.5, 0) == ([0, 1], [])  # one recording: nothing to hold out


def test_a_file_whose_stick_never_moves_reads_with_files_whose_stick_does(tmp_path):
    moving = {"LB": [0] * 8, "Left X": [0, 0, 32767, -32768, 0, 0, 0, 0]}
    still = {"LB": [0] * 8, "Left X": [0] * 8}
    for name, columns in (("a.parquet", moving), ("b.parquet", still)):
        pq.write_table(pa.table({"image": image_structs(8), **columns}), tmp_path / name)
    data = prepared(tmp_path, profile="generic", mapping={"LB": "LEFT_SHOULDER", "Left X": "LEFT_X"})
    assert [b.stick_ranges["Left X"] for b in data.index.bindings] == ["int16", "float_pm1"]
    assert data.index.episodes[1].actions[:, LEFT_X].tolist() == [0.5] * 8


def test_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    columns = {"image": image_structs(7), **nitrogen_rows(7)}
    features = datasets.Features({
        "image": datasets.Image(),
        **{k: datasets.Value("bool") for k in nitrogen_rows(1) if k not in ("j_left", "j_right")},
        "j_left": datasets.Sequence(datasets.Value("float32")),
        "j_right": datasets.Sequence(datasets.Value("float32")),
    })
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(tmp_path / "saved"))
    data = prepared(tmp_path / "saved")
    assert [check_alignment(w) for w in all_windows(data)] == [0, 1, 2, 3, 4]


def test_an_episode_cut_by_a_shard_boundary_stays_one_recording(tmp_path):
    datasets = pytest.importorskip("datasets")
    n = 40
    columns = {"image": image_structs(n), **nitrogen_rows(n), "episode_index": [0] * 10 + [1] * 20 + [2] * 10}
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "saved"), num_shards=2)  # 20 rows each
    index = prepared(tmp_path / "saved").index
    assert [len(e) for e in index.episodes] == [10, 10, 10, 10] and len(set(e.name for e in index.episodes)) == 4
    assert len(set(index.recordings)) == 3 and index.recordings[1] == index.recordings[2]  # episode 1's halves


def test_datasets_cache_path_used_for_hub_ids(tmp_path):
    """Hub ids go through datasets.load_dataset into its Arrow cache; the same cache files come
    out of a local load (the download itself needs the network, which tests never use)."""
    datasets = pytest.importorskip("datasets")
    path = write_nitrogen_parquet(tmp_path / "run.parquet", n=6)
    loaded = datasets.load_dataset("parquet", data_files=[str(path)], split="train", cache_dir=str(tmp_path / "cache"))
    sources = _datasets_sources(loaded, None)
    assert sum(s.num_rows() for s in sources) == 6
    assert set(sources[0].column_names()) >= {"image", "south", "j_left"}


@pytest.mark.parametrize("table_format", ["csv", "jsonl"])
def test_frames_folder_with_actions_table(tmp_path, table_format):
    folder = write_frames_folder(tmp_path / "frames_run", n=9, table_format=table_format)
    data = prepared(folder)
    assert [check_alignment(w) for w in all_windows(data)] == list(range(7))


@pytest.mark.parametrize("table_format", ["csv", "jsonl"])
def test_a_frame_counter_next_to_the_image_paths_is_not_taken_for_the_images(tmp_path, table_format):
    folder = write_frames_folder(tmp_path / "frames_run", n=9, table_format=table_format)
    table = next(folder.glob("actions.*"))
    if table_format == "csv":  # a number column
        lines = table.read_text().splitlines()
        lines = [("frame," if i == 0 else f"{i - 1},") + line.replace("image,", "image_path,", 1)
                 for i, line in enumerate(lines)]
    else:  # numbers written as text
        records = [json.loads(line) for line in table.read_text().splitlines()]
        lines = [json.dumps({"frame": f"{t:06d}", "image_path": r.pop("image"), **r}) for t, r in enumerate(records)]
    table.write_text("\n".join(lines) + "\n")
    data = prepared(folder)
    assert data.index.image_columns == ["image_path"]
    assert [check_alignment(w) for w in all_windows(data)] == list(range(7))


@pytest.mark.parametrize("kind", ["raw_bytes", "path_struct", "plain_path"])
def test_image_column_formats(tmp_path, kind):
    n = 5
    for t in range(n):
        frame(t).save(tmp_path / f"{t}.png")
    values = {
        "raw_bytes": [png_bytes(frame(t)) for t in range(n)],
        "path_struct": [{"bytes": None, "path": f"{t}.png"} for t in range(n)],
        "plain_path": [f"{t}.png" for t in range(n)],
    }[kind]
    pq.write_table(pa.table({"image": values, **nitrogen_rows(n)}), tmp_path / "run.parquet")
    data = prepared(tmp_path / "run.parquet")
    assert [check_alignment(w) for w in all_windows(data)] == [0, 1, 2]


def test_sixteen_bit_grey_frames_keep_their_grey_and_decode_errors_name_no_memory_address():
    grey = io.BytesIO()
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(grey, format="PNG")
    assert np.asarray(decode_image(grey.getvalue())).tolist() == [[[128] * 3] * 4] * 4
    with pytest.raises(ImageDecodeError) as err:
        decode_image(b"not an image")
    assert str(err.value) == "cannot decode the image (UnidentifiedImageError: cannot identify image file)"


def test_file_suffixes_and_profile_names_in_any_case(tmp_path):
    write_nitrogen_parquet(tmp_path / "data" / "RUN.PARQUET", n=6)
    for path in (tmp_path / "data", tmp_path / "data" / "RUN.PARQUET"):
        assert [check_alignment(w) for w in all_windows(prepared(path, profile="NitroGen"))] == [0, 1, 2, 3]


def test_workers_and_ranks_split_the_global_batches(tmp_path):
    for name, start in (("a", 0), ("b", 50)):
        write_nitrogen_parquet(tmp_path / "data" / f"{name}.parquet", n=20, start=start, row_group_size=4)
    data = prepared(tmp_path / "data")

    def batches(loader):
        return [sorted(int(x) for x in batch["image"][:, 16, 16, 0]) for batch in loader]

    single = batches(make_loader(data.dataset(batch_size=6, seed=3)))
    assert len(single) == 36 // 6 and sorted(sum(single, [])) == sorted(
        frame_index(w["image"]) for w in all_windows(data))
    # workers change nothing
    assert batches(make_loader(data.dataset(batch_size=6, seed=3), num_workers=2)) == single
    # two ranks with 3 windows each make up exactly the 1-process batches of 6
    ranks = [batches(make_loader(data.dataset(batch_size=3, seed=3, rank=r, world_size=2), num_workers=2))
             for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == single
    # resuming after 2 batches continues with the third, decoding nothing before it
    resumed = data.dataset(batch_size=6, seed=3)
    resumed.set_epoch(0, skip_batches=2)
    assert batches(make_loader(resumed, num_workers=2)) == single[2:]
    batch = next(iter(make_loader(data.dataset(batch_size=6))))
    assert batch["image"].dtype == torch.uint8 and batch["actions"].shape == (6, 4, 25)


def test_the_next_epochs_workers_start_before_the_epoch_ends_and_change_no_batch(tmp_path, monkeypatch):
    for name, start in (("a", 0), ("b", 50)):
        write_nitrogen_parquet(tmp_path / "data" / f"{name}.parquet", n=20, start=start, row_group_size=4)
    data = prepared(tmp_path / "data")
    made = []  # the epoch of each loader, as it is made

    def make_loader_and_note_its_epoch(dataset, num_workers=0):
        made.append(dataset.epoch)
        return make_loader(dataset, num_workers)

    monkeypatch.setattr(training_batches, "make_loader", make_loader_and_note_its_epoch)

    def steps(num_workers, progress, count):
        made.clear()
        stream = training_batches.micro_batches(data.dataset(batch_size=6, seed=3), progress, num_workers)
        taken = []
        for epoch, consumed, batch in itertools.islice(stream, count):
            taken.append((epoch, consumed, sorted(int(x) for x in batch["image"][:, 16, 16, 0]), list(made)))
        return taken

    single = steps(0, Progress(), 18)  # 3 epochs of 6 batches
    assert [(epoch, consumed) for epoch, consumed, _, _ in single[5:7]] == [(0, 6), (1, 1)]
    assert single[5][3] == [0] and single[6][3] == [0, 1]  # without workers, each epoch's loader at its start
    with_workers = steps(2, Progress(), 18)
    assert with_workers[5][3] == [0, 1]  # the last batch of epoch 0 comes when epoch 1's workers have started
    assert [taken[:3] for taken in with_workers] == [taken[:3] for taken in single]
    # a resume in the middle of epoch 1 goes on with the same batches
    resumed = steps(2, Progress(epoch=1, batches_in_epoch=2), 10)
    assert [taken[:3] for taken in resumed] == [taken[:3] for taken in single[8:]]


def test_block_sharding_partitions_the_windows(tmp_path):
    for name, start in (("a", 0), ("b", 50)):
        write_nitrogen_parquet(tmp_path / "data" / f"{name}.parquet", n=20, start=start, row_group_size=4)
    data = prepared(tmp_path / "data", shard="blocks")
    frames = [
        sorted(frame_index(w["image"]) for w in unbatch(data.dataset(batch_size=1, rank=r, world_size=2)))
        for r in (0, 1)
    ]
    assert not set(frames[0]) & set(frames[1])
    assert sorted(frames[0] + frames[1]) == sorted(frame_index(w["image"]) for w in all_windows(data))


def test_shuffle_depends_only_on_seed_and_epoch(tmp_path):
    data = prepared(write_nitrogen_parquet(tmp_path / "run.parquet", n=40, row_group_size=5))

    def order(seed, epoch):
        dataset = data.dataset(batch_size=1, seed=seed)
        dataset.set_epoch(epoch)
        return [frame_index(w["image"]) for w in unbatch(dataset)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 0)) == list(range(38))


def test_image_fits_and_augmentation(tmp_path):
    wide = frame(9, size=(40, 20))
    padded = np.asarray(fit_square(wide, "pad"))
    assert padded.shape == (40, 40, 3) and padded[0, 0].tolist() == [0, 0, 0] and padded[20, 20, 0] == 9
    assert np.asarray(fit_square(wide, "crop")).shape == (20, 20, 3)
    assert fit_square(wide, "stretch").size == (40, 20)
    stretched = FrameTransform(32, "stretch")(wide)
    assert stretched.shape == (32, 32, 3) and (stretched[..., 0] == 9).all()
    data = prepared(write_nitrogen_parquet(tmp_path / "run.parquet", n=6), augment=True, augment_jitter=0.5)
    plain = [w["image"] for w in unbatch(data.dataset(batch_size=2, shuffle=False, train=False))]
    augmented = [w["image"] for w in unbatch(data.dataset(batch_size=2, shuffle=False))]
    assert all(not np.array_equal(a, b) for a, b in zip(plain, augmented))
    again = [w["image"] for w in unbatch(data.dataset(batch_size=3, shuffle=False))]
    assert all(np.array_equal(a, b) for a, b in zip(augmented, again))  # per-window, not per-order


def test_columns_no_profile_reads_are_reported(tmp_path):
    path = write_nitrogen_parquet(tmp_path / "run.parquet", n=6,
                                  extra={"score": list(range(6)), "__index_level_0__": list(range(6))})  # pandas' index
    assert prepared(path).index.unused_columns == [["score"]]
    forced = prepared(path, profile="nes").index
    assert {"south", "j_left", "score"} <= set(forced.unused_columns[0])
    assert forced.episodes[0].slot_mask.sum() == 5  # start and the four d-pad directions
