"""Evaluation: metrics on hand-built cases with known answers, then the eval and predict commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from nitrogen_finetuner import load_policy
from nitrogen_finetuner.cli import main
from nitrogen_finetuner.data.errors import DataError
from nitrogen_finetuner.model.checkpoint import save_checkpoint
from nitrogen_finetuner.evaluation.metrics import (
    button_metrics,
    button_scores,
    chunk_consistency,
    error_by_horizon_step,
    slot_agreement,
    stick_metrics,
)
from recordings import image_structs, nitrogen_rows, write_frames_folder, write_nitrogen_parquet

# Two chunks of 4 steps, one button: pressed on steps 1 and 2 of each chunk.
TRUE = np.array([[0, 1, 1, 0], [0, 1, 1, 0]], float)[..., None]
ALL = np.ones_like(TRUE, bool)


def test_perfect_predictor():
    scores = button_scores(TRUE[..., 0], TRUE[..., 0], ALL[..., 0])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (1.0, 1.0, 1.0)
    assert scores["press_rate_predicted"] == scores["press_rate_true"] == 0.5 and scores["support"] == 4
    sticks = stick_metrics(TRUE * 0.5, TRUE * 0.5, ALL, ["LEFT_X"])["per_axis"]["LEFT_X"]
    assert sticks == {"mae": 0.0, "r2": 1.0}


def test_always_off_predictor():
    scores = button_scores(np.zeros(8), TRUE.ravel(), np.ones(8, bool))
    assert scores["precision"] is None  # nothing predicted: undefined, not 0 or 1
    assert scores["recall"] == 0.0 and scores["f1"] == 0.0 and scores["press_rate_predicted"] == 0.0
    # a button never pressed and never predicted has no F1 and stays out of the macro average
    both = np.concatenate([TRUE, np.zeros_like(TRUE)], axis=-1)
    result = button_metrics(both, both, np.ones_like(both, bool), ["SOUTH", "EAST"])
    assert result["per_button"]["EAST"]["f1"] is None and result["macro_f1"] == 1.0


def test_predictor_shifted_by_one_step():
    shifted = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], float)  # presses on steps 2 and 3
    scores = button_scores(shifted, TRUE[..., 0], ALL[..., 0])
    # tp: step 2 of each chunk (2); fp: step 3 (2); fn: step 1 (2)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)
    by_step = error_by_horizon_step(shifted[..., None], TRUE, ALL, TRUE * 0, TRUE * 0, ALL)
    assert by_step["button_error_rate"] == [0.0, 1.0, 0.0, 1.0]
    assert by_step["stick_mae"] == [0.0, 0.0, 0.0, 0.0]
    sticks = stick_metrics(shifted[..., None], TRUE, ALL, ["LEFT_X"])["per_axis"]["LEFT_X"]
    assert sticks["mae"] == 0.5 and sticks["r2"] == pytest.approx(1 - 4 / 2)


def test_masked_values_do_not_count():
    mask = ALL.copy()
    mask[:, 1] = False  # hide step 1, where the shifted predictor misses
    shifted = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], float)[..., None]
    scores = button_scores(shifted[..., 0], TRUE[..., 0], mask[..., 0])
    assert scores["recall"] == 1.0 and scores["precision"] == 0.5


def test_chunk_consistency_counts_boundaries_within_each_episode_only():
    buttons = np.array([[0, 0, 1], [1, 0, 0], [1, 1, 1]], float)[..., None]
    sticks = np.zeros_like(buttons)
    mask = np.ones_like(buttons, bool)
    same = chunk_consistency(buttons, sticks, mask, mask, episodes=np.array([0, 0, 0]))
    assert same["boundary_button_flip_rate"] == 0.5  # 1 -> 1 holds, 0 -> 1 flips
    split = chunk_consistency(buttons, sticks, mask, mask, episodes=np.array([0, 0, 1]))
    assert split["boundary_button_flip_rate"] == 0.0  # only the first boundary is inside an episode
    assert same["within_button_flip_rate"] == pytest.approx(2 / 6)
    assert same["boundary_stick_change"] == 0.0


def test_slot_agreement_finds_swapped_slots():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) > 0.6).astype(float)
    scores = labels[:, [1, 0, 2]] * 0.8 + 0.1 * rng.random((200, 3))  # slots 0 and 1 swapped
    agreement = slot_agreement(scores, labels)
    assert np.argmax(agreement["correlation"][:, 0]) == 1 and np.argmax(agreement["correlation"][:, 1]) == 0
    assert np.argmax(agreement["correlation"][:, 2]) == 2
    assert agreement["best_f1"][2, 2] == 1.0


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    assert main(["init", str(path), "--preset", "tiny"]) == 0
    return path


def test_eval_command_writes_report_and_figures(tiny_checkpoint, tmp_path, capsys):
    for i in range(2):
        write_nitrogen_parquet(tmp_path / "data" / f"e{i}.parquet", n=40, start=10 * i)
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tiny_checkpoint),
            "--data", str(tmp_path / "data"), "--output", str(out), "--check-button-order"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "button F1 (macro)" in printed and "tiny_2" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["checkpoints"]) == {"tiny", "tiny_2"}
    first = report["checkpoints"]["tiny"]
    assert first["chunks"] == 6  # frames 0, 18 and 36 of each 40-frame episode
    assert {"per_button", "macro_f1"} <= set(first["buttons"]) and "SOUTH" in first["buttons"]["per_button"]
    assert set(first["sticks"]["per_axis"]) == {"LEFT_X", "LEFT_Y", "RIGHT_X", "RIGHT_Y"}
    left_x = f"{first['sticks']['per_axis']['LEFT_X']['mae']:.3f}"
    assert re.search(rf"^  MAE LEFT_X +{left_x} +{left_x}$", printed, re.MULTILINE), printed  # each axis printed
    assert len(first["by_horizon_step"]["button_error_rate"]) == 18
    assert set(first["consistency"]) == {"predicted", "true"}
    assert first == report["checkpoints"]["tiny_2"]  # fixed noise: the same checkpoint scores the same
    assert report["checkpoint_files"] == {"tiny": str(tiny_checkpoint.resolve()), "tiny_2": str(tiny_checkpoint.resolve())}
    assert [Path(name).name for name in report["episode_names"]] == ["e0.parquet", "e1.parquet"]
    check = report["button_order_check"]["tiny"]
    assert len(check["correlation"]) == 21 and "SOUTH" in check["labelled_buttons"]
    for name in ("f1.png", "horizon.png", "traces_tiny.png", "traces_tiny_2.png", "button_order_tiny.png"):
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG"
    assert main(argv) == 0
    assert json.loads((out / "report.json").read_text()) == report  # a rerun gives the same numbers
    (out / "traces_notes.png").mkdir()  # not eval's plot: left alone
    assert main(argv[:3] + argv[5:-1]) == 0  # one checkpoint now, into the same folder
    assert sorted(p.name for p in out.iterdir()) == ["f1.png", "horizon.png", "report.json", "traces_notes.png",
                                                     "traces_tiny.png"]  # not the earlier plots of tiny_2


def test_a_trace_is_drawn_at_the_rows_its_chunks_stand_for_with_gaps_where_nothing_was_scored():
    from nitrogen_finetuner.evaluation.plots import trace_line

    frames, shift, horizon = np.array([0, 8]), 3, 4  # the chunk at frame 4 was left out (a bad frame)
    rows = (frames[:, None] + shift + np.arange(horizon)).reshape(-1)
    shown = np.array([True] * 4 + [True, True, False, False])  # the episode ends two rows into the second chunk
    x, y = trace_line(rows, np.arange(8.0), shown, horizon)
    nan = np.nan
    np.testing.assert_array_equal(x, [3, 4, 5, 6, nan, 11, 12, 13, 14, nan])
    np.testing.assert_array_equal(y, [0, 1, 2, 3, nan, 4, 5, nan, nan, nan])


def test_checkpoints_of_one_name_are_told_apart_by_their_folder():
    from nitrogen_finetuner.evaluation.report import _labels

    assert _labels(["runs/a/model.pt", "runs/b/model.pt", "ng.pt"]) == ["a-model", "b-model", "ng"]
    assert _labels(["x/tiny.pt", "x/tiny.pt"]) == ["tiny", "tiny_2"]  # the same file twice
    assert _labels(["a/m.pt", "b/m.pt", "b/m.pt"]) == ["a-m", "b-m", "b-m_2"]


def test_the_button_order_check_scores_each_button_on_the_rows_that_label_it():
    """Two consoles' recordings label different buttons: requiring every label on a row kept none."""
    from types import SimpleNamespace

    from nitrogen_finetuner.actions import ActionLayout
    from nitrogen_finetuner.evaluation.open_loop import Chunks
    from nitrogen_finetuner.evaluation.report import button_order_check

    layout = ActionLayout.resolve(25, old_layout=False)
    south, east = layout.buttons.index("SOUTH"), layout.buttons.index("EAST")
    rng = np.random.default_rng(0)
    true = np.zeros((40, 1, 25))
    true[:, 0, south], true[:, 0, east] = rng.random(40) > 0.5, rng.random(40) > 0.5
    mask = np.zeros_like(true, dtype=bool)
    mask[:20, 0, south] = mask[20:, 0, east] = True  # the first console labels SOUTH, the second EAST
    predicted = true * 0.8 + 0.1 * rng.random(true.shape)
    chunks = Chunks(np.zeros(40, int), np.arange(40), predicted, true, mask)
    check = button_order_check(chunks, SimpleNamespace(layout=layout))
    assert check["labelled_buttons"] == ["EAST", "SOUTH"]
    assert {k: v["best_slot"] for k, v in check["best_slot_per_label"].items()} == {"EAST": "EAST", "SOUTH": "SOUTH"}


