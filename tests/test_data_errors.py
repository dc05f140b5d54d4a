"""Bad input stops with one line naming file, row and column (exit status 2, no traceback), or,
with --skip-bad-rows, is skipped and counted in the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nitrogen_finetuner.cli import main
from recordings import image_structs, nitrogen_rows, write_frames_folder, write_nitrogen_parquet


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def inspect(path, tmp_path, *flags, capsys=None):
    """Run ``nitrogen-finetune data inspect`` in this process (fast), or as a real process."""
    argv = ["data", "inspect", str(path), "--output", str(tmp_path / "report"), *flags]
    if capsys is None:
        done = subprocess.run([sys.executable, "-m", "nitrogen_finetuner.cli", *argv], capture_output=True, text=True)
        return Result(done.returncode, done.stdout, done.stderr)
    code = main(argv)
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write(path, n=8, **overrides):
    columns = {"image": image_structs(n), **nitrogen_rows(n)}
    columns.update(overrides)
    pq.write_table(pa.table(columns), path)
    return path


def test_missing_image_column(tmp_path, capsys):
    path = write(tmp_path / "run.parquet")
    pq.write_table(pq.read_table(path).drop(["image"]), path)
    assert_one_line_error(inspect(path, tmp_path, capsys=capsys), str(path), "no image column", "image_column")


def test_missing_configured_episode_column(tmp_path, capsys):
    path = write(tmp_path / "run.parquet")
    assert_one_line_error(inspect(path, tmp_path, "--episode-column", "take", capsys=capsys), str(path), "no episode column 'take'")


def test_stick_of_the_wrong_length(tmp_path, capsys):
    j_left = nitrogen_rows(8)["j_left"]
    j_left[3] = [0.1, 0.2, 0.3]
    path = write(tmp_path / "run.parquet", j_left=j_left)
    assert_one_line_error(inspect(path, tmp_path, capsys=capsys), str(path), "row 3", "column 'j_left'")


def test_stick_stored_as_a_struct(tmp_path, capsys):
    j_left = [{"x": x, "y": y} for x, y in nitrogen_rows(8)["j_left"]]
    path = write(tmp_path / "run.parquet", j_left=j_left)
    assert_one_line_error(inspect(path, tmp_path, capsys=capsys), str(path), "row 0", "column 'j_left'",
                          "holds a struct", "where an [x, y] list is expected")


def test_nan_stick_value(tmp_path, capsys):
    j_left = nitrogen_rows(8)["j_left"]
    j_left[4] = [float("nan"), 0.0]
    path = write(tmp_path / "run.parquet", j_left=j_left)
    assert_one_line_error(inspect(path, tmp_path, capsys=capsys), str(path), "row 4", "column 'j_left'")


def test_out_of_range_values(tmp_path, capsys):
    j_left = nitrogen_rows(8)["j_left"]
    j_left[2] = [1.7, 0.0]
    path = write(tmp_path / "run.parquet", j_left=j_left)
    assert_one_line_error(inspect(path, tmp_path, "--stick-range", "float_pm1", capsys=capsys), str(path), "row 2", "column 'j_left'")
    south = [0, 1, 0, 1, 0, 3, 0, 1]
    path = write(tmp_path / "buttons.parquet", south=south)
    assert_one_line_error(inspect(path, tmp_path, capsys=capsys), str(path), "row 5", "column 'south'")


def test_a_stick_column_read_two_ways_in_two_files(tmp_path, capsys):
    rests = {"ep1.parquet": 0.5, "ep2.parquet": 0.0}  # a 0..1 stick, held left through the second file
    for name, most in rests.items():
        left_x = [most] * 6 + [0.0, 1.0]
        pq.write_table(pa.table({"image": image_structs(8), "south": [0] * 8, "left_x": left_x}), tmp_path / name)
    assert_one_line_error(inspect(tmp_path, tmp_path, capsys=capsys), "ep2.parquet",
                          "stick column 'left_x' reads as float_pm1 here but as float_01 in", "{left_x: float_01}")
    fixed = inspect(tmp_path, tmp_path, "--stick-range", "float_01", capsys=capsys)
    assert fixed.returncode == 0, fixed.stderr
    fixed = inspect(tmp_path, tmp_path, "--stick-range", "{left_x: float_01}", capsys=capsys)  # as the hint says
    assert fixed.returncode == 0, fixed.stderr


def test_a_mapping_key_that_names_no_column(tmp_path, capsys):
    path = write(tmp_path / "run.parquet")
    assert_one_line_error(inspect(path, tmp_path, "--map", "gide=", capsys=capsys), str(path),
                          "mapping names the column 'gide', which no file of the dataset has", "guide")
    custom = write(tmp_path / "custom.parquet", **{"Jump": [True, False] * 4})  # no console names its columns
    custom_only = pq.read_table(custom).select(["image", "Jump"])
    pq.write_table(custom_only, custom)
    assert_one_line_error(inspect(custom, tmp_path, "--map", "Jmp=SOUTH", capsys=capsys), str(custom),
                          "maps to a slot", "mapping names the column 'Jmp', which this file does not have")


def test_a_stick_range_key_that_names_no_column(tmp_path, capsys):
    path = write(tmp_path / "run.parquet")
    assert_one_line_error(inspect(path, tmp_path, "--stick-range", "{j_lef: INT8}", capsys=capsys), str(path),
                          "stick_range names the column 'j_lef', which no file of the dataset has", "j_left")
    assert inspect(path, tmp_path, "--stick-range", "{j_left: FLOAT_PM1}", capsys=capsys).returncode == 0
    twice = inspect(path, tmp_path, "--stick-range", "{j_left: int8, j_left: uint8}")  # argparse exits: a process
    assert twice.returncode == 2 and "the key 'j_left' is given twice" in twice.stderr


def test_undecodable_image(tmp_path):  # as a real process: the exit status of the command itself
    images = image_structs(8)
    images[5] = {"bytes": b"definitely not a png", "path": None}
    path = write(tmp_path / "run.parquet", image=images)
    assert_one_line_error(inspect(path, tmp_path), str(path), "row 5", "column 'image'", "cannot decode")


@pytest.mark.parametrize("content", [b"", b"hello, this is not parquet at all"])
def test_empty_or_non_parquet_file(tmp_path, content, capsys):
    path = tmp_path / "run.parquet"
    path.write_bytes(content)
    assert_one_line_error(inspect(path, tmp_path, capsys=capsys), str(path), "not a readable parquet file")


def damage_page(path, row_group: int, column: str) -> None:
    """Flip the bytes where a column's data page begins, as a bad disk or copy would; the file's
    footer stays whole, so it still opens."""
    metadata = pq.ParquetFile(path).metadata
    names = [metadata.schema.column(i).path.split(".")[0] for i in range(metadata.num_columns)]
    offset = metadata.row_group(row_group).column(names.index(column)).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 12] = bytes(b ^ 0xFF for b in data[offset:offset + 12])
    path.write_bytes(bytes(data))


def test_a_damaged_parquet_page_is_one_line_and_training_saves_before_it(tmp_path, capsys):
    path = write_nitrogen_parquet(tmp_path / "actions" / "run.parquet", n=16)
    damage_page(path, 1, "south")  # read when the data is indexed
    assert_one_line_error(inspect(path, tmp_path, capsys=capsys), str(path),
                          "a damaged parquet file: rows 8-15 cannot be read (", "copy it again from the recording")
    for i in range(3):  # frames are read as training goes: rows 40-47 of the first file come late
        write_nitrogen_parquet(tmp_path / "frames" / f"run_{i}.parquet", n=48)
    damage_page(tmp_path / "frames" / "run_0.parquet", 5, "image")
    argv = ["train", "--data", str(tmp_path / "frames"), "--output", str(tmp_path / "run"), "--max-steps", "30",
            "--set", "batch_size=4", "--set", "num_workers=1", "--set", "val_every=0", "--set", "data.shuffle_buffer=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("nitrogen-finetune:")]  # after the progress bar
    assert len(lines) == 1 and "Traceback" not in err
    assert f"{tmp_path / 'frames' / 'run_0.parquet'}, column 'image': a damaged parquet file: rows 40-47 cannot " \
        "be read" in lines[0]
    assert f"is saved: with the file restored, continue with  nitrogen-finetune train --resume {tmp_path / 'run'}" \
        in lines[0]


def test_a_split_of_local_recordings_is_refused_not_ignored(tmp_path, capsys):
    path = write_nitrogen_parquet(tmp_path / "data" / "run.parquet", n=8)
    for data in (path, path.parent):
        assert_one_line_error(inspect(data, tmp_path, "--split", "test", capsys=capsys), str(data),
                              "split 'test' names a split of a hub or save_to_disk dataset")


def test_parquet_file_without_rows(tmp_path, capsys):
    path = write_nitrogen_parquet(tmp_path / "run.parquet", n=4)
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    assert_one_line_error(inspect(path, tmp_path, capsys=capsys), str(path), "no rows")


def test_missing_dataset(tmp_path, capsys):
    assert_one_line_error(inspect(tmp_path / "nowhere", tmp_path, capsys=capsys), "nowhere", "no such file or folder")


def test_an_image_column_of_no_image_type_asks_for_the_frames_column(tmp_path, capsys):
    path = write(tmp_path / "run.parquet", pixels=[[1, 2, 3]] * 8)  # a column of numbers named as the frames'
    assert_one_line_error(inspect(path, tmp_path, "--image-column", "pixels", capsys=capsys),
                          "row 0, column 'pixels': expected image bytes, a path or an Image struct, got list (is it "
                          "the frames' column? set data.image_column (--image-column) to the one that holds them)")


def test_bad_rows_are_skipped_and_counted_when_asked(tmp_path, capsys):
    j_left = nitrogen_rows(8)["j_left"]
    j_left[4] = [float("nan"), 0.0]
    images = image_structs(8)
    images[1] = {"bytes": b"broken", "path": None}
    path = write(tmp_path / "run.parquet", j_left=j_left, image=images)
    result = inspect(path, tmp_path, "--skip-bad-rows", capsys=capsys)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["bad_action_rows"] == 1 and report["bad_images"] == 1
    assert "row 1" in report["first_bad_images"][0]
    assert "bad rows     1 action row(s), 1 image(s) (the windows above count them: training leaves out each window " \
           "whose frame is bad" in result.stdout


def test_press_rates_count_only_the_files_that_can_press(tmp_path, capsys):
    write_nitrogen_parquet(tmp_path / "a.parquet", n=8)  # SOUTH on even rows
    no_south = {k: v for k, v in nitrogen_rows(8).items() if k != "south"}
    pq.write_table(pa.table({"image": image_structs(8), **no_south}), tmp_path / "b.parquet")
    result = inspect(tmp_path, tmp_path, "--profile", "nitrogen", "--image-fit", "crop", capsys=capsys)
    assert result.returncode == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["button_press_rate"]["SOUTH"] == 0.5  # not 8 presses over 16 rows, half of which cannot press
    assert report["frame_size"] == [40, 30] and report["frame_sizes"] == [[40, 30, 16]]
    assert "frames       40x30 (16); image_fit crop makes the 16 non-square frames square" in result.stdout
    pq.write_table(pa.table({"image": image_structs(8, size=(64, 64)), **no_south}), tmp_path / "b.parquet")
    result = inspect(tmp_path, tmp_path, "--profile", "nitrogen", capsys=capsys)  # every frame counts, not the first
    assert "frames       40x30 (8), 64x64 (8); image_fit pad makes the 8 non-square frames square" in result.stdout


def test_a_value_that_is_no_number_is_a_bad_row(tmp_path, capsys):
    south = ["0", "1", "no", "1", "0", "1", "0", "1"]  # a text column with a word in it
    path = tmp_path / "run.parquet"
    pq.write_table(pa.table({"image": image_structs(8), "south": pa.array(south, pa.string()),
                             "j_left": nitrogen_rows(8)["j_left"]}), path)
    assert_one_line_error(inspect(path, tmp_path, "--profile", "nitrogen", capsys=capsys), str(path), "row 2",
                          "column 'south'", "'no' is not a number", "a button holds 0/1")
    result = inspect(path, tmp_path, "--profile", "nitrogen", "--skip-bad-rows", capsys=capsys)
    assert result.returncode == 0 and "bad rows     1 action row(s)" in result.stdout, result.stderr


def test_error_raised_in_a_dataloader_worker_stays_one_line(tmp_path):
    from nitrogen_finetuner.actions.layout import ActionLayout
    from nitrogen_finetuner.data.config import DataConfig
    from nitrogen_finetuner.data.errors import DataError, user_message
    from nitrogen_finetuner.data.loader import make_loader
    from nitrogen_finetuner.data.pipeline import ModelInputs, prepare_data

    images = image_structs(8)
    images[2] = {"bytes": b"broken", "path": None}
    path = write(tmp_path / "run.parquet", image=images)
    model = ModelInputs(ActionLayout.resolve(25, False), horizon=4, action_shift=1, image_size=16)
    data = prepare_data(DataConfig(dataset_name=str(path)), model)
    with pytest.raises(DataError) as err:
        list(make_loader(data.dataset(batch_size=2, shuffle=False), num_workers=1))
    message = user_message(err.value)
    assert message.startswith(f"{path}, row 2, column 'image': cannot decode the image")
    assert "\n" not in message


def test_unreachable_hub_dataset_is_one_line(tmp_path, capsys, monkeypatch):
    """A name that is no local path is a hub id; offline (as in CI) it fails cleanly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = inspect("nobody/no-such-dataset", tmp_path, capsys=capsys)
    assert_one_line_error(result, "'nobody/no-such-dataset' is no local file or folder, and the Hugging Face hub "
                                  "cannot load it as a dataset id")
    for local in ("recordngs/", "./nobody/data", "runs/a/b"):  # not user/name: a mistyped path, never the hub
        assert_one_line_error(inspect(local, tmp_path, capsys=capsys), f"{local}: no such file or folder")
    (tmp_path / "recordings").mkdir()  # user/name beside a local folder "user": a mistyped path too
    assert_one_line_error(inspect("recordings/my-game", tmp_path, capsys=capsys),
                          "recordings/my-game: no such file or folder (recordings is a local folder: check the name")


