"""Checkpoint files: safe loading, clear refusals, atomic writes, and the command line."""

from __future__ import annotations

import argparse
import errno
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from golden.cases import make_images, make_noise
from nitrogen_finetuner import files, load_policy
from nitrogen_finetuner.cli import main
from nitrogen_finetuner.training.config import resolve_config, run_config_file
from nitrogen_finetuner.training.trainer import train
from nitrogen_finetuner.model import checkpoint as checkpoint_module
from nitrogen_finetuner.model.checkpoint import EXTRA_KEY, CheckpointError, read_checkpoint, save_checkpoint
from nitrogen_finetuner.model.presets import build_preset

DiskUsage = type(shutil.disk_usage("/"))


def test_file_needing_arbitrary_unpickling_is_refused_unless_trusted(case_checkpoints, tmp_path):
    ckpt = read_checkpoint(case_checkpoints["interleaved_sinusoidal"])
    ckpt["trainer_state"] = argparse.Namespace(lr=1e-4)  # not a plain type: needs full unpickling
    path = tmp_path / "pickled.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="refused to load.*--trust-pickle"):
        load_policy(path, verbose=False)
    policy = load_policy(path, trust_pickle=True, verbose=False)
    assert policy.predict(make_images("interleaved_sinusoidal")[0], noise=make_noise("interleaved_sinusoidal")[0])
    # The README's safe copy, also of a config that holds numpy numbers and paths
    ckpt["ckpt_config"]["model_cfg"]["action_dim"] = np.int64(ckpt["ckpt_config"]["model_cfg"]["action_dim"])
    ckpt["ckpt_config"]["output_dir"] = Path("runs/exp")  # a key of a training script's config
    torch.save(ckpt, path)
    load_policy(path, trust_pickle=True, verbose=False).save(tmp_path / "safe.pt")
    safe = torch.load(tmp_path / "safe.pt", weights_only=True)
    assert type(safe["ckpt_config"]["model_cfg"]["action_dim"]) is int
    assert safe["ckpt_config"]["output_dir"] == str(Path("runs/exp"))
    ckpt["ckpt_config"]["output_dir"] = argparse.Namespace()  # nothing a config holds: named, not saved
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="ckpt_config.output_dir: a Namespace, which only an unpickler"):
        load_policy(path, trust_pickle=True, verbose=False).save(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable torch checkpoint"),
        (b"PAR1 definitely not a torch file", "not a readable torch checkpoint"),
    ],
)
def test_unreadable_files_are_named_in_the_error(tmp_path, content, message):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)


