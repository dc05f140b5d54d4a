"""The run folder stays one run's: its base, its checkpoints, its logs, and one training at a time."""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nitrogen_finetuner import load_policy
from nitrogen_finetuner.cli import main
from nitrogen_finetuner.data.episodes import split_episodes
from nitrogen_finetuner.files import FILE_MODE
from nitrogen_finetuner.model.checkpoint import load_checkpoint, read_record, save_checkpoint
from nitrogen_finetuner.model.presets import build_preset
from nitrogen_finetuner.training import checkpoints as checkpoints_module
from nitrogen_finetuner.training import trainer as trainer_module
from nitrogen_finetuner.training.checkpoints import checkpoint_dirs, load_training_state
from nitrogen_finetuner.training.trainer import train
from recordings import write_frames_folder, write_nitrogen_parquet
from runs import config, final_weights, logged, train_in_a_process

FAST = ["--set", "num_workers=0", "--set", "batch_size=4", "--set", "checkpoint_every=2", "--set", "val_every=0"]


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nitrogen-finetune:")]
    assert len(lines) == 1, lines
    return lines[0]


def snapshot(run_dir: Path) -> dict:
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def write_base(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(path, *build_preset("tiny"))


def test_a_new_run_from_a_file_drops_the_base_pt_an_earlier_run_left(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_base(run_dir / "base.pt", seed=123)  # a preset run's, stopped before its first checkpoint
    base = write_base(tmp_path / "ng.pt", seed=7)
    train(config(recordings, run_dir, base=str(base), max_steps=2))
    assert not (run_dir / "base.pt").exists()
    assert main(["export", str(run_dir), str(tmp_path / "out.pt")]) == 0
    assert main(["train", "--resume", str(run_dir), "--max-steps", "3", *FAST]) == 0


def test_a_resume_naming_another_base_than_its_preset_is_refused(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))  # the tiny preset, seed 0, saved as base.pt
    before = snapshot(run_dir)
    other = write_base(tmp_path / "other.pt", seed=5)
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", "--base", str(other), *FAST]) == 2
    assert "other.pt: not the base this run was trained from" in one_error_line(capsys)
    assert snapshot(run_dir) == before
    same = write_base(tmp_path / "same.pt", seed=0)  # the preset's weights under another name will do
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", "--base", str(same), *FAST]) == 0


HOLD_LOCK = """
import os, sys, time
from pathlib import Path
from nitrogen_finetuner.training.run_lock import RunFolderLock
with RunFolderLock(Path(sys.argv[1]), is_main=True):
    if os.fork() == 0:  # a child forked meanwhile, as a DataLoader worker is, outlives the lock
        time.sleep(60)
        os._exit(0)
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
sys.stdin.readline()
"""


def test_a_second_training_into_a_run_folder_in_use_is_refused(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--data", str(recordings), "--output", str(run_dir), "--max-steps", "2", *FAST]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert main(args) == 2
        assert "another training is writing to this run folder" in one_error_line(capsys)
        assert not checkpoint_dirs(run_dir)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert main(args) == 0  # released when that training ends, though its forked child lives on
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_an_export_while_the_run_trains_toward_its_first_checkpoint_says_so(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))
    shutil.rmtree(run_dir / "checkpoints")  # as a run that has started and not yet saved
    (run_dir / "summary.json").unlink()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert main(["export", str(run_dir), str(tmp_path / "out.pt")]) == 2
        assert "the run is training and has written no checkpoint yet" in one_error_line(capsys)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert main(["export", str(run_dir), str(tmp_path / "out.pt")]) == 2
        assert "the run has no checkpoint to export" in one_error_line(capsys)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_export_takes_the_runs_own_checkpoints_by_name_or_folder_and_no_other_runs(recordings, tmp_path, capsys):
    run_dir, other = tmp_path / "run", tmp_path / "other"
    train(config(recordings, run_dir, max_steps=4))
    train(config(recordings, other, max_steps=2, seed=1))
    out = tmp_path / "out.pt"
    assert main(["export", str(run_dir), str(out), "--checkpoint", "step_000002"]) == 0
    assert torch.load(out, weights_only=True)["step"] == 2
    assert main(["export", str(run_dir), str(out), "--checkpoint", str(checkpoint_dirs(run_dir)[0]), "--force"]) == 0
    capsys.readouterr()
    foreign = checkpoint_dirs(other)[-1]
    assert main(["export", str(run_dir), str(out), "--checkpoint", str(foreign), "--force"]) == 2
    assert "not a checkpoint of this run" in (line := one_error_line(capsys))
    assert "its checkpoints: step_000002, step_000004" in line
    assert main(["export", str(run_dir), str(out), "--checkpoint", "step_000003", "--force"]) == 2
    assert "step_000003: no such checkpoint" in one_error_line(capsys)


def test_export_takes_a_moved_base_with_the_same_weights(recordings, tmp_path, capsys):
    base = write_base(tmp_path / "ng.pt", seed=3)
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, base=str(base), max_steps=2))
    moved = base.rename(tmp_path / "moved.pt")
    out = tmp_path / "out.pt"
    capsys.readouterr()
    assert main(["export", str(run_dir), str(out), "--force"]) == 2
    assert "give its new path (--base" in one_error_line(capsys)
    assert main(["export", str(run_dir), str(out), "--base", str(write_base(tmp_path / "x.pt", seed=4)), "--force"]) == 2
    assert "x.pt: not the base this run was trained from" in one_error_line(capsys)
    assert main(["export", str(run_dir), str(out), "--base", str(moved), "--force"]) == 0
    torch.manual_seed(3)
    model, raw = build_preset("tiny")
    raw["tokenizer_cfg"]["old_layout"] = True  # the same weights, read with the other slot order
    relabelled = save_checkpoint(tmp_path / "relabelled.pt", model, raw)
    capsys.readouterr()
    assert main(["export", str(run_dir), str(out), "--base", str(relabelled), "--force"]) == 2
    assert "relabelled.pt: not the base this run was trained from (its action_layout" in one_error_line(capsys)
    raw["tokenizer_cfg"]["old_layout"], raw["experiment_name"] = False, "renamed"  # a name reads nothing
    assert main(["export", str(run_dir), str(out), "--base", str(save_checkpoint(tmp_path / "renamed.pt", model, raw)),
                 "--force"]) == 0