def test_the_button_order_check_says_when_no_button_is_pressed(tiny_checkpoint, tmp_path, capsys):
    for i in range(2):  # every button column all False
        write_nitrogen_parquet(tmp_path / "data" / f"e{i}.parquet", n=40, start=10 * i, extra={"south": [False] * 40})
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "data"),
            "--output", str(tmp_path / "eval"), "--check-button-order"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the figure of an all-NaN agreement warned
        assert main(argv) == 0
    assert "no labelled button is pressed some of the time in this data: nothing to check the order by" \
        in capsys.readouterr().out


def write_video(path: Path, frames: int = 40) -> Path:
    """A 64x48 H.264 video at 30 fps whose frame i is grey level 5 * i."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = np.full((48, 64, 3), i * 5, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_predict_command_on_frames_and_a_video(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    av = pytest.importorskip("av")
    Image.new("RGB", (80, 60), (200, 10, 10)).save(tmp_path / "frame.png")
    video = write_video(tmp_path / "clip.mp4")
    out = tmp_path / "actions.jsonl"
    argv = ["predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "frame.png"), str(video),
            "--output", str(out), "--overlay", str(tmp_path / "overlay.mp4")]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["source"].endswith(".png"), line["frame"]) for line in lines] == [(True, 0), (False, 0), (False, 18),
                                                                                   (False, 36)]
    step = lines[0]["actions"][0]
    assert len(lines[0]["actions"]) == 18 and set(step) == {"buttons", "j_left", "j_right"}
    assert all(b in {"BACK", "SOUTH", "START", "WEST"} or b.isupper() for b in step["buttons"])
    with av.open(str(tmp_path / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 40
        assert container.streams.video[0].average_rate == 30  # the input's frame rate
    first_run = out.read_text()
    assert main([*argv, "--force"]) == 0 and out.read_text() == first_run
    # The same file under another spelling of its path gets the same noise, so the same actions.
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), "./frame.png", "--output", "again.jsonl"]) == 0
    assert json.loads((tmp_path / "again.jsonl").read_text())["actions"] == lines[0]["actions"]
    capsys.readouterr()
    for inputs, overlay, message in [
        ([str(tmp_path)], None, f"{tmp_path}: a folder, not a file"),
        (["frame.png"], "overlay.mp4", "--overlay draws on one video, and 0 of the inputs are videos"),
        ([str(video), str(video)], "overlay.mp4", "--overlay draws on one video, and 2 of the inputs are videos"),
        ([str(video)], "overlay.txt", "overlay.txt: an overlay is a video file"),
    ]:
        flags = ["--overlay", overlay] if overlay else []
        assert main(["predict", "--checkpoint", str(tiny_checkpoint), *inputs, "--output", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert out.read_text() == first_run  # a failed predict leaves the earlier output as it was


def test_predict_reads_an_animated_gif_frame_by_frame_and_names_a_file_with_no_video(tiny_checkpoint, tmp_path,
                                                                                       capsys, monkeypatch):
    # As rollout writes its games, with a stretch where nothing moves (steps 4 to 15), which
    # Pillow stores as one frame that lasts 12 frame times.
    frames = [Image.new("RGB", (32, 32), (10 * shade, 0, 0)) for shade in [*range(4), *[4] * 12, *range(5, 9)]]
    frames[0].save(tmp_path / "game.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(tmp_path / "game.gif") as stored:
        assert stored.n_frames == 9
    argv = ["predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "game.gif")]
    with monkeypatch.context() as without_pyav:
        without_pyav.setitem(sys.modules, "av", None)  # Pillow reads GIFs: the video extra is not needed
        assert main([*argv, "--output", str(tmp_path / "a.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(line["frame"], line["time_s"]) for line in lines] == [(0, 0.0), (18, 0.9)]  # the game's steps
    from nitrogen_finetuner.evaluation.predict import _gif_frames
    from nitrogen_finetuner.games.rollout import save_gif

    # Pillow merges held frames into longer ones; each counts back as its steps, however long, and
    # also when no frame lasts a single step (the comment states the step time)
    for holds in ([2, 2, 1, 2, 2, 1], [1] * 10 + [4, 9, 20, 156, 1], [2, 2, 2]):
        steps = [s for s, hold in enumerate(holds) for _ in range(hold)]
        save_gif([np.full((4, 4, 3), 5 * (s % 50), np.uint8) for s in steps], tmp_path / "held.gif")
        assert [int(pixels[0, 0, 0]) // 5 for _, _, pixels in _gif_frames(tmp_path / "held.gif")] == steps
    distinct = [Image.new("RGB", (8, 8), (30 * k, 0, 0)) for k in range(6)]
    distinct[0].save(tmp_path / "fast.gif", save_all=True, append_images=distinct[1:], duration=[20, 30] * 3)  # 40 fps
    assert len(list(_gif_frames(tmp_path / "fast.gif"))) == 6
    capsys.readouterr()
    (tmp_path / "cut.gif").write_bytes((tmp_path / "game.gif").read_bytes()[:300])  # a download cut short
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "cut.gif")]) == 2
    assert f"{tmp_path / 'cut.gif'}: cannot read the GIF (" in failure(capsys)
    av = pytest.importorskip("av")
    assert main([*argv, "--output", str(tmp_path / "a.jsonl"), "--force", "--overlay", str(tmp_path / "o.mp4")]) == 0
    with av.open(str(tmp_path / "o.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 20
    capsys.readouterr()
    with av.open(str(tmp_path / "sound.mp4"), "w") as container:  # a sound track and no picture
        stream = container.add_stream("aac", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate = 8000
        for packet in [*stream.encode(samples), *stream.encode()]:
            container.mux(packet)
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "sound.mp4")]) == 2
    assert f"{tmp_path / 'sound.mp4'}: the file holds no video stream" in failure(capsys)


def test_rollout_and_eval_check_their_output_folder_before_any_work(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    (tmp_path / "taken" / "rollout_runner.gif").mkdir(parents=True)
    rollout = ["rollout", "--checkpoint", str(tiny_checkpoint), "--game", "runner", "--episodes", "1", "--output"]
    for argv, message in [
        ([*rollout, str(blocker)], f"{blocker}: a file of that name is in the way: rollout writes its files into a "
                                   "folder (give a folder's name with --output)"),
        (["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--output", str(blocker)],
         f"{blocker}: a file of that name is in the way: eval writes its files into a folder"),
        ([*rollout, str(tmp_path / "my.gif")], f"{tmp_path / 'my.gif'}: --output is the folder rollout writes "
                                               "rollout_runner.gif into, not the GIF"),
        ([*rollout, str(tmp_path / "taken")], f"{tmp_path / 'taken' / 'rollout_runner.gif'}: a folder of the GIF's "
                                              "name is in the way"),
    ]:
        assert main(argv) == 2, argv
        assert message in failure(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "taken"]


@pytest.mark.parametrize("argv, message", [
    (["rollout", "--game", "runner", "--episodes", "0"], "argument --episodes: 0 is below 1"),
    (["predict", "x.png", "--seed", "-1"], "argument --seed: -1 is below 0"),
    (["predict", "x.png", "--device", "bogus"], "argument --device: 'bogus' is not a device"),
    (["predict", "x.png", "--device", "meta"], "argument --device: 'meta': this tool runs on cpu or cuda"),
    (["eval", "--data", "d", "--max-chunks", "0"], "argument --max-chunks: 0 is below 1"),
    (["eval", "--data", "d", "--val-fraction", "1.5"], "argument --val-fraction: 1.5 is not between 0 and 1"),
])
def test_option_values_out_of_range_are_one_line(tiny_checkpoint, capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--checkpoint", str(tiny_checkpoint)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1 and message in err[0], err


def test_an_eval_that_cannot_load_its_checkpoint_leaves_no_output_folder(tmp_path, capsys):
    write_nitrogen_parquet(tmp_path / "data" / "e0.parquet", n=40)
    argv = ["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path / "data"),
            "--output", str(tmp_path / "eval")]
    assert main(argv) == 2 and not (tmp_path / "eval").exists()


def test_init_never_replaces_a_file_unless_forced(tmp_path, capsys):
    path = tmp_path / "ng.pt"
    path.write_bytes(b"real weights")
    assert main(["init", str(path)]) == 2
    assert "the file exists (choose another name, or pass --force to replace it)" in capsys.readouterr().err
    assert main(["init", ""]) == 2 and "the output file name is empty" in capsys.readouterr().err
    assert path.read_bytes() == b"real weights"
    assert main(["init", str(path), "--force"]) == 0
    first = path.read_bytes()
    assert main(["init", str(path), "--force"]) == 0 and path.read_bytes() == first  # seeded: the same weights


def test_eval_with_no_chunk_names_the_frame_gaps(tiny_checkpoint, tmp_path, capsys):
    pairs = [frame for start in range(0, 60, 5) for frame in (start, start + 1)]  # 0, 1, 5, 6, ...: pieces of 2
    write_nitrogen_parquet(tmp_path / "data" / "e.parquet", n=len(pairs), extra={"frame_index": pairs})
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "data"), "--episodes", "all",
            "--output", str(tmp_path / "eval")]
    assert main(argv) == 2
    assert "frame numbers skip in 11 place(s), cutting the recordings into pieces" in capsys.readouterr().err
    assert main([*argv, "--frame-column", "none"]) == 0


def failure(capsys) -> str:
    """The one line a failed command wrote on stderr, having written nothing on stdout."""
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1, captured
    return err[0]


def test_predict_never_writes_over_a_file_it_reads(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("m.pt").write_bytes(b"not even a checkpoint: the paths are checked before it is loaded")
    video = write_video(tmp_path / "clip.mp4", frames=2)
    Image.new("RGB", (8, 8)).save("frame.png")
    os.symlink("clip.mp4", "link.mp4")
    kept = {name: Path(name).read_bytes() for name in ("m.pt", "clip.mp4", "frame.png")}
    for inputs, flags, message in [
        ([str(video)], ["--output", "a.jsonl", "--overlay", str(video)], f"{video}: --overlay is an input"),
        (["clip.mp4"], ["--overlay", "./clip.mp4"], "error: clip.mp4: --overlay is an input"),
        (["clip.mp4"], ["--overlay", "link.mp4"], "link.mp4: --overlay is an input"),
        (["frame.png"], ["--output", "m.pt"], "m.pt: --output is the checkpoint"),
        (["frame.png"], ["--output", str(tmp_path / "frame.png")], "frame.png: --output is an input"),
        (["clip.mp4"], ["--output", "o.mp4", "--overlay", "./o.mp4"], "--output and --overlay name the same file"),
    ]:
        for force in ([], ["--force"]):
            assert main(["predict", "--checkpoint", "m.pt", *inputs, *flags, *force]) == 2
            assert message in failure(capsys)
    assert {name: Path(name).read_bytes() for name in kept} == kept
    assert sorted(os.listdir()) == ["clip.mp4", "frame.png", "link.mp4", "m.pt"]


def test_predict_replaces_an_existing_output_or_overlay_only_with_force(tiny_checkpoint, tmp_path, capsys):
    video = write_video(tmp_path / "clip.mp4", frames=2)
    out, overlay = tmp_path / "a.jsonl", tmp_path / "o.mp4"
    argv = ["predict", "--checkpoint", str(tiny_checkpoint), str(video), "--output", str(out), "--overlay", str(overlay)]
    for existing in (out, overlay):
        existing.write_bytes(b"earlier work")
        assert main(argv) == 2
        assert f"{existing}: the file exists (choose another name, or pass --force" in failure(capsys)
        assert existing.read_bytes() == b"earlier work"
        existing.unlink()
    out.write_bytes(b"earlier work")
    overlay.write_bytes(b"earlier work")
    assert main([*argv, "--force"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["frame"] == 0 and overlay.read_bytes() != b"earlier work"
    capsys.readouterr()
    for flags, message in [(["--output", ""], "the output file name is empty (give the file to write, e.g. actions.jsonl)"),
                           (["--overlay", ""], "e.g. overlay.mp4"),
                           (["--output", f"{tmp_path}/new/"], "the name ends in a slash"),
                           (["--overlay", str(tmp_path)], f"{tmp_path}: Is a directory")]:
        assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(video), *flags]) == 2
        assert message in failure(capsys)
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "clip.mp4", "o.mp4"]
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(video), "--output", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["frame"] == 0  # standard output needs no --force


def test_a_failed_predict_leaves_no_overlay_and_an_earlier_one_as_it_was(tiny_checkpoint, tmp_path, capsys):
    video = write_video(tmp_path / "clip.mp4", frames=2)
    (tmp_path / "bad.png").write_text("not an image")  # fails after the video's overlay is drawn
    argv = ["predict", "--checkpoint", str(tiny_checkpoint), str(video), str(tmp_path / "bad.png"),
            "--output", str(tmp_path / "a.jsonl"), "--overlay"]
    assert main([*argv, str(tmp_path / "new" / "o.mp4")]) == 2 and "bad.png" in failure(capsys)
    assert sorted(os.listdir(tmp_path)) == ["bad.png", "clip.mp4"]  # no temporary, nor the new folder
    overlay = tmp_path / "o.mp4"
    overlay.write_bytes(b"earlier overlay")
    assert main([*argv, str(overlay), "--force"]) == 2 and "bad.png" in failure(capsys)
    assert overlay.read_bytes() == b"earlier overlay"
    assert sorted(os.listdir(tmp_path)) == ["bad.png", "clip.mp4", "o.mp4"]


def test_predict_checks_its_inputs_before_creating_the_output_folder(tiny_checkpoint, tmp_path, capsys):
    argv = ["predict", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "missing.png"),
            "--output", str(tmp_path / "new" / "deeper" / "a.jsonl")]
    assert main(argv) == 2 and "missing.png: no such file" in failure(capsys)
    assert os.listdir(tmp_path) == []


def test_predict_refuses_a_checkpoint_whose_actions_are_not_finite(tiny_checkpoint, tmp_path, capsys):
    policy = load_policy(tiny_checkpoint, verbose=False)
    for parameter in policy.model.parameters():
        parameter.data.fill_(float("nan"))
    broken = save_checkpoint(tmp_path / "nan.pt", policy.model, policy.raw_config)  # policy.save refuses it
    Image.new("RGB", (8, 8)).save(tmp_path / "frame.png")
    out = tmp_path / "a.jsonl"
    message = f"{broken}: the model's actions are not finite numbers (its weights hold NaN or infinity)"
    argv = ["predict", "--checkpoint", str(broken), str(tmp_path / "frame.png")]
    assert main([*argv, "--output", str(out)]) == 2 and message in failure(capsys) and not out.exists()
    out.write_text("earlier work\n")
    assert main([*argv, "--output", str(out), "--force"]) == 2 and message in failure(capsys)
    assert out.read_text() == "earlier work\n"
    assert main(argv) == 2 and message in failure(capsys)  # and no line with NaN on standard output
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "frame.png", "nan.pt"]
    write_nitrogen_parquet(tmp_path / "data" / "e0.parquet", n=40)
    assert main(["eval", "--checkpoint", str(broken), "--data", str(tmp_path / "data"), "--output",
                 str(tmp_path / "eval")]) == 2  # eval too, before it evaluates: no NaN scores in a report
    assert f"{broken}: the weights hold NaN or infinity" in failure(capsys) and not (tmp_path / "eval").exists()
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--checkpoint", str(broken), "--data",
                 str(tmp_path / "data"), "--output", str(tmp_path / "eval")]) == 2  # before the first is evaluated
    assert f"{broken}: the weights hold NaN or infinity" in failure(capsys) and not (tmp_path / "eval").exists()
    assert main(["info", str(broken)]) == 0  # info describes it, and says what is wrong with it
    assert "weights         NOT FINITE:" in capsys.readouterr().out
    assert main(["rollout", "--checkpoint", str(broken), "--game", "runner", "--episodes", "1", "--output",
                 str(tmp_path / "games")]) == 2  # and no game played with NaN actions
    assert message in failure(capsys) and not list(tmp_path.glob("games/*.gif"))
    with pytest.raises(DataError) as err:  # the API too: no NaN sent to a gamepad
        load_policy(broken, verbose=False).predict(np.zeros((8, 8, 3), np.uint8))
    assert message in str(err.value)


def test_eval_names_a_later_checkpoint_or_the_output_before_evaluating_any(tiny_checkpoint, tmp_path, capsys):
    write_nitrogen_parquet(tmp_path / "data" / "e0.parquet", n=40)
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "data")]
    assert main([*argv, "--checkpoint", str(tmp_path / "typo.pt"), "--output", str(tmp_path / "eval")]) == 2
    assert "typo.pt" in failure(capsys) and not (tmp_path / "eval").exists()
    (tmp_path / "f.png").write_bytes(b"")
    assert main([*argv, "--output", str(tmp_path / "f.png" / "sub")]) == 2
    assert f"{tmp_path / 'f.png'}: Not a directory" in failure(capsys)
    assert main([*argv, "--val-fraction", "0.5", "--output", str(tmp_path / "eval")]) == 2
    assert "--val-fraction chooses the held-out episodes, and eval scores all of them (add --episodes val" \
        in failure(capsys)
    assert not (tmp_path / "eval").exists()


def test_an_overlay_that_cannot_be_written_is_named_before_any_work(tiny_checkpoint, tmp_path, capsys):
    video = write_video(tmp_path / "clip.mp4", frames=2)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):
        pytest.skip("this user writes into any folder (root)")
    argv = ["predict", "--checkpoint", str(tiny_checkpoint), str(video), "--overlay", str(locked / "o.mp4")]
    try:
        assert main(argv) == 2
    finally:
        locked.chmod(0o755)
    assert f"{locked}: Permission denied (check its permissions, or choose another path)" in failure(capsys)
    assert os.listdir(locked) == []


def bad_frame_dataset(root: Path, kind: str) -> tuple[Path, Path, str]:
    """Two 40-frame episodes whose queried frame 18 of the first does not decode: (dataset, the file
    named in the message, what the message says about it)."""
    if kind == "missing frame file":  # a CSV with a folder of frames, one of which is gone
        write_frames_folder(root / "data", n=40)
        (root / "data" / "frames" / "00018.png").unlink()
        return root / "data", root / "data" / "actions.csv", "does not exist"
    images = image_structs(40)
    images[18] = {"bytes": b"\x8f\x03random bytes, no image", "path": None} if kind == "random bytes" else None
    write_nitrogen_parquet(root / "data" / "e1.parquet", n=40, start=10)
    pq.write_table(pa.table({"image": images, **nitrogen_rows(40)}), root / "data" / "e0.parquet")
    return root / "data", root / "data" / "e0.parquet", {"random bytes": "cannot decode", "null": "missing (null)"}[kind]


@pytest.mark.parametrize("kind", ["random bytes", "null", "missing frame file"])
def test_eval_on_a_frame_that_does_not_decode_stops_with_one_line_or_skips_its_chunk(tiny_checkpoint, tmp_path,
                                                                                     capsys, kind):
    data, bad_file, reason = bad_frame_dataset(tmp_path, kind)
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in (f"{bad_file}, row 18, column 'image'", reason,
                     "(fix or remove the row, or pass --skip-bad-rows)"):
        assert fragment in lines[0], lines[0]
    assert not out.exists()

    assert main([*argv, "--skip-bad-rows"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    scores = report["checkpoints"]["tiny"]
    episodes = 1 if kind == "missing frame file" else 2
    assert scores["chunks"] == 3 * episodes - 1 and scores["skipped_bad_frames"] == 1  # frames 0, 18, 36 each
    assert len(report["skipped_bad_frames"]) == 1 and report["skipped_bad_frames"][0].startswith(f"{bad_file} row 18: ")
    assert f"skipped      1 chunk(s) left out: their frame does not decode (--skip-bad-rows); first: {bad_file} row 18" \
        in printed
    assert "  bad frames skipped             1" in printed


def test_a_training_run_that_skips_bad_rows_samples_its_validation_chunks_around_a_bad_frame(tmp_path):
    from runs import config, logged

    from nitrogen_finetuner.training.trainer import train

    (tmp_path / "data").mkdir()
    for i in range(3):  # frame 0, which validation samples a chunk from, is bad in every recording
        images = image_structs(24, start=10 * i)
        images[0] = {"bytes": b"not an image", "path": None}
        pq.write_table(pa.table({"image": images, **nitrogen_rows(24, start=10 * i)}),
                       tmp_path / "data" / f"e{i}.parquet")
    settings = {"max_steps": 1, "val_every": 1, "val_chunks": 4, "val_fraction": 0.34, "method": "full"}
    result = train(config(tmp_path / "data", tmp_path / "run", **{"data.skip_bad_rows": True}, **settings))
    assert result.step == 1 and result.val_loss is not None
    assert logged(tmp_path / "run", "val/button_f1")  # from the chunk of frame 18, the one that decodes


def test_eval_names_the_profile_and_the_columns_no_mapping_reads(tiny_checkpoint, tmp_path, capsys):
    for i in range(2):
        write_nitrogen_parquet(tmp_path / "data" / f"e{i}.parquet", n=24, start=10 * i)
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "data"),
            "--output", str(tmp_path / "eval"), "--max-chunks", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "profile      nitrogen (scored on 21/25 slots)" in printed and "unused" not in printed
    assert main([*argv, "--profile", "xbox"]) == 0  # reads only the columns named alike: start, d-pad, triggers, ...
    printed = capsys.readouterr().out.splitlines()
    assert "profile      xbox (scored on 11/25 slots)" in printed
    unused = "east, j_left, j_right, left_shoulder, north, right_shoulder, south, west"
    assert f"unused       {unused}: no profile entry or mapping reads these columns (check --profile; " \
           "`nitrogen-finetune data inspect` shows the mapping)" in printed
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["profiles"] == {"tiny": "xbox (scored on 11/25 slots)"}
    assert report["unused_columns"] == unused.split(", ")
    assert report["checkpoints"]["tiny"]["sticks"]["mean_mae"] is None  # what the unused line explains


def test_eval_says_when_checkpoints_align_their_chunks_differently(tiny_checkpoint, tmp_path, capsys):
    for i in range(2):
        write_nitrogen_parquet(tmp_path / "data" / f"e{i}.parquet", n=40, start=10 * i)
    shifted = tmp_path / "shift0.pt"
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt.setdefault("nitrogen_finetuner", {})["data_action_shift"] = 0  # as a run with data.action_shift 0 exports
    torch.save(ckpt, shifted)
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--checkpoint", str(shifted), "--data",
                 str(tmp_path / "data"), "--output", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["action_shifts"] == {"tiny": 3, "shift0": 0}
    assert "action shift 3 (tiny), 0 (shift0): each checkpoint's chunks are aligned as it was trained" \
        in capsys.readouterr().out


def test_eval_makes_frames_square_as_each_checkpoint_is_played(tiny_checkpoint, tmp_path):
    """Frames are 40x30 solid colours: padding adds black borders, cropping keeps only the colour."""
    for i in range(2):
        write_nitrogen_parquet(tmp_path / "data" / f"e{i}.parquet", n=24, start=10 * i)
    cropped = tmp_path / "cropped.pt"
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt.setdefault("nitrogen_finetuner", {})["image_fit"] = "crop"  # as a run with data.image_fit crop exports
    torch.save(ckpt, cropped)

    def scores(*flags) -> dict:
        assert main(["eval", "--checkpoint", str(cropped), "--data", str(tmp_path / "data"),
                     "--output", str(tmp_path / "eval"), "--max-chunks", "2", *flags]) == 0
        return json.loads((tmp_path / "eval" / "report.json").read_text())["checkpoints"]["cropped"]

    assert scores() == scores("--image-fit", "crop")
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["image_fits"] == {"cropped": "crop"}
    assert scores() != scores("--image-fit", "pad")


def fake_run(tiny_checkpoint: Path, folder: Path, data: Path, **settings) -> Path:
    """A run folder as training leaves it, for what eval reads: config.yaml and the exported model.pt."""
    from nitrogen_finetuner.training.config import dump_config, resolve_config

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(resolve_config(None, {"data.dataset_name": str(data),
                                                                          "output": str(folder), **settings})))
    shutil.copy(tiny_checkpoint, folder / "model.pt")
    return folder / "model.pt"


def test_eval_of_held_out_episodes_takes_the_split_of_the_run_beside_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    from nitrogen_finetuner.data.config import DataConfig
    from nitrogen_finetuner.data.episodes import split_episodes
    from nitrogen_finetuner.data.pipeline import ModelInputs, prepare_data

    data = tmp_path / "data"
    for i in range(6):
        write_nitrogen_parquet(data / f"e{i}.parquet", n=24, start=10 * i)
    recordings = prepare_data(DataConfig(dataset_name=str(data)),
                              ModelInputs.of_checkpoint(str(tiny_checkpoint))).index.recordings
    model = fake_run(tiny_checkpoint, tmp_path / "runs" / "a", data, val_fraction=0.5, seed=3)
    argv = ["eval", "--checkpoint", str(model), "--data", str(data), "--output", str(tmp_path / "eval"),
            "--episodes", "val", "--max-chunks", "1"]

    def held_out(*flags) -> tuple[list[int], str]:
        assert main([*argv, *flags]) == 0
        printed = capsys.readouterr().out
        return json.loads((tmp_path / "eval" / "report.json").read_text())["episodes"], printed

    episodes, printed = held_out()
    assert episodes == split_episodes(recordings, 0.5, 3)[1] and len(episodes) == 3  # not the default 0.1 and 0
    assert f"episodes     held-out episodes of run {model.parent}: val_fraction 0.5, seed 3 (3 episode(s))" in printed
    episodes, printed = held_out("--seed", "1")  # a value the user gives wins, and the output says it is another split
    assert episodes == split_episodes(recordings, 0.5, 1)[1]
    assert f"not the held-out recordings of run {model.parent}, but val_fraction 0.5, seed 1 (--seed)" in printed

    other = fake_run(tiny_checkpoint, tmp_path / "runs" / "b", data, val_fraction=0.15, seed=3)
    assert main([*argv, "--checkpoint", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the checkpoints come from runs that held out different episodes" in err[0], err
    assert f"{model.parent}: val_fraction 0.5, seed 3; {other.parent}: val_fraction 0.15, seed 3" in err[0]
    assert not (tmp_path / "eval" / "traces_model_2.png").exists()  # refused before any checkpoint is evaluated

    # What the command did above, and the cases left, without evaluating (the split is all that differs):
    from nitrogen_finetuner.evaluation.report import Split, held_out_split

    both, ours = [str(model), str(other)], str(tiny_checkpoint)
    assert held_out_split(both, 0.3, 2) == Split(0.3, 2, given=("val_fraction", "seed"))  # one split chosen
    assert held_out_split([ours]) == Split(0.1, 0)  # no run: eval's defaults
    assert held_out_split([ours, str(model)]) == Split(0.5, 3, runs=(str(model.parent),), run_data=(str(data),))
    assert held_out_split(both, val_fraction=0.2) == Split(0.2, 3, runs=(str(model.parent), str(other.parent)),
                                                           given=("val_fraction",), run_data=(str(data),))
    moved = tmp_path / "moved"
    assert held_out_split([str(model)]).describe(str(moved)).endswith(f"(the run trained on {data}, not on {moved})")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.yaml").write_text("colour: blue\n")  # not a run's config
    shutil.copy(tiny_checkpoint, tmp_path / "folder" / "model.pt")
    with pytest.raises(DataError, match="reads the split of the run beside the checkpoint .*unknown setting colour"):
        held_out_split([str(tmp_path / "folder" / "model.pt")])
    assert held_out_split([str(tmp_path / "folder" / "model.pt")], 0.2, 1) == Split(0.2, 1, given=("val_fraction", "seed"))


def test_eval_scores_the_recordings_the_run_held_out_after_the_data_grew(tmp_path, capsys):
    from nitrogen_finetuner.training.trainer import train
    from runs import config

    data = tmp_path / "data"
    for i in range(4):
        write_nitrogen_parquet(data / f"rec{i}.parquet", n=24, start=10 * i)
    train(config(data, tmp_path / "run", max_steps=1, val_fraction=0.5, export_at_end=True))
    held_out = json.loads((tmp_path / "run" / "held_out.json").read_text())["recordings"]
    assert len(held_out) == 2 and all(name.startswith("rec") for name in held_out)
    (tmp_path / "run" / "held_out.json").unlink()  # as a run from before the record: a resume writes it
    train(config(data, tmp_path / "run", max_steps=2, val_fraction=0.5, export_at_end=True), resume=True)
    assert json.loads((tmp_path / "run" / "held_out.json").read_text())["recordings"] == held_out
    for i in range(4, 8):  # more sessions recorded since: they shift the seeded shuffle of the recordings
        write_nitrogen_parquet(data / f"new{i}.parquet", n=24, start=10 * i)
    argv = ["eval", "--checkpoint", str(tmp_path / "run" / "model.pt"), "--data", str(data), "--episodes", "val",
            "--max-chunks", "2", "--output", str(tmp_path / "eval")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert sorted(Path(name).name for name in report["episode_names"]) == held_out
    assert f"held-out recordings of run {tmp_path / 'run'}: the 2 it recorded" in capsys.readouterr().out
    copy = shutil.copy(tmp_path / "run" / "model.pt", tmp_path / "copy.pt")  # the export records the split
    assert main([*argv[:2], str(copy), *argv[3:]]) == 0
    assert f"held-out recordings of the run that wrote {copy}: the 2 it recorded" in capsys.readouterr().out
    assert main([*argv, "--seed", "5"]) == 0  # another start noise, the same recordings
    assert sorted(Path(n).name for n in json.loads((tmp_path / "eval" / "report.json").read_text())["episode_names"]) \
        == held_out
    assert main([*argv[:4], str(data / held_out[1]), *argv[5:]]) == 0  # one held-out file of the data, given alone
    assert "the 2 it recorded, 1 of them not in this data" in capsys.readouterr().out
    (data / held_out[0]).unlink()
    assert main(argv) == 0
    assert "the 2 it recorded, 1 of them not in this data" in capsys.readouterr().out
    one_table = tmp_path / "one.parquet"  # the same recordings read as one file: none is named as the run named it
    pq.write_table(pa.concat_tables([pq.read_table(f) for f in sorted(data.glob("*.parquet"))]), one_table)
    assert main([*argv[:4], str(one_table), *argv[5:]]) == 2
    assert "none of the 2 recordings run" in capsys.readouterr().err


def test_held_out_recordings_are_matched_by_where_they_lie_not_by_file_name(tmp_path, capsys):
    from nitrogen_finetuner.training.trainer import train
    from runs import config

    data = tmp_path / "data"  # two games' recordings, named alike in their folders
    for game in ("runner", "collector"):
        for i in range(3):
            write_nitrogen_parquet(data / game / f"episode_{i}.parquet", n=24, start=10 * i)
    train(config(data, tmp_path / "run", max_steps=1, val_fraction=0.5, seed=3, export_at_end=True))
    held_out = json.loads((tmp_path / "run" / "held_out.json").read_text())["recordings"]

    def scored(folder: Path) -> tuple[list[str], str]:
        argv = ["eval", "--checkpoint", str(tmp_path / "run" / "model.pt"), "--data", str(folder), "--episodes", "val",
                "--max-chunks", "1", "--output", str(tmp_path / "eval")]
        assert main(argv) == 0, capsys.readouterr().err
        names = json.loads((tmp_path / "eval" / "report.json").read_text())["episode_names"]
        return sorted(Path(name).relative_to(folder.parent).as_posix() for name in names), capsys.readouterr().out

    runner = sorted(name for name in held_out if name.startswith("runner/"))
    assert runner and len(runner) < len(held_out)  # the split holds out recordings of both games
    names, printed = scored(data / "runner")  # one game's folder within the data the run read
    assert names == runner
    assert f"the {len(held_out)} it recorded, {len(held_out) - len(runner)} of them not in this data" in printed
    shutil.copytree(data, tmp_path / "copy" / "data")  # a copy elsewhere: matched by the end of each path
    shutil.rmtree(data)
    names, _ = scored(tmp_path / "copy" / "data" / "runner")
    assert names == runner


def test_held_out_recordings_are_found_after_the_data_moved_into_its_old_folder_or_was_saved_to_disk(tmp_path):
    import datasets

    from nitrogen_finetuner.actions.layout import ActionLayout
    from nitrogen_finetuner.data.config import DataConfig
    from nitrogen_finetuner.data.episodes import recording_key
    from nitrogen_finetuner.data.pipeline import ModelInputs, prepare_data
    from nitrogen_finetuner.evaluation.report import Split

    inputs = ModelInputs(ActionLayout.resolve(25, False), horizon=4, action_shift=1, image_size=16)

    def recordings_of(path: Path) -> list[str]:
        return prepare_data(DataConfig(dataset_name=str(path)), inputs).index.recordings

    def held_out_by(run_data: Path, held: list[int]) -> Split:
        recorded = recordings_of(run_data)
        return Split(0.5, 0, ("run",), (), (str(run_data),), tuple(recording_key(recorded[e], str(run_data))
                                                                    for e in held))

    data = tmp_path / "data"
    for i in range(4):
        write_nitrogen_parquet(data / f"episode_{i}.parquet", n=12, start=10 * i)
    split = held_out_by(data, [3])
    (data / "v1").mkdir()  # the recordings moved into a folder of their own, beside newer ones
    for i in range(4):
        (data / f"episode_{i}.parquet").rename(data / "v1" / f"episode_{i}.parquet")
        write_nitrogen_parquet(data / "v2" / f"episode_{i}.parquet", n=12, start=50 + 10 * i)
    moved = recordings_of(data / "v1")
    assert split.choose(moved, str(data / "v1")) == ([3], 1)
    saved = tmp_path / "saved"  # one save_to_disk folder whose recordings are episode ids
    rows = {"image": image_structs(40), **nitrogen_rows(40), "episode_id": [i // 10 for i in range(40)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(saved))
    split = held_out_by(saved, [0, 2])
    saved.rename(tmp_path / "elsewhere")
    assert split.choose(recordings_of(tmp_path / "elsewhere"), str(tmp_path / "elsewhere")) == ([0, 2], 2)


def test_an_exported_copy_far_from_its_run_keeps_the_runs_held_out_split(recordings, tmp_path):
    from nitrogen_finetuner.evaluation.report import Split, held_out_split
    from nitrogen_finetuner.training.trainer import train
    from runs import config

    train(config(recordings, tmp_path / "run", max_steps=1, val_fraction=0.5, seed=7, export_at_end=True))
    copy = tmp_path / "shared" / "my-game.pt"  # the README's export, handed on without its run folder
    assert main(["export", str(tmp_path / "run"), str(copy)]) == 0
    held_out = tuple(json.loads((tmp_path / "run" / "held_out.json").read_text())["recordings"])
    assert held_out_split([str(copy)]) == Split(0.5, 7, runs=(str(copy),), run_data=(str(recordings),),
                                                recordings=held_out)
    assert held_out_split([str(copy)], seed=1) == Split(0.5, 1, runs=(str(copy),), given=("seed",),
                                                        run_data=(str(recordings),), recordings=held_out)
    assert held_out_split([str(copy)], val_fraction=0.5) == Split(0.5, 7, runs=(str(copy),), given=("val_fraction",),
                                                                  run_data=(str(recordings),))