def test_wrong_contents_are_explained(tmp_path, case_checkpoints):
    path = tmp_path / "weights_only.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="expected 'model' and 'ckpt_config'"):
        read_checkpoint(path)
    ckpt = read_checkpoint(case_checkpoints["plain_old_layout"])
    del ckpt["model"]["action_decoder.layer2.b"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"missing \['action_decoder.layer2.b'\]"):
        load_policy(path, verbose=False)
    ckpt = read_checkpoint(case_checkpoints["plain_old_layout"])
    ckpt["ckpt_config"]["model_cfg"]["action_horizon"] = "many"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="model_cfg.action_horizon"):
        load_policy(path, verbose=False)
    for value in (None, False, 0.0):  # another script's "no count yet"
        ckpt = read_checkpoint(case_checkpoints["plain_old_layout"])
        ckpt["epoch"] = value
        torch.save(ckpt, path)
        assert load_policy(path, verbose=False).epoch == 0
    for entry, value, message in [  # files from other tools: each was a traceback
        ("step", "abc", "its 'step' entry is 'abc', not a whole number"),
        ("nitrogen_finetuner", "garbage", "its 'nitrogen_finetuner' entry is not one this tool writes"),
        ("nitrogen_finetuner", {"action_layout": {}}, "its 'nitrogen_finetuner' entry is not one this tool writes"),
        ("nitrogen_finetuner", {"image_fit": "zoom"}, "its 'nitrogen_finetuner' entry is not one this tool writes"),
        ("model", [1, 2], "its 'model' entry is not a state dict of parameter names and tensors"),
    ]:
        ckpt = read_checkpoint(case_checkpoints["plain_old_layout"])
        ckpt[entry] = value
        torch.save(ckpt, path)
        with pytest.raises(CheckpointError, match=message):
            load_policy(path, verbose=False)
    ckpt = read_checkpoint(case_checkpoints["plain_old_layout"])
    ckpt["ckpt_config"]["modality_cfg"]["frame_per_sample"] = 2  # loaded, and played with one frame
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="ckpt_config: invalid config at modality_cfg: Value error, "
                                              "frame_per_sample is 2: this tool runs single-frame models"):
        load_policy(path, verbose=False)
    ckpt["ckpt_config"]["modality_cfg"]["frame_per_sample"] = 1
    ckpt["ckpt_config"]["tokenizer_cfg"]["tokenizer_id"] = "gemma"  # the official config refuses it
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="invalid config at tokenizer_cfg.tokenizer_id: Input should be "
                                              "'nitrogen'"):
        load_policy(path, verbose=False)
    ckpt = read_checkpoint(case_checkpoints["plain_old_layout"])
    ckpt["model"] = {k: v.int() for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="holds torch.int32 numbers, not floating point"):
        load_policy(path, verbose=False)
    for key in ("action_horizon", "num_inference_timesteps"):  # passed, and broke predict later
        ckpt = read_checkpoint(case_checkpoints["plain_old_layout"])
        ckpt["ckpt_config"]["model_cfg"][key] = 0
        torch.save(ckpt, path)
        with pytest.raises(CheckpointError, match=f"model_cfg.{key}: Input should be greater than or equal to 1"):
            load_policy(path, verbose=False)
    ckpt = read_checkpoint(case_checkpoints["plain_old_layout"])
    ckpt["model"]["action_decoder.layer2.b"] = torch.zeros(7)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"action_decoder.layer2.b is \(7,\), the config makes it \(1, 25\)"):
        load_policy(path, verbose=False)
    torch.save(ckpt["model"], path)  # the state dict alone
    with pytest.raises(CheckpointError, match="it is a bare state dict: the 'model' entry of a checkpoint"):
        load_policy(path, verbose=False)
    path.write_bytes(case_checkpoints["plain_old_layout"].read_bytes()[:5000])  # a download cut short
    with pytest.raises(CheckpointError, match=r"not a readable torch checkpoint, truncated or damaged \([^.]*; "
                       r"download or copy it again\)$"):
        load_policy(path, verbose=False)
    save_file({"weights": torch.zeros(2)}, str(path))  # a run's weights.safetensors, renamed
    with pytest.raises(CheckpointError, match=r"bare weights \(safetensors\), not a checkpoint"):
        load_policy(path, verbose=False)