def test_a_damaged_checkpoint_is_one_line_and_the_one_before_it_resumes(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=4))
    newest = checkpoint_dirs(run_dir)[-1]
    (newest / "weights.safetensors").write_bytes(b"\0" * 100)  # a copy cut short
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--max-steps", "6", *FAST]) == 2
    line = one_error_line(capsys)
    assert "checkpoint step_000004 cannot be read" in line and "delete the folder" in line
    shutil.rmtree(newest)
    assert main(["train", "--resume", str(run_dir), "--max-steps", "6", *FAST]) == 0
    assert load_training_state(checkpoint_dirs(run_dir)[-1]).progress.step == 6
    (checkpoint_dirs(run_dir)[-1] / "progress.json").write_text('{"step": 6, "ep')  # cut short
    assert main(["export", str(run_dir), str(tmp_path / "best.pt"), "--checkpoint", "best"]) == 2
    line = one_error_line(capsys)
    assert "checkpoint step_000006 cannot be read" in line and "delete the folder" in line


def test_an_export_needs_only_the_weights_and_a_missing_file_is_named(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=4))
    newest = checkpoint_dirs(run_dir)[-1]
    (newest / "optimizer.pt").unlink()
    assert main(["export", str(run_dir), str(tmp_path / "out.pt")]) == 0
    capsys.readouterr()
    assert main(["info", str(newest)]) == 2
    assert one_error_line(capsys).endswith(f"a folder, not a checkpoint file (a training checkpoint: `nitrogen-finetune "
                                           f"export {run_dir} OUT.pt --checkpoint step_000004` writes it as a "
                                           "checkpoint file)")
    assert main(["info", str(run_dir)]) == 2  # no model.pt: the run was not exported
    assert one_error_line(capsys).endswith(f"(a run folder: `nitrogen-finetune export {run_dir} OUT.pt` writes its "
                                           "model)")
    weights = (newest / "weights.safetensors").rename(tmp_path / "weights.safetensors")
    capsys.readouterr()
    assert main(["export", str(run_dir), str(tmp_path / "out.pt"), "--force"]) == 2
    assert "checkpoint step_000004 is incomplete: weights.safetensors is missing" in one_error_line(capsys)
    weights.rename(newest / "weights.safetensors")
    record = (run_dir / "base.json").read_text()
    (run_dir / "base.json").write_text(record[:20])  # cut short
    assert main(["export", str(run_dir), str(tmp_path / "out.pt"), "--force"]) == 2
    assert one_error_line(capsys).endswith("base.json: the run's record of its base is damaged; put back a copy, or "
                                           "delete it and the base is no longer checked")
    (run_dir / "base.json").write_text(record)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--max-steps", "6", *FAST]) == 2
    assert one_error_line(capsys) == (f"nitrogen-finetune: error: {newest}: checkpoint step_000004 is incomplete: "
                                      "optimizer.pt is missing (copy it again if it came from elsewhere; else delete "
                                      "the folder, and --resume continues from step_000002)")
    progress = (newest / "progress.json").read_text()
    for damage, message in [("", "is incomplete: progress.json is missing"), (progress[:10], "cannot be read (")]:
        (newest / "progress.json").unlink(missing_ok=True)
        if damage:  # cut short
            (newest / "progress.json").write_text(damage)
        assert main(["train", "--resume", str(run_dir), "--max-steps", "6", *FAST]) == 2
        assert f"checkpoint step_000004 {message}" in one_error_line(capsys)
    (newest / "progress.json").write_text(progress)
    (newest / "config.yaml").write_text("lora: [\n")  # the checkpoint's own copy of the config, cut short
    assert main(["train", "--resume", str(run_dir), "--max-steps", "6", *FAST]) == 2
    assert one_error_line(capsys).endswith("config.yaml: not valid YAML (expected the node content, but found "
                                           "'<stream end>' at line 2, column 1) (it is damaged: copy it again if it "
                                           "came from elsewhere; else delete the folder, and --resume continues from "
                                           "step_000002)")