def test_an_empty_data_path_is_refused_not_read_as_the_current_folder(tmp_path, capsys, monkeypatch):
    write_nitrogen_parquet(tmp_path / "e0.parquet", n=24)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == ("nitrogen-finetune: error: invalid setting data.dataset_name: the data "
                                                "path is empty: give the recordings' file, folder or hub id")


def test_a_folder_mixing_parquet_files_and_actions_tables_is_refused(tmp_path, capsys):
    write_nitrogen_parquet(tmp_path / "data" / "e0.parquet", n=24)
    write_frames_folder(tmp_path / "data" / "more", 24)
    assert_one_line_error(inspect(tmp_path / "data", tmp_path, capsys=capsys),
                          f"{tmp_path / 'data'}: the folder holds parquet files and also actions tables "
                          "(more/actions.csv): which are the recordings?", "(give the folder that holds only "
                          "the recordings (a LeRobot dataset's data/, say) or one file")
    (tmp_path / "notes").mkdir()  # a file beside the tables that holds no recording
    write_frames_folder(tmp_path / "notes" / "run", 24)
    (tmp_path / "notes" / "session.csv").write_text("key,value\nconsole,ps4\n")
    assert_one_line_error(inspect(tmp_path / "notes", tmp_path, capsys=capsys),
                          "session.csv: no image column (columns: key, value)", "a file beside the recordings "
                          "that holds none: move it out of the data folder")