class CtrlCHalfway(io.RawIOBase):
    """A file that takes 100 kB, then the user presses Ctrl-C."""

    def __init__(self, file):
        self.file, self.written = file, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > 100_000:
            raise KeyboardInterrupt
        return self.file.write(data)

    def fileno(self) -> int:
        return self.file.fileno()


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    model, raw = build_preset("tiny")
    path = save_checkpoint(tmp_path / "model.pt", model, raw, step=1)
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint_module.os, "fdopen", lambda *args: CtrlCHalfway(real_fdopen(*args)))
    with pytest.raises(KeyboardInterrupt):  # torch's zip writer fails on its way out: still Ctrl-C
        save_checkpoint(path, model, raw, step=2)
    assert main(["init", str(path), "--force"]) == 128 + signal.SIGINT
    assert capsys.readouterr().err == "nitrogen-finetune: interrupted\n"
    assert read_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_full_disk_is_one_line_and_leaves_the_previous_file(tmp_path, monkeypatch, capsys):
    assert main(["init", str(tmp_path / "model.pt"), "--preset", "tiny"]) == 0

    def disk_fills_up(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 540224 vs 540112")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_up)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: DiskUsage(total=10**9, used=10**9, free=4096))
    capsys.readouterr()
    assert main(["init", str(tmp_path / "model.pt"), "--preset", "tiny", "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    found = re.search(r": no space left \(about ([\d.]+) MiB needed, 0.0 MiB free\)$", err[0])
    assert len(err) == 1 and str(tmp_path / "model.pt") in err[0] and found, err
    parameters = sum(p.numel() for p in build_preset("tiny")[0].parameters())
    assert float(found.group(1)) >= parameters * 4 / 2**20  # float32 weights, at least
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "model.pt")["step"] == 0


def test_cli_info_and_init(tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    assert main(["init", str(out), "--preset", "tiny"]) == 0
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "action layout   25 = 21 buttons (nitrogen-v1 order) + left stick x,y + right stick x,y" in printed
    assert "horizon 18, 16 Euler steps" in printed
    assert "SOUTH, START, WEST, LEFT_X" in printed


def test_cli_user_errors_are_one_line_with_status_2(recordings, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    result = subprocess.run(
        [sys.executable, "-m", "nitrogen_finetuner.cli", "info", str(missing)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"nitrogen-finetune: error: {missing}: no such checkpoint file"
    assert "Traceback" not in result.stderr
    assert main(["train", "--base", str(tmp_path / "ng.pt"), "--data", str(recordings), "--output",
                 str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'ng.pt'}: no such checkpoint file (NVIDIA's released "
                                                    "checkpoint comes from the Hugging Face hub: hf download "
                                                    "nvidia/NitroGen ng.pt)")


def test_the_python_api_takes_what_a_notebook_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["init", str(tmp_path / "tiny.pt")]) == 0
    policy = load_policy("~/tiny.pt", dtype="bfloat16", verbose=False)
    assert next(policy.model.parameters()).dtype == torch.bfloat16
    with pytest.warns(UserWarning, match="the policy plays in bfloat16, so the saved weights are rounded to it"):
        policy.save(tmp_path / "rounded.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_policy(tmp_path / "rounded.pt", verbose=False).save(tmp_path / "copy.pt")  # float32: nothing lost
    for dtype in ("int8", torch.float8_e4m3fn):  # float8: no convolution runs on it
        with pytest.raises(ValueError, match="dtype: torch.float32, torch.bfloat16, torch.float16 or torch.float64"):
            load_policy(tmp_path / "tiny.pt", dtype=dtype, verbose=False)
    config = resolve_config(overrides={"data.dataset_name": tmp_path / "data", "output": tmp_path / "run"})
    assert (config.data.dataset_name, config.output) == (str(tmp_path / "data"), str(tmp_path / "run"))
    with pytest.raises(TypeError, match="overrides: a dict of dotted keys to values"):
        resolve_config(overrides=[("max_steps", 3)])
    with pytest.raises(TypeError, match="file: the path of a YAML config, got dict"):
        resolve_config({"max_steps": 3})
    with pytest.raises(TypeError, match="train takes a TrainConfig"):
        train({"max_steps": 3})
    policy = load_policy(tmp_path / "tiny.pt", verbose=False)
    size = policy.model.vision_encoder.config.image_size
    for wrong in (torch.zeros(1, 3, size // 2, size // 2), torch.zeros(1, 3, size, size, dtype=torch.uint8),
                  np.zeros((1, 3, size, size), np.float32)):
        with pytest.raises(ValueError, match=rf"pixel_values: a float tensor \(B, 3, {size}, {size}\)"):
            policy.sample(wrong)
    # step and epoch are whole numbers: a numpy or tensor integer is one, anything else is refused at once
    policy.save(tmp_path / "counted.pt", step=np.int64(5), epoch=torch.tensor(2))
    assert (load_policy(tmp_path / "counted.pt", verbose=False).step, torch.load(tmp_path / "counted.pt",
                                                                                 weights_only=True)["epoch"]) == (5, 2)
    for step in ("5", 1.5, True, -3):
        with pytest.raises(ValueError, match=f"step: a whole number >= 0, got {step!r}"):
            policy.save(tmp_path / "wrong.pt", step=step)
    assert not (tmp_path / "wrong.pt").exists()


def test_a_seed_too_large_for_64_bits_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["init", str(tmp_path / "i.pt"), "--seed", str(2**64)])
    assert stop.value.code == 2
    assert f"argument --seed: {2**64} is too large: at most {2**63 - 1}" in capsys.readouterr().err
    assert not (tmp_path / "i.pt").exists()


def test_a_folder_where_a_file_or_a_run_belongs_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["info", str(run)]) == 2
    assert capsys.readouterr().err.strip() == f"nitrogen-finetune: error: {run}: a folder, not a checkpoint file"
    assert main(["init", str(run / "model.pt"), "--preset", "tiny"]) == 0
    capsys.readouterr()
    assert main(["info", str(run)]) == 2
    assert f"(the run's exported checkpoint is {run / 'model.pt'})" in capsys.readouterr().err
    for command in (["export", str(run), str(tmp_path / "out.pt")], ["train", "--resume", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"nitrogen-finetune: error: {run}: not a run folder: it holds no config.yaml "
                       "(give the --output folder of a training run)"], command


def test_a_checkpoint_folder_given_for_a_run_folder_names_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "step_000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.yaml").write_text("base: tiny\n")  # as every checkpoint holds a copy
    for command in (["train", "--resume", str(checkpoint)], ["export", str(checkpoint), str(tmp_path / "out.pt")]):
        assert main(command) == 2
        assert capsys.readouterr().err == (
            f"nitrogen-finetune: error: {checkpoint}: a checkpoint folder, not a run folder (give the run folder, "
            f"{run}: --resume goes on from its newest checkpoint, and export --checkpoint step_000004 takes this "
            "one)\n"), command
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.yaml"]  # no .lock left in it


def test_a_lost_config_is_read_from_the_newest_checkpoint_past_a_million_steps(tmp_path):
    run = tmp_path / "run"
    for step in (999_999, 1_000_000):  # "step_1000000" sorts before "step_999999" by name
        (run / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
        (run / "checkpoints" / f"step_{step:06d}" / "config.yaml").write_text(f"base: tiny\nmax_steps: {step}\n")
    assert run_config_file(run) == run / "checkpoints" / "step_1000000" / "config.yaml"


def test_a_file_where_a_folder_belongs_is_one_line_naming_it(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    data = tmp_path / "data"
    data.mkdir()
    for command in (["init", str(blocker / "x.pt")], ["train", "--output", str(blocker), "--data", str(data)]):
        assert main(command) == 2, command
        assert capsys.readouterr().err.strip() == (f"nitrogen-finetune: error: {blocker}: File exists "
                                                  "(a file of that name is in the way: choose another path)"), command


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_load_policy_on_cuda_without_a_gpu_says_so(tmp_path):
    assert main(["init", str(tmp_path / "model.pt")]) == 0
    with pytest.raises(ValueError, match="device 'cuda': PyTorch sees no CUDA GPU on this machine"):
        load_policy(tmp_path / "model.pt", device="cuda", verbose=False)


def test_a_train_flag_that_does_not_exist_points_to_set_and_a_missing_run_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["nitrogen-finetune", "train", "--seed", "5"])
    with pytest.raises(SystemExit):
        main(sys.argv[1:])
    assert capsys.readouterr().err == ("nitrogen-finetune: error: unrecognized arguments: --seed; a config key is given "
                                       "as --set KEY=VALUE (see nitrogen-finetune train --help)\n")
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == (f"nitrogen-finetune: error: {tmp_path / 'nowhere'}: no such folder (give the "
                                       "--output folder of a training run)\n")


def test_a_read_only_disk_is_one_line_naming_the_folder(tmp_path, monkeypatch, capsys):
    """As in a container whose output folder is mounted read-only."""
    def read_only(*args, dir, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", read_only)
    assert main(["init", str(tmp_path / "model.pt")]) == 2
    assert capsys.readouterr().err == (f"nitrogen-finetune: error: {tmp_path}: Read-only file system "
                                       "(the file system is read-only: choose a writable path)\n")


def test_a_layout_of_its_own_is_named_on_the_command_line(tmp_path, capsys):
    from nitrogen_finetuner.model.checkpoint import build_model, parse_config  # noqa: PLC0415
    from nitrogen_finetuner.model.presets import preset_config  # noqa: PLC0415

    raw = preset_config("tiny")
    raw["model_cfg"]["action_dim"] = raw["tokenizer_cfg"]["max_action_dim"] = 9  # 5 buttons and the sticks
    path = save_checkpoint(tmp_path / "nine.pt", build_model(parse_config(raw)), raw)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: the checkpoint's action_dim is 9" in err[0] and "--buttons A,B," in err[0]
    assert main(["info", str(path), "--buttons", "A,B,SELECT,START,UP"]) == 0
    assert "9 = 5 buttons" in capsys.readouterr().out
    assert main(["info", str(path), "--buttons", " "]) == 2  # an empty list is a mistake, not "no list"
    assert "--buttons is empty" in capsys.readouterr().err


def test_info_counts_a_game_token_and_shows_the_shift_the_run_trained_with(tmp_path, capsys):
    out = tmp_path / "games.pt"
    assert main(["init", str(out), "--preset", "tiny"]) == 0
    checkpoint = torch.load(out, weights_only=True)
    checkpoint["model"]["game_embedding.weight"] = torch.zeros(3, checkpoint["ckpt_config"]["model_cfg"]["vision_hidden_size"])
    checkpoint["ckpt_config"]["tokenizer_cfg"]["max_sequence_length"] = 6  # 1 game + 4 visual + 1 padding
    checkpoint[EXTRA_KEY]["data_action_shift"] = 0  # trained with action_shift 0, which modality_cfg cannot hold
    torch.save(checkpoint, out)
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "action_shift 0" in printed
    assert "max_sequence_length 6 (1 game token, 4 visual tokens, 1 padding)" in printed
    checkpoint["ckpt_config"]["tokenizer_cfg"]["max_sequence_length"] = 4  # no room for the game token
    torch.save(checkpoint, out)
    assert main(["info", str(out)]) == 2
    assert f"{out}: its game token and 4 visual tokens exceed max_sequence_length 4" in capsys.readouterr().err