def test_a_resume_without_its_random_state_is_refused_unless_the_process_is_new(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))
    newest = checkpoint_dirs(run_dir)[-1]
    rng = (newest / "rng_rank0.safetensors").rename(tmp_path / "rng_rank0.safetensors")
    assert load_training_state(newest, rank=1).rng is None  # a process the run did not have starts afresh
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--max-steps", "3", *FAST]) == 2
    assert one_error_line(capsys).endswith(
        "checkpoint step_000002 is incomplete: rng_rank0.safetensors is missing (copy it again if it came from "
        "elsewhere; else delete the folder, and start the run again without --resume (it has no checkpoint before "
        "this one))")
    rng.rename(newest / "rng_rank0.safetensors")
    (newest / "optimizer.pt").write_bytes(b"")  # a file emptied, with no earlier checkpoint to go back to
    assert main(["train", "--resume", str(run_dir), "--max-steps", "3", *FAST]) == 2
    assert "checkpoint step_000002 cannot be read (a file ends early: it is empty or cut short)" in one_error_line(capsys)


def test_a_resume_with_nothing_to_train_changes_nothing(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))
    before = snapshot(run_dir)
    assert main(["train", "--resume", str(run_dir), "--max-steps", "2", *FAST]) == 2
    assert "the run has trained 2 steps and max_steps is 2: nothing to train" in one_error_line(capsys)
    assert snapshot(run_dir) == before  # summary.json keeps its losses


def logged_steps(run_dir: Path) -> list[int]:
    """The steps of metrics.jsonl's training rows (the final validation has a row of its own)."""
    return [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in row]