def test_two_actions_tables_listing_the_same_frames_are_refused(tmp_path, capsys):
    folder = write_frames_folder(tmp_path / "data", 24)
    (folder / "copy.csv").write_text((folder / "actions.csv").read_text())
    assert_one_line_error(inspect(folder, tmp_path, capsys=capsys),
                          f"{folder / 'copy.csv'}, row 0, column 'image': the frame frames/00000.png is listed by "
                          f"{folder / 'actions.csv'} too: the dataset would hold it twice")


def test_a_subfolder_that_cannot_be_read_is_named_not_left_out(tmp_path, capsys):
    write_nitrogen_parquet(tmp_path / "data" / "e0.parquet", n=24)
    locked = tmp_path / "data" / "more"
    write_nitrogen_parquet(locked / "e1.parquet", n=24)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this user reads any folder (root)")
        assert main(["data", "inspect", str(tmp_path / "data"), "--output", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err.startswith(f"nitrogen-finetune: error: {locked}: Permission denied")
    finally:
        locked.chmod(0o755)


def test_a_table_written_with_semicolons_or_windows_paths_says_so(tmp_path, capsys):
    folder = write_frames_folder(tmp_path / "semicolons", 24)
    table = folder / "actions.csv"
    table.write_text(table.read_text().replace(",", ";"))
    assert_one_line_error(inspect(folder, tmp_path, capsys=capsys),
                          "no image column", "(its values are separated by ';': write the table with commas)")
    folder = write_frames_folder(tmp_path / "windows", 24)
    table = folder / "actions.csv"
    table.write_text(table.read_text().replace("frames/", "frames\\"))  # a table written on Windows reads
    assert inspect(folder, tmp_path, capsys=capsys).returncode == 0
    table.write_text(table.read_text().replace("frames\\", "shots\\"))  # and names its missing frame
    assert_one_line_error(inspect(folder, tmp_path, capsys=capsys),
                          "row 0, column 'image': image file", "does not exist; a Windows path? write it with / "
                                                               "(relative to the table)")
    folder = write_frames_folder(tmp_path / "decimal_commas", 24)  # as spreadsheets write in many countries
    table = folder / "actions.csv"
    table.write_text(table.read_text().replace(",", ";").replace(".", ","))
    assert_one_line_error(inspect(folder, tmp_path, capsys=capsys), "actions.csv, row 0: the row holds ",
                          "values, and the header names 1 column (its values are separated by ';': write the table "
                          "with commas)")
    folder = write_frames_folder(tmp_path / "short_row", 24)
    lines = (folder / "actions.csv").read_text().splitlines()
    lines[6] = lines[6].rsplit(",", 2)[0]  # a row cut short: its last two values are missing
    (folder / "actions.csv").write_text("\n".join(lines) + "\n")
    assert_one_line_error(inspect(folder, tmp_path, capsys=capsys), "actions.csv, row 5: the row holds ",
                          "values, and the header names ", "(give the row one value per column: an empty one between")
    folder = write_frames_folder(tmp_path / "utf16", 24)  # a spreadsheet's "Unicode text"
    (folder / "actions.csv").write_bytes((folder / "actions.csv").read_text().encode("utf-16"))
    assert_one_line_error(inspect(folder, tmp_path, capsys=capsys), "actions.csv: the table is UTF-16 text, and "
                          "tables are read as UTF-8 (save it as UTF-8: CSV UTF-8 in a spreadsheet)")


def test_a_column_that_files_of_two_consoles_read_differently_is_pointed_out(tmp_path, capsys):
    sticks = {"left_x": [0.1 * (t % 3) for t in range(8)], "left_y": [0.1 * (t % 3) for t in range(8)]}
    buttons = [float(t % 2) for t in range(8)]
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"image": image_structs(8), "south": buttons, "east": buttons, **sticks}),
                   data / "a.parquet")  # the universal names: generic, +y down
    pq.write_table(pa.table({"image": image_structs(8), "A": buttons, "LB": buttons, **sticks}),
                   data / "b.parquet")  # an Xbox pad's names: left_y is +y up
    result = inspect(data, tmp_path, "--no-image-check", capsys=capsys)
    assert result.returncode == 0, result.stderr
    note = (f"column 'left_y' drives -LEFT_Y in {data / 'b.parquet'} (profile xbox) and LEFT_Y in "
            f"{data / 'a.parquet'} (profile generic): if one recorder wrote every file, name its profile with "
            "data.profile")
    assert f"note         {note}" in result.stdout
    assert json.loads((tmp_path / "report" / "report.json").read_text())["differing_column"] == note
    result = inspect(data, tmp_path, "--no-image-check", "--profile", "generic", "--map", "A=SOUTH",
                     "--map", "LB=LEFT_SHOULDER", capsys=capsys)
    assert result.returncode == 0 and "note " not in result.stdout, result.stdout