def test_logs_hold_each_step_once_across_a_fresh_start_and_a_resume(recordings, tmp_path):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=3, checkpoint_every=0))
    for path in run_dir.iterdir():  # as an attempt killed before its first checkpoint leaves the folder
        if path.is_dir() and path.name != "tensorboard":
            shutil.rmtree(path)
        elif path.is_file() and path.name not in ("metrics.jsonl", "base.pt", "base.json"):
            path.unlink()
    train(config(recordings, run_dir, max_steps=3, learning_rate=1e-3, checkpoint_every=2))
    assert logged(run_dir, "train/lr")[0] == pytest.approx(1e-3)
    assert logged_steps(run_dir) == [1, 2, 3]
    assert len(list((run_dir / "tensorboard").iterdir())) == 1
    shutil.rmtree(checkpoint_dirs(run_dir)[-1])  # killed after logging step 3, before its checkpoint
    with open(run_dir / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 3, "train/lo')  # and the disk filled up while it logged
    train(config(recordings, run_dir, max_steps=4, learning_rate=1e-3, checkpoint_every=2), resume=True)
    assert logged_steps(run_dir) == [1, 2, 3, 4]
    assert tensorboard_steps(run_dir, "train/loss") == [1, 2, 3, 4]


def tensorboard_steps(run_dir: Path, name: str) -> list[int]:
    """The steps of ``name`` as TensorBoard shows them, across the run's event files."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(name)]


def test_a_resume_that_only_finishes_the_run_logs_its_validation_once(recordings, tmp_path):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))
    (run_dir / "summary.json").unlink()  # killed while it finished, after its validation was logged
    train(config(recordings, run_dir, max_steps=2), resume=True)
    assert len(logged(run_dir, "val/loss")) == 1 and logged_steps(run_dir) == [1, 2]
    assert tensorboard_steps(run_dir, "val/loss") == [2] and tensorboard_steps(run_dir, "train/loss") == [1, 2]


@pytest.mark.parametrize("flags, message", [
    (["--set", "mixed_precision=fp16"], "mixed_precision fp16 needs a GPU"),
])
def test_settings_the_machine_cannot_honour_are_refused(recordings, tmp_path, capsys, flags, message):
    assert main(["train", "--data", str(recordings), "--output", str(tmp_path / "run"), *FAST, *flags]) == 2
    assert message in one_error_line(capsys)


def test_resume_continues_in_the_runs_own_folder(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))
    assert main(["train", "--resume", str(run_dir), "--output", str(tmp_path / "elsewhere"), *FAST]) == 2
    assert f"--resume continues the run in {run_dir}, not in --output" in one_error_line(capsys)


def test_final_outputs_that_cannot_be_written_are_one_line_naming_the_complete_checkpoint(recordings, tmp_path,
                                                                                         capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_module, "save_file", disk_full)
    run_dir = tmp_path / "run"
    args = ["train", "--data", str(recordings), "--output", str(run_dir), "--max-steps", "2", *FAST]
    assert main([*args, "--method", "full"]) == 2
    line = one_error_line(capsys)
    assert "weights.safetensors: cannot be written (No space left on device)" in line
    assert f"the run's last checkpoint is complete (then `nitrogen-finetune export {run_dir}" in line
    assert not (run_dir / "weights.safetensors").exists()
    assert main(["export", str(run_dir), str(tmp_path / "out.pt"), "--force"]) == 0
    assert (tmp_path / "out.pt").stat().st_mode & 0o777 == FILE_MODE


def test_an_export_onto_a_folder_names_the_folder(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))
    (tmp_path / "out").mkdir()
    capsys.readouterr()
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 2
    assert one_error_line(capsys) == (f"nitrogen-finetune: error: {tmp_path / 'out'}: Is a directory "
                                      "(it is a folder: give a file name)")


def test_a_run_started_with_relative_paths_resumes_and_exports_from_anywhere(recordings, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(recordings, work / "recordings")
    write_base(work / "ng.pt", seed=2)
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "--data", "recordings", "--base", "ng.pt", "--output", "run", "--max-steps", "2", *FAST]) == 0
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(work / "run"), "--max-steps", "3", *FAST]) == 0
    assert main(["export", str(work / "run"), "out.pt"]) == 0
    assert read_record(elsewhere / "out.pt")["fine_tuned_from"] == str(work / "ng.pt")
    monkeypatch.chdir(tmp_path)  # a preset's run exported by a relative path records the preset
    assert main(["train", "--data", str(recordings), "--base", "tiny", "--output", "tiny_run", "--max-steps", "1",
                 *FAST]) == 0
    assert main(["export", "tiny_run", "tiny.pt"]) == 0
    assert read_record(tmp_path / "tiny.pt")["fine_tuned_from"] == "tiny"


def test_episodes_too_short_for_a_window_say_so(tmp_path, capsys):
    for i in range(3):  # 3 frames each: with action_shift 3 no frame has an action row to predict
        write_nitrogen_parquet(tmp_path / "data" / f"episode_{i}.parquet", n=3)
    assert main(["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"), *FAST]) == 2
    line = one_error_line(capsys)
    assert "the training episodes make no window: a frame needs an action row 3 rows after it" in line
    assert "1 of 3 episodes are held out for validation" in line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 trains on a GPU only")
def test_fp16_loss_scale_state_is_checkpointed_and_resumed(recordings, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "false"}
    # A constant learning rate: the 4-step run and the 2 + 2-step run take the same steps.
    common = [*FAST, "--set", "mixed_precision=fp16", "--set", "warmup_steps=0", "--set", "min_learning_rate_ratio=1.0",
              "--data", str(recordings)]
    train_in_a_process(*common, "--output", str(tmp_path / "straight"), "--max-steps", "4", env=env)
    train_in_a_process(*common, "--output", str(tmp_path / "resumed"), "--max-steps", "2", env=env)
    train_in_a_process(*common, "--resume", str(tmp_path / "resumed"), "--max-steps", "4", env=env)
    scalers = [torch.load(checkpoint_dirs(tmp_path / name)[-1] / "optimizer.pt", weights_only=True)["scaler"]
               for name in ("straight", "resumed")]
    assert scalers[0] is not None and scalers[0] == scalers[1]  # the scale and its growth tracker go on


def test_a_new_run_never_overwrites_a_finished_run_whose_checkpoints_were_deleted(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2, export_at_end=True))
    shutil.rmtree(run_dir / "checkpoints")  # to free the disk
    assert main(["export", str(run_dir), str(tmp_path / "out.pt")]) == 2
    assert one_error_line(capsys).endswith("the run finished, and its checkpoints, which export reads, were deleted "
                                           f"(its model is {run_dir / 'model.pt'})")
    before = snapshot(run_dir)
    assert main(["train", "--data", str(recordings), "--output", str(run_dir), "--max-steps", "2", *FAST]) == 2
    assert "the run folder holds a finished run (model.pt, summary.json, adapter)" in one_error_line(capsys)
    assert snapshot(run_dir) == before


def test_a_run_that_cannot_start_leaves_no_folder_and_no_base_behind(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(run_dir), *FAST]) == 2
    assert not run_dir.exists()
    run_dir.mkdir()  # the user's own folder stays, but holds no base of a run that never started
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(run_dir), *FAST]) == 2
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    frozen = ["--set", "tune.diffusion_model=false", "--set", "lora.targets=[dit_attention]"]  # a refused LoRA setup
    assert main(["train", "--data", str(recordings), "--output", str(tmp_path / "frozen"), *FAST, *frozen]) == 2
    assert "LoRA target 'dit_attention' is frozen" in capsys.readouterr().err
    assert not (tmp_path / "frozen").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_base_saved_in_half_precision_trains_float32_weights(recordings, tmp_path, dtype):
    ckpt = torch.load(write_base(tmp_path / "base.pt", seed=3), weights_only=True)
    exact = {k: v.clone() for k, v in ckpt["model"].items()}
    ckpt["model"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "half.pt")
    model = load_checkpoint(tmp_path / "half.pt").model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    weights = model.state_dict()
    assert all(torch.equal(weights[k], v.to(dtype).float()) for k, v in exact.items() if v.is_floating_point())
    train(config(recordings, tmp_path / "run", base=str(tmp_path / "half.pt"), method="full", max_steps=2))
    assert {t.dtype for t in final_weights(tmp_path / "run").values()} == {torch.float32}


def test_a_base_whose_weights_are_not_numbers_is_refused_before_the_run_starts(recordings, tmp_path, capsys):
    ckpt = torch.load(write_base(tmp_path / "base.pt", seed=3), weights_only=True)
    ckpt["model"]["position_embedding.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    run_dir = tmp_path / "run"
    assert main(["train", "--base", str(tmp_path / "nan.pt"), "--data", str(recordings), "--output", str(run_dir),
                 *FAST]) == 2
    assert one_error_line(capsys).endswith(f"{tmp_path / 'nan.pt'}: its weights hold NaN or infinity "
                                           "(position_embedding.weight): a base must be a working "
                                           "model; download or export it again")
    assert not run_dir.exists()


def test_keep_best_on_one_recording_says_it_keeps_no_best_checkpoint(tmp_path, capsys):
    data = write_nitrogen_parquet(tmp_path / "one.parquet", n=24)  # nothing to hold out for validation
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--max-steps", "2", *FAST,
                 "--set", "keep_best=true"]) == 0
    assert "note        keep_best keeps no best checkpoint: no validation loss tells which step is best" \
        in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_checkpoint"] is None


def test_a_resume_that_turns_ema_off_exports_the_trained_weights(recordings, tmp_path):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2, ema_decay=0.9, export_at_end=True))
    assert read_record(run_dir / "model.pt")["weights"] == "ema"
    for name in ("summary.json", "model.pt"):  # as if stopped while it finished: the resume trains no step
        (run_dir / name).unlink()
    assert main(["train", "--resume", str(run_dir), "--set", "num_workers=0", "--set", "ema_decay=null"]) == 0
    assert read_record(run_dir / "model.pt")["weights"] == "final"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_asking_for_wandb_without_it_installed_is_refused_before_the_run_starts(recordings, tmp_path, capsys):
    assert main(["train", "--data", str(recordings), "--output", str(tmp_path / "run"), *FAST, "--set", "wandb=true"]) == 2
    assert "wandb is true, and the wandb package is not installed (pip install wandb" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_run_folder_recovers_from_a_deleted_config_and_a_damaged_preset_base(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))
    (run_dir / "config.yaml").write_text("")  # emptied: the message says which copy stands in once it is gone
    assert main(["train", "--resume", str(run_dir), "--max-steps", "3", *FAST]) == 2
    assert one_error_line(capsys).endswith("the run's config.yaml does not hold a whole config (delete it, and the "
                                           "copy in checkpoints/step_000002 stands in)")
    (run_dir / "config.yaml").unlink()  # the newest checkpoint keeps a copy
    (run_dir / "base.pt").write_bytes(b"PK damaged")
    assert main(["train", "--resume", str(run_dir), "--max-steps", "3", *FAST]) == 2
    assert "base.pt: not a readable torch checkpoint" in (line := one_error_line(capsys))
    assert "delete it: the run rebuilds its tiny base from its seed" in line
    (run_dir / "base.pt").unlink()
    assert main(["train", "--resume", str(run_dir), "--max-steps", "3", *FAST]) == 0
    assert main(["train", "--resume", str(run_dir), "--set", f"output={tmp_path / 'other'}", *FAST]) == 2
    assert "--resume continues the run in" in one_error_line(capsys)


def test_text_settings_keep_what_yaml_would_read_as_a_date_or_a_number(recordings, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(f"output: 2024.10\ndata:\n  dataset_name: {recordings}\n  split: 007\n"
                                       "  mapping: {0x1F: SOUTH}\nmax_steps: 0010\n")
    for given in ("2024-01-05", "2024.10", "007", "0x1F", "1_000", "1e3"):
        assert main(["train", "--data", str(recordings), "--set", f"output={given}", "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["output"] == given
    assert main(["train", "run.yaml", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["output"], config["data"]["split"]) == ("2024.10", "007")
    assert config["data"]["mapping"] == {"0x1F": "SOUTH"}
    assert config["max_steps"] == 8  # a number setting reads YAML's numbers as YAML does (0010 is octal)
    assert main(["train", "--data", str(recordings), "--set", "data.mapping={0x1F: SOUTH, 31: NORTH, 1.0: WEST, "
                 "1: EAST}", "--print-config"]) == 0  # four columns, though YAML reads two pairs as equal numbers
    assert yaml.safe_load(capsys.readouterr().out)["data"]["mapping"] == {"0x1F": "SOUTH", "31": "NORTH",
                                                                          "1.0": "WEST", "1": "EAST"}
    for setting, message in [("mapping={on: SOUTH}", "mapping: a column name reads as YAML's true: quote it"),
                             ("mapping={null: SOUTH}", "mapping: a column name reads as YAML's null: quote it"),
                             ("mapping={A: no}", "mapping: A: false is no action slot: give one (SOUTH, LEFT_X, ...)"),
                             ("stick_range={on: int16}", "stick_range: a column name reads as YAML's true: quote it")]:
        assert main(["train", "--data", str(recordings), "--set", f"data.{setting}", "--print-config"]) == 2
        assert f"invalid setting data.{message}" in one_error_line(capsys)
    assert main(["data", "inspect", str(recordings), "--stick-range", "{on: int16}", "--output", "report"]) == 2
    assert "invalid setting stick_range: a column name reads as YAML's true: quote it" in one_error_line(capsys)
    assert main(["train", "--data", str(recordings), "--set", "output=007", "--max-steps", "2", *FAST]) == 0
    assert main(["train", "--resume", "007", "--set", "output=007", "--max-steps", "4", *FAST]) == 0  # not 7
    assert load_training_state(checkpoint_dirs(tmp_path / "007")[-1]).progress.step == 4


def test_set_overrides_apply_in_the_order_last_given_and_a_data_section_is_not_the_demo(recordings, tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def printed(*flags: str) -> dict:
        assert main(["train", *flags, "--print-config"]) == 0
        return yaml.safe_load(capsys.readouterr().out)

    config = printed("--data", str(recordings), "--set", "lora.rank=8", "--set", "lora={alpha: 4}",
                     "--set", "lora.rank=9")
    assert (config["lora"]["rank"], config["lora"]["alpha"]) == (9, 4)  # set again after the section it replaced
    config = printed("--set", f"data={{dataset_name: {recordings}}}")  # the data named as a section: not the demo
    assert (config["method"], config["max_steps"], config["data"]["dataset_name"]) == ("lora", 200, str(recordings))
    assert printed("--data", str(recordings), "--set", "output=~/runs/x")["output"] == str(tmp_path / "home/runs/x")


def test_a_run_folder_inside_the_data_folder_is_refused(recordings, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(recordings, data)
    for output in (data / "run", data):
        assert main(["train", "--data", str(data), "--output", str(output), *FAST]) == 2
        assert "the run folder is inside the data folder, whose files are all read as recordings" \
            in one_error_line(capsys)
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in recordings.iterdir())


def test_export_never_replaces_the_runs_base_or_checkpoints_and_asks_before_replacing_a_file(recordings, tmp_path,
                                                                                            capsys):
    base = write_base(tmp_path / "base.pt", seed=1)
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, base=str(base), max_steps=2))
    base_bytes, before = base.read_bytes(), snapshot(run_dir)
    checkpoint_file = checkpoint_dirs(run_dir)[-1] / "weights.safetensors"
    for target in (base, run_dir / "base.json", run_dir / "config.yaml"):
        assert main(["export", str(run_dir), str(target), "--force"]) == 2
        assert "the run's base or one the run needs to be exported or resumed again" in one_error_line(capsys)
    for target in (checkpoint_file, checkpoint_file.parent / "mine.pt"):  # rotation would delete a new one too
        assert main(["export", str(run_dir), str(target), "--force"]) == 2
        assert "checkpoint folders are the run's, and rotation deletes them" in one_error_line(capsys)
    assert base.read_bytes() == base_bytes and snapshot(run_dir) == before
    out = tmp_path / "game.pt"
    out.write_bytes(b"an earlier export")
    assert main(["export", str(run_dir), str(out)]) == 2
    assert "the file exists (choose another name, or pass --force to replace it)" in one_error_line(capsys)
    assert main(["export", str(run_dir), str(out), "--force"]) == 0 and out.read_bytes()[:2] == b"PK"
    assert main(["export", str(run_dir), str(tmp_path / "new_folder") + "/"]) == 2
    assert "it names a folder, not a file" in one_error_line(capsys) and not (tmp_path / "new_folder").exists()
    assert main(["export", str(run_dir), ""]) == 2
    assert "the output file name is empty" in one_error_line(capsys)
    assert main(["export", "", str(tmp_path / "x.pt")]) == 2
    assert "the run folder name is empty" in one_error_line(capsys)
    assert main(["export", str(run_dir), str(tmp_path / "game.safetensors")]) == 2
    assert "is a torch.save file" in one_error_line(capsys) and not (tmp_path / "game.safetensors").exists()


def test_an_export_with_another_prediction_horizon_states_it_throughout_its_config(recordings, tmp_path):
    run = train(config(recordings, tmp_path / "run", max_steps=1, export_at_end=True, **{"data.prediction_horizon": 6}))
    exported = torch.load(run.exported, weights_only=True)["ckpt_config"]
    assert exported["model_cfg"]["action_horizon"] == exported["tokenizer_cfg"]["action_horizon"] == 6
    assert exported["modality_cfg"]["action_per_chunk"] == exported["modality_cfg"]["frame_spacing"] == 6
    assert load_policy(run.exported, verbose=False).predict(np.zeros((32, 32, 3), np.uint8))["raw"].shape == (6, 25)


def test_a_prediction_horizon_beyond_the_position_tables_is_one_line_and_leaves_nothing(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    limit = build_preset("tiny")[0].max_horizon
    assert main(["train", "--data", str(recordings), "--output", str(run_dir), "--max-steps", "2",
                 "--set", f"data.prediction_horizon={limit + 1}", *FAST]) == 2
    assert f"prediction_horizon {limit + 1} is more action steps than the base model's position tables hold " \
           f"({limit})" in one_error_line(capsys)
    assert not run_dir.exists()


def recordings_with_a_corrupt_frame(root: Path, episode: int, row: int) -> Path:
    """Three NitroGen-format episodes; one frame of one of them is a truncated PNG."""
    for i in range(3):
        path = write_nitrogen_parquet(root / f"episode_{i}.parquet", n=24, start=10 * i)
        if i == episode:
            table = pq.read_table(path).to_pydict()
            table["image"][row]["bytes"] = table["image"][row]["bytes"][:40]
            pq.write_table(pa.table(table), path)
    return root


def test_a_bad_frame_met_in_training_saves_the_steps_done_and_the_resume_is_exact(tmp_path, capsys):
    data = recordings_with_a_corrupt_frame(tmp_path / "data", episode=1, row=2)
    steps = ["--max-steps", "19", "--set", "val_fraction=0", *FAST, "--set", "checkpoint_every=100",
             "--set", "export_at_end=false"]
    run_dir, straight = tmp_path / "run", tmp_path / "straight"
    assert main(["train", "--data", str(data), "--output", str(run_dir), *steps]) == 2
    message = one_error_line(capsys)
    saved = checkpoint_dirs(run_dir)
    assert len(saved) == 1 and 0 < int(saved[0].name.removeprefix("step_")) < 19
    assert "episode_1.parquet, row 2, column 'image': cannot decode the image" in message
    assert "remove" not in message  # a resume refuses data that lost a row
    assert (f"the checkpoint of step {int(saved[0].name.removeprefix('step_'))} is saved: with the frame fixed in "
            f"place, or with --skip-bad-rows, continue with  nitrogen-finetune train --resume {run_dir}") in message
    assert main(["train", "--resume", str(run_dir), "--skip-bad-rows", *steps]) == 0
    assert main(["train", "--data", str(data), "--output", str(straight), "--skip-bad-rows", *steps]) == 0
    resumed, uninterrupted = final_weights(run_dir), final_weights(straight)
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)


@pytest.mark.slow
def test_a_bad_frame_met_by_one_of_two_processes_names_the_checkpoint_left(tmp_path):
    data = recordings_with_a_corrupt_frame(tmp_path / "data", episode=1, row=2)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "nitrogen_finetuner.cli", "train", "--data", str(data), "--output", str(run_dir),
               "--max-steps", "19", *FAST]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "episode_1.parquet, row 2, column 'image': cannot decode the image" in done.stderr
    assert "[rank0]: Traceback" not in done.stderr and "[rank1]: Traceback" not in done.stderr  # the other process
    assert "nitrogen-finetune: error: another process of the run stopped, and this one lost it (Connection closed " \
           "by peer" in done.stderr  # lost it, and says so in one line
    newest = checkpoint_dirs(run_dir)[-1].name
    assert (f"the other's error, if it printed one, says why); the newest checkpoint is {newest}: continue with  "
            f"torchrun --nproc_per_node 2 -m nitrogen_finetuner.cli train --resume {run_dir}") in done.stderr
    assert (f"several processes stop without saving the steps since their last checkpoint: the newest checkpoint is "
            f"{newest}; with the frame fixed in place, or with --skip-bad-rows, continue with  torchrun "
            f"--nproc_per_node 2 -m nitrogen_finetuner.cli train --resume {run_dir}") in done.stderr
    # Met only in the final validation: the last step was saved before it, so no step is lost.
    held_out = split_episodes(["a", "b", "c"], 0.34, 0)[1][0]
    data = recordings_with_a_corrupt_frame(tmp_path / "held_out", episode=held_out, row=0)
    command[command.index("--data") + 1], command[command.index("--output") + 1] = str(data), str(tmp_path / "last")
    done = subprocess.run([*command, "--set", "val_fraction=0.34", "--set", "checkpoint_every=100"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and [d.name for d in checkpoint_dirs(tmp_path / "last")] == ["step_000019"]
    assert "the newest checkpoint is step_000019" in done.stderr


def test_a_validation_whose_every_frame_is_skipped_has_no_loss(tmp_path):
    held_out = split_episodes(["a", "b", "c"], 0.34, 0)[1][0]
    data = recordings_with_a_corrupt_frame(tmp_path / "data", episode=held_out, row=0)
    path = data / f"episode_{held_out}.parquet"
    table = pq.read_table(path).to_pydict()
    for image in table["image"]:  # every frame of the held-out recording
        image["bytes"] = image["bytes"][:40]
    pq.write_table(pa.table(table), path)
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(run_dir), "--max-steps", "2", *FAST,
                 "--set", "val_fraction=0.34", "--skip-bad-rows"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["val_loss"] is None
    assert logged(run_dir, "val/loss") == []


def test_a_bad_frame_met_in_validation_saves_the_step_it_validates(tmp_path, capsys):
    held_out = split_episodes(["a", "b", "c"], 0.34, 0)[1][0]
    data = recordings_with_a_corrupt_frame(tmp_path / "data", episode=held_out, row=0)
    run_dir = tmp_path / "run"
    flags = ["--data", str(data), "--output", str(run_dir), "--max-steps", "4", *FAST,
             "--set", "val_fraction=0.34", "--set", "val_every=2", "--set", "checkpoint_every=100"]
    assert main(["train", *flags]) == 2
    assert "the checkpoint of step 2 is saved: with the frame fixed in place, or with --skip-bad-rows, continue " \
        "with" in one_error_line(capsys)
    assert [d.name for d in checkpoint_dirs(run_dir)] == ["step_000002"]
    last = tmp_path / "last"
    assert main(["train", "--data", str(data), "--output", str(last), "--max-steps", "2", *FAST,
                 "--set", "val_fraction=0.34", "--set", "checkpoint_every=100"]) == 2  # the final validation
    assert (f"the checkpoint of step 2 is saved: with the frame fixed in place, or with --skip-bad-rows, finish the "
            f"run with  nitrogen-finetune train --resume {last}  (or export its model now)") in one_error_line(capsys)
    assert not (last / "model.pt").exists()
    assert main(["train", "--resume", str(last), "--skip-bad-rows"]) == 0  # validates, then writes the model
    assert (last / "model.pt").is_file() and [row["step"] for row in map(json.loads, (last / "metrics.jsonl")
                                              .read_text().splitlines()) if "val/loss" in row] == [2]
    assert main(["train", "--resume", str(last)]) == 2  # finished now: nothing to train
    assert "nothing to train" in one_error_line(capsys)


def test_skipped_bad_frames_may_empty_a_micro_batch_but_not_a_whole_step(tmp_path, capsys):
    data = recordings_with_a_corrupt_frame(tmp_path / "data", episode=1, row=2)
    flags = [*FAST, "--set", "val_fraction=0", "--set", "micro_batch_size=1", "--set", "export_at_end=false",
             "--skip-bad-rows"]
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--max-steps", "19", *flags]) == 0
    assert all(map(math.isfinite, logged(tmp_path / "run", "train/loss")))
    skipped = json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_bad_frames"]
    assert skipped >= 1 and logged(tmp_path / "run", "train/skipped_bad_frames")[-1] == skipped
    assert f"bad frames left out of training {skipped} time(s) (skip_bad_rows; a bad frame counts once in each epoch " \
        "that reads it)" in capsys.readouterr().out
    folder = write_frames_folder(tmp_path / "gone", 24)
    shutil.rmtree(folder / "frames")  # every frame is missing
    capsys.readouterr()
    assert main(["train", "--data", str(folder), "--output", str(tmp_path / "none"), "--max-steps", "4", *flags]) == 2
    assert "step 1 had no window to train on: skip_bad_rows left out every frame of its batch" in one_error_line(capsys)


def test_a_resume_after_the_data_moved_asks_for_its_new_path(recordings, tmp_path, capsys):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    shutil.copytree(recordings, data)
    assert main(["train", "--data", str(data), "--output", str(run_dir), "--max-steps", "2", *FAST]) == 0
    (tmp_path / "moved").mkdir()
    data.rename(tmp_path / "moved" / "v1")  # into a folder of its own: its recordings keep their names' endings
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4"]) == 2
    assert one_error_line(capsys) == (f"nitrogen-finetune: error: {data}: the data the run trained on is no longer "
                                      "there (if it moved, give its new path with --data)")
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", "--data", str(tmp_path / "moved")]) == 0
    assert (f'resumed from checkpoints/step_000002 (step 2) with data.dataset_name "{tmp_path / "moved"}" (was '
            f'"{data}"), max_steps 4 (was 2)') in capsys.readouterr().out


def test_a_resume_that_exports_nothing_says_the_model_is_an_earlier_export(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(recordings), "--output", str(run_dir), "--max-steps", "2", *FAST]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", "--set", "export_at_end=false", *FAST]) == 0
    assert f"note        model.pt is an earlier export, not step 4's (export_at_end is false): nitrogen-finetune " \
           f"export {run_dir} {run_dir / 'model.pt'} --force  writes this step's" in capsys.readouterr().out
    assert torch.load(run_dir / "model.pt", weights_only=True)["step"] == 2  # kept: step 2's checkpoint may be gone


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a file every write to fails as full")
def test_a_log_that_cannot_be_written_mid_run_says_what_is_kept_and_how_to_go_on(recordings, tmp_path, capsys,
                                                                                  monkeypatch):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(recordings), "--output", str(run_dir), "--max-steps", "2", *FAST]) == 0
    capsys.readouterr()
    real_open = open  # the run's metrics.jsonl opened on a full disk: its writes fail as the disk's would
    monkeypatch.setattr(trainer_module, "open", lambda path, mode="r": real_open(
        "/dev/full" if Path(path).name == "metrics.jsonl" else path, mode), raising=False)
    hook = threading.excepthook
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", *FAST]) == 2
    assert threading.excepthook is hook  # TensorBoard's thread is quiet only while the run trains
    assert one_error_line(capsys) == (
        f"nitrogen-finetune: error: {run_dir / 'metrics.jsonl'}: the run's log cannot be written (No space left "
        f"on device): the steps since its newest checkpoint, step_000002, are lost (free some space, then continue "
        f"with  nitrogen-finetune train --resume {run_dir})")
    monkeypatch.undo()
    real_save = trainer_module.CheckpointWriter.save

    def save_then_delete_the_run(self, progress, *args, **kwargs):  # a user's rm -rf while it trains
        real_save(self, progress, *args, **kwargs)
        if progress.step == 2:
            shutil.rmtree(self.root.parent)

    monkeypatch.setattr(trainer_module.CheckpointWriter, "save", save_then_delete_the_run)
    deleted = tmp_path / "deleted"
    assert main(["train", "--data", str(recordings), "--output", str(deleted), "--max-steps", "4", *FAST]) == 2
    assert one_error_line(capsys).endswith(f"{deleted}: the run folder was deleted while the run trained (start "
                                           "the run again)")
    monkeypatch.undo()
    real_save_file = checkpoints_module.save_file

    def delete_the_run_then_write(tensors, path, *args, **kwargs):  # rm -rf while a checkpoint is written
        shutil.rmtree(deleted)
        real_save_file(tensors, path, *args, **kwargs)  # safetensors' own error: the file's folder is gone

    monkeypatch.setattr(checkpoints_module, "save_file", delete_the_run_then_write)
    assert main(["train", "--data", str(recordings), "--output", str(deleted), "--max-steps", "2", *FAST]) == 2
    assert one_error_line(capsys).endswith(f"{deleted}: the run folder was deleted while the run trained (start "
                                           "the run again)")


def test_a_resume_on_another_number_of_processes_says_so(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(recordings), "--output", str(run_dir), "--max-steps", "2", *FAST]) == 0
    progress = checkpoint_dirs(run_dir)[-1] / "progress.json"  # as if two processes had trained it
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "processes": 2}))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", *FAST]) == 0
    assert "resumed from checkpoints/step_000002 (step 2) with max_steps 4 (was 2), 1 process(es) (was 2)" \
        in capsys.readouterr().out
