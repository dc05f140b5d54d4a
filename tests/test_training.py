"""Fine-tuning on CPU: exact resume, export, learning, crash safety, config errors, 2 processes."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from nitrogen_finetuner import load_policy
from nitrogen_finetuner.cli import main
from nitrogen_finetuner.model.checkpoint import save_checkpoint
from nitrogen_finetuner.model.presets import build_preset
from nitrogen_finetuner import files as files_module
from nitrogen_finetuner.files import FILE_MODE
from nitrogen_finetuner.data.errors import DataError
from nitrogen_finetuner.training import checkpoints as checkpoints_module
from nitrogen_finetuner.training import trainer as trainer_module
from nitrogen_finetuner.training.activation_checkpointing import enable_activation_checkpointing
from nitrogen_finetuner.training.adapters import load_trainable_state, lora_target_modules, prepare_trainable
from nitrogen_finetuner.training.base import fingerprint, load_base
from nitrogen_finetuner.training.checkpoints import checkpoint_dirs, load_training_state
from nitrogen_finetuner.training.config import resolve_config
from nitrogen_finetuner.training.export import export_run
from nitrogen_finetuner.training.stop_signals import StopRequest, TrainingStopped
from nitrogen_finetuner.training.trainer import StepReadout, cpu_threads, train
from recordings import png_bytes, write_nitrogen_parquet
from runs import config, final_weights, logged, train_in_a_process

shutil_usage = type(shutil.disk_usage("/"))


class Killed(Exception):
    pass


def killed_after_saving(monkeypatch, step: int) -> None:
    """The next runs stop (raise Killed) right after writing the checkpoint of ``step``."""
    real_save = checkpoints_module.CheckpointWriter.save

    def save_then_die(self, progress, *args, **kwargs):
        path = real_save(self, progress, *args, **kwargs)
        if progress.step == step:
            raise Killed
        return path

    monkeypatch.setattr(checkpoints_module.CheckpointWriter, "save", save_then_die)


def killed_then_resumed(recordings, run_dir: Path, settings: dict, step: int, monkeypatch):
    """A run killed right after writing the checkpoint of ``step``, then resumed to its end."""
    killed_after_saving(monkeypatch, step)
    with pytest.raises(Killed):
        train(config(recordings, run_dir, **settings))
    monkeypatch.undo()
    return train(config(recordings, run_dir, **settings), resume=True)


@pytest.mark.parametrize("setup", [{"method": "lora"}, {"method": "full"}, {"method": "full", "fsdp": True},
                                   {"method": "full", "bf16_weights": True}, {"method": "lora", "bf16_weights": True}],
                         ids=["lora", "full", "fsdp", "bf16_weights", "lora_bf16_weights"])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_run(recordings, tmp_path, setup, monkeypatch):
    settings = dict(max_steps=4, ema_decay=0.9, num_workers=2, **setup)
    straight = train(config(recordings, tmp_path / "straight", **settings))
    again = train(config(recordings, tmp_path / "again", **settings))
    assert straight.losses == again.losses  # same seed, same loss curve on CPU

    resumed = killed_then_resumed(recordings, tmp_path / "resumed", settings, 2, monkeypatch)
    assert resumed.losses == straight.losses[2:]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])} == {}
    ema_a = load_file(str(checkpoint_dirs(tmp_path / "straight")[-1] / "ema.safetensors"))
    ema_b = load_file(str(checkpoint_dirs(tmp_path / "resumed")[-1] / "ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_the_same_seed_trains_the_same_adapters_from_a_checkpoint_file(recordings, tmp_path):
    """A base from a file is not built from the seed as a preset is: LoRA's initial adapters and
    dropout still follow it (torch itself starts from a random seed)."""
    assert main(["init", str(tmp_path / "ng.pt"), "--preset", "tiny"]) == 0
    runs = [train(config(recordings, tmp_path / name, base=str(tmp_path / "ng.pt"), max_steps=3, dropout=0.2))
            for name in ("first", "second")]
    assert runs[0].losses == runs[1].losses
    a, b = final_weights(tmp_path / "first"), final_weights(tmp_path / "second")
    assert {k for k in a if not torch.equal(a[k], b[k])} == set()


@pytest.mark.parametrize("shard", ["windows", "blocks"])
def test_a_resume_at_a_step_that_two_workers_do_not_divide_is_exact(recordings, tmp_path, shard, monkeypatch):
    """The loader's workers take turns; a resume after 3 batches must not swap the next two."""
    settings = dict(max_steps=5, checkpoint_every=3, num_workers=2, **{"data.shard": shard})
    straight = train(config(recordings, tmp_path / "straight", **settings))
    resumed = killed_then_resumed(recordings, tmp_path / "resumed", settings, 3, monkeypatch)
    assert resumed.losses == straight.losses[3:]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def sigterm_during_step(monkeypatch, signalled_step: int) -> None:
    """SIGTERM arrives while the trainer draws the noise of step ``signalled_step`` (0-based)."""
    real_noise = trainer_module.window_noise

    def noise(batch, seed, step, *args, validation=False):
        if step == signalled_step and not validation:
            signal.raise_signal(signal.SIGTERM)
        return real_noise(batch, seed, step, *args, validation=validation)

    monkeypatch.setattr(trainer_module, "window_noise", noise)


def test_a_stop_signal_checkpoints_the_step_it_ends_and_the_resumed_run_is_exact(recordings, tmp_path, monkeypatch,
                                                                                  capsys):
    settings = dict(max_steps=4, checkpoint_every=0, ema_decay=0.9)
    straight = train(config(recordings, tmp_path / "straight", **settings))
    sigterm_during_step(monkeypatch, 1)  # the second
    with StopRequest(announce=False) as stop, pytest.raises(TrainingStopped) as stopped:
        train(config(recordings, tmp_path / "resumed", **settings), stop=stop)
    monkeypatch.undo()
    assert (stopped.value.step, stopped.value.signal_number) == (2, signal.SIGTERM)
    assert [p.name for p in checkpoint_dirs(tmp_path / "resumed")] == ["step_000002"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers are put back
    capsys.readouterr()
    resumed = train(config(recordings, tmp_path / "resumed", **settings), resume=True)
    assert "note        resumed from checkpoints/step_000002 (step 2)" in capsys.readouterr().out
    assert resumed.losses == straight.losses[2:]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_signal_during_the_last_step_lets_the_run_finish(recordings, tmp_path, monkeypatch):
    sigterm_during_step(monkeypatch, 2)  # the last
    with StopRequest(announce=False) as stop:
        result = train(config(recordings, tmp_path / "run", max_steps=3, checkpoint_every=0), stop=stop)
    assert result.step == 3 and (tmp_path / "run" / "summary.json").is_file()
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_000003"]


def test_a_stop_request_announces_once_a_second_ctrl_c_stops_at_once_and_handlers_are_put_back(capfd):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signal_number == signal.SIGTERM
        signal.raise_signal(signal.SIGTERM)  # repeated: still the one request
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert capfd.readouterr().err.count("SIGTERM: stopping after this step and saving a checkpoint") == 1
    with StopRequest() as stop:
        stop.steps_done()  # a signal while the final checkpoint and model are written promises no stop
        signal.raise_signal(signal.SIGINT)
    assert "SIGINT: the training steps are done; finishing the final checkpoint and model" in capfd.readouterr().err


def test_a_second_ctrl_c_stops_at_once_and_names_the_checkpoint_to_go_on_from(recordings, tmp_path, monkeypatch,
                                                                              capsys):
    real_noise = trainer_module.window_noise

    def noise(batch, seed, step, *args, validation=False):
        if step == 3 and not validation:  # Ctrl-C twice, while step 4 draws its noise
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real_noise(batch, seed, step, *args, validation=validation)

    monkeypatch.setattr(trainer_module, "window_noise", noise)
    run_dir = tmp_path / "run"
    argv = ["train", "--data", str(recordings), "--output", str(run_dir), "--max-steps", "6", "--set", "num_workers=0",
            "--set", "batch_size=4", "--set", "checkpoint_every=2", "--set", "val_every=0"]
    assert main(argv) == 128 + signal.SIGINT
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_000002"]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "nitrogen-finetune: interrupted; the newest checkpoint is step_000002: continue with  "
        f"nitrogen-finetune train --resume {run_dir}")


def test_ctrl_c_ends_a_command_line_run_with_a_checkpoint_and_one_line(recordings, tmp_path):
    """Ctrl-C goes to the whole process group, DataLoader workers included."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "nitrogen_finetuner.cli", "train", "--data", str(recordings), "--output",
               str(run_dir), "--max-steps", "100000", "--set", "num_workers=2", "--set", "log_every=1",
               "--set", "checkpoint_every=0", "--set", "val_every=0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "SIGINT: stopping after this step and saving a checkpoint" in err
    last = err.strip().splitlines()[-1]
    step = load_training_state(checkpoint_dirs(run_dir)[-1]).progress.step
    assert step >= 3 and [p.name for p in checkpoint_dirs(run_dir)] == [f"step_{step:06d}"]
    assert last == (f"nitrogen-finetune: stopped by SIGINT after step {step}; its checkpoint is saved: "
                    f"continue with  nitrogen-finetune train --resume {run_dir}")


@pytest.mark.parametrize("setup", [{"method": "lora"}, {"method": "full", "fsdp": True},
                                   {"method": "full", "bf16_weights": True}], ids=["lora", "fsdp", "bf16_weights"])
def test_activation_checkpointing_trains_the_same_weights(recordings, tmp_path, setup, capsys, monkeypatch):
    settings = dict(max_steps=2, checkpoint_every=0, **setup)
    plain = train(config(recordings, tmp_path / "plain", **settings))
    # One process gains nothing from FSDP, and the run says so.
    assert ("fsdp in one process shards nothing" in capsys.readouterr().out) == ("fsdp" in setup)
    checkpointed_dtypes = []  # of the model whose layers recompute: the one that computes

    def enable_and_note(model):
        checkpointed_dtypes.append(next(model.parameters()).dtype)
        enable_activation_checkpointing(model)

    monkeypatch.setattr(trainer_module, "enable_activation_checkpointing", enable_and_note)
    checkpointed = train(config(recordings, tmp_path / "checkpointed", activation_checkpointing=True, **settings))
    assert checkpointed_dtypes == [torch.bfloat16 if "bf16_weights" in setup else torch.float32]
    assert plain.losses == checkpointed.losses
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "checkpointed")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_step_readout_hands_back_a_step_late_unless_asked_for_everything():
    readout = StepReadout(step=4)  # a run resumed at step 4
    readout.push(torch.tensor([0.5, 0.0]))
    assert readout.take(everything=False) == []  # the newest step stays on its way
    readout.push(torch.tensor([0.25, 1.0]))
    assert readout.take(everything=False) == [(5, [0.5, 0.0])]
    assert readout.take(everything=True) == [(6, [0.25, 1.0])]
    assert readout.take(everything=True) == []


@pytest.mark.parametrize("weight_decay, shows", [
    (1e30, "the training loss is nan"),  # huge weights: the next loss is not a number
    (0.0, "the trained weights are no longer finite numbers"),  # the update that breaks them, before any loss shows it
])
def test_a_diverged_run_stops_with_one_line_and_keeps_no_weights_that_are_not_numbers(recordings, tmp_path,
                                                                                      weight_decay, shows):
    """Rotation (keep_last 1) never replaces the last good checkpoint with one that is not numbers."""
    settings = dict(method="full", max_steps=6, learning_rate=1.0, weight_decay=weight_decay, warmup_steps=0,
                    checkpoint_every=1, keep_last=1, export_at_end=True, max_grad_norm=None)
    with pytest.raises(DataError, match=f"{shows} at step 2: training diverged, and stops without saving this step") \
            as error:
        train(config(recordings, tmp_path / "run", **settings))
    assert "its checkpoint step_000001 is the last saved: go on from it with a lower learning rate" in str(error.value)
    kept = checkpoint_dirs(tmp_path / "run")
    assert [p.name for p in kept] == ["step_000001"] and not (tmp_path / "run" / "model.pt").exists()
    weights = load_file(str(kept[0] / "weights.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    for row in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():  # JSON has no NaN: null stands in
        json.loads(row, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
    # A checkpoint written before this check existed: export refuses it too.
    weights[next(iter(weights))] = torch.full_like(weights[next(iter(weights))], float("nan"))
    save_file(weights, str(kept[0] / "weights.safetensors"))
    with pytest.raises(DataError, match=r"checkpoint step_000001 holds weights that are not finite numbers .*the "
                       "run has no earlier checkpoint: train again with a lower learning_rate"):
        export_run(tmp_path / "run", tmp_path / "out.pt")


def test_a_step_whose_gradient_norm_is_not_a_number_is_never_checkpointed(recordings, tmp_path, monkeypatch):
    """Clipping by an infinite norm can leave the weights finite while AdamW's state is not: the
    step's checkpoint is refused all the same (the norm is read at the checkpoint, not each step)."""
    clip, calls = trainer_module.Accelerator.clip_grad_norm_, []

    def overflowing_at_step_2(self, *args, **kwargs):  # as a real overflow leaves it
        calls.append(None)
        norm = clip(self, *args, **kwargs)
        return norm + float("inf") if len(calls) == 2 else norm

    monkeypatch.setattr(trainer_module.Accelerator, "clip_grad_norm_", overflowing_at_step_2)
    with pytest.raises(DataError, match="a step's gradient norm was not a finite number at step 2: training diverged"):
        train(config(recordings, tmp_path / "run", max_steps=4, checkpoint_every=1))
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_000001"]


def test_gradient_accumulation_trains_the_weights_of_one_big_batch(recordings, tmp_path):
    settings = dict(method="full", max_steps=3, dropout=0.0, checkpoint_every=0)
    whole = train(config(recordings, tmp_path / "whole", **settings))
    split = train(config(recordings, tmp_path / "split", micro_batch_size=1, **settings))
    assert split.losses == pytest.approx(whole.losses, rel=1e-5)
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    # A resume with another micro-batch size goes on from the same window of the epoch.
    train(config(recordings, tmp_path / "resumed", **dict(settings, max_steps=1)))
    resumed = train(config(recordings, tmp_path / "resumed", micro_batch_size=1, **settings), resume=True)
    assert resumed.losses == pytest.approx(whole.losses[1:], rel=1e-5)


def test_an_epoch_ends_at_the_same_window_whatever_the_micro_batch_size(recordings, tmp_path):
    # 42 training windows, batch 4: an epoch is 10 steps (40 windows) in micro-batches of 4 or of 1
    settings = dict(method="full", max_steps=12, dropout=0.0, checkpoint_every=0)
    whole = train(config(recordings, tmp_path / "whole", **settings))
    split = train(config(recordings, tmp_path / "split", micro_batch_size=1, **settings))
    assert split.losses == pytest.approx(whole.losses, rel=1e-5)
    with pytest.raises(DataError, match="the training episodes hold 42 windows, fewer than one batch of 44"):
        train(config(recordings, tmp_path / "big", batch_size=44, micro_batch_size=4, max_steps=1))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_bf16_weights_follow_a_float32_run_and_keep_float32_master_weights(recordings, tmp_path, method):
    settings = dict(method=method, max_steps=3, dropout=0.0, checkpoint_every=0, val_every=3, val_chunks=2,
                    export_at_end=True)
    float32 = train(config(recordings, tmp_path / "float32", mixed_precision="no", **settings))
    bf16 = train(config(recordings, tmp_path / "bf16", bf16_weights=True, **settings))
    assert bf16.losses == pytest.approx(float32.losses, rel=0.01) and bf16.losses != float32.losses
    assert bf16.val_loss == pytest.approx(float32.val_loss, rel=0.01)
    assert logged(tmp_path / "bf16", "val/button_f1")  # chunks sampled on the bf16 copy
    a, b = final_weights(tmp_path / "float32"), final_weights(tmp_path / "bf16")
    assert a.keys() == b.keys() and all(t.dtype == torch.float32 for t in b.values())
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 2e-3
    # Updates land on float32 masters: trained weights are not bf16 values, as bf16 weights would be.
    assert all(not torch.equal(t, t.bfloat16().float()) for t in b.values())
    exported = torch.load(bf16.exported, weights_only=True)["model"]
    base = torch.load(tmp_path / "bf16" / "base.pt", weights_only=True)["model"]
    trained = {k for k in exported if not torch.equal(exported[k], base[k])}
    if method == "full":
        assert all(torch.equal(exported[k], b[k]) for k in b)
    else:  # adapted weights and action head changed; the frozen rest is the base's, not its bf16 copy
        names = {k.removeprefix("base_model.model.") for k in b}
        adapted = {n.split(".lora_")[0] + ".weight" for n in names if ".lora_" in n}
        assert trained == adapted | {n for n in names if ".lora_" not in n}
    assert all(not torch.equal(exported[k], exported[k].bfloat16().float()) for k in trained)


@pytest.mark.parametrize("setting, message", [
    ({"bf16_weights": True, "method": "full", "fsdp": True}, "bf16_weights is for runs without fsdp"),
    ({"bf16_weights": True, "mixed_precision": "fp16"}, "set mixed_precision to bf16 or auto"),
])
def test_bf16_weights_with_fsdp_or_fp16_is_a_clear_error(recordings, tmp_path, setting, message):
    with pytest.raises(DataError, match=message):
        config(recordings, tmp_path / "run", **setting)


@pytest.mark.parametrize("setting, message", [
    ({}, "cuda_graphs replays the compiled layers: set compile to true as well"),
    ({"compile": True, "method": "full", "fsdp": True}, "cuda_graphs does not run with fsdp"),
    ({"compile": True, "activation_checkpointing": True}, "cuda_graphs does not run with activation_checkpointing"),
    ({"compile": True, "micro_batch_size": 2}, "micro_batch_size 2 accumulates gradients over 4 windows"),
])
def test_cuda_graphs_with_a_setting_that_replays_a_layer_twice_is_a_clear_error(recordings, tmp_path, setting,
                                                                                   message):
    with pytest.raises(DataError, match=message):
        config(recordings, tmp_path / "run", cuda_graphs=True, **setting)


def test_cuda_graphs_on_the_cpu_is_one_line_and_leaves_no_run(recordings, tmp_path, capsys):
    argv = ["train", "--data", str(recordings), "--output", str(tmp_path / "run"), "--set", "compile=true",
            "--set", "cuda_graphs=true"]
    assert main(argv) == 2
    assert "cuda_graphs needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_cpu_run_leaves_a_core_to_each_data_worker_and_gives_the_caller_its_settings_back(recordings, tmp_path,
                                                                                          monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    torch.set_num_threads(1)
    train(config(recordings, tmp_path / "run", max_steps=1, num_workers=1))
    assert "note        3 compute thread(s) on the CPU, leaving 1 core(s) to the data workers" in capsys.readouterr().out
    train(config(recordings, tmp_path / "crowded", max_steps=1, num_workers=4))
    assert "note        1 compute thread(s) on the CPU and 4 data workers share its 4 core(s)" \
        in capsys.readouterr().out
    assert torch.get_num_threads() == 1 and not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's count stands
    assert cpu_threads(num_workers=1) is None
    resized = []  # and the pool is left alone: resizing it at the end once hung a process under torchrun
    monkeypatch.setattr(torch, "set_num_threads", resized.append)
    train(config(recordings, tmp_path / "again", max_steps=1, num_workers=1))
    assert resized == []


def test_lora_trains_adapters_and_the_action_head_only(recordings, tmp_path):
    cfg = config(recordings, tmp_path / "run", max_steps=1)
    base = load_base(cfg.base, tmp_path, cfg.seed, new_run=False)
    module = prepare_trainable(base.model, "lora", cfg.lora)
    trained = {n.removeprefix("base_model.model.") for n, p in module.named_parameters() if p.requires_grad}
    fully = {n for n in trained if "lora_" not in n}
    assert {n.split(".")[0] for n in fully} == {"action_encoder", "action_decoder", "position_embedding"}
    assert {n.split(".")[0] for n in trained - fully} == {"model", "vl_self_attention_model"}
    assert not any("vision_encoder" in n or "norm1.linear" in n for n in trained)


def test_lora_on_every_attention_projection_adapts_exactly_those_layers(recordings, tmp_path):
    """The reference LoRA setup: the DiT's, the VL mixer's and the SigLIP tower's attention
    projections (not layer 11's); overlapping components adapt each layer once."""
    model = load_base("tiny", tmp_path, 0, new_run=False).model
    targets = ["dit_attention", "vl_mixer_attention", "vision_tower_attention", "vl_mixer"]
    chosen = lora_target_modules(model, targets)
    assert len(chosen) == len(set(chosen))
    projections = {"to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj"}
    attention = set(lora_target_modules(model, targets[:3]))
    expected = {
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name.endswith("." + p) for p in projections)
        and name.split(".")[0] in {"model", "vl_self_attention_model", "vision_encoder"}
        and ".layers.11." not in name and ".head." not in name
    }
    assert attention == expected
    assert {n.split(".")[0] for n in attention} == {"model", "vl_self_attention_model", "vision_encoder"}
    mixer_feedforward = set(chosen) - attention
    assert mixer_feedforward
    assert all(n.startswith("vl_self_attention_model.") and ".ff." in n for n in mixer_feedforward)


def test_merged_export_predicts_like_the_adapter_model(recordings, tmp_path, capsys):
    run = train(config(recordings, tmp_path / "run", max_steps=3, export_at_end=True, learning_rate=1e-2))
    printed = capsys.readouterr().out
    exported = load_policy(run.exported, verbose=False)
    ckpt = torch.load(run.exported, weights_only=True)
    assert not [k for k in ckpt["model"] if "lora" in k or "base_model" in k]
    base_ckpt = torch.load(tmp_path / "run" / "base.pt", weights_only=True)
    assert ckpt["model"].keys() == base_ckpt["model"].keys()
    cfg = resolve_config(tmp_path / "run" / "config.yaml")
    base = load_base(cfg.base, tmp_path / "run", cfg.seed, new_run=False)
    assert f"({sum(p.numel() for p in base.model.parameters()):,} parameters)" in printed
    adapter_model = prepare_trainable(base.model, "lora", cfg.lora)
    trained = load_training_state(checkpoint_dirs(tmp_path / "run")[-1]).weights
    assert f"lora: {sum(t.numel() for t in trained.values()):,} parameters trained" in printed
    load_trainable_state(adapter_model, trained)
    adapter_model.eval()
    frames = [np.random.RandomState(i).randint(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    pixels = exported.preprocess(frames)
    noise = torch.randn(2, 18, 25, generator=torch.Generator().manual_seed(0))
    merged = exported.model.sample_actions(pixels, noise)
    with torch.no_grad():
        unmerged = adapter_model.get_base_model().sample_actions(pixels, noise)
    assert (merged - unmerged).abs().max() <= 1e-5
    assert (merged - load_policy(tmp_path / "run" / "base.pt", verbose=False).model.sample_actions(pixels, noise)).abs().max() > 1e-3


def test_a_fine_tuned_model_plays_frames_made_square_as_it_trained_on_them(recordings, tmp_path, capsys):
    """The recordings' frames are 40x30: the run says how it makes them square, the export records
    it, and the policy fits a frame the same way before the vision tower's resize."""
    run = train(config(recordings, tmp_path / "run", max_steps=1, export_at_end=True, **{"data.image_fit": "crop"}))
    assert "note        frames are 40x30: image_fit crop makes them square" in capsys.readouterr().out
    assert torch.load(run.exported, weights_only=True)["nitrogen_finetuner"]["image_fit"] == "crop"
    policy = load_policy(run.exported, verbose=False)
    assert "image fit       crop: a frame that is not square is cropped square first" in policy.summary()
    wide = np.random.RandomState(0).randint(0, 256, (30, 40, 3), dtype=np.uint8)
    centre = np.ascontiguousarray(wide[:, 5:35])
    assert np.array_equal(policy.preprocessor.resize(wide), policy.preprocessor.resize(centre))
    base = load_policy(tmp_path / "run" / "base.pt", verbose=False)  # no record: stretched, as the official player
    assert base.preprocessor.fit == "stretch" and "image fit" not in base.summary()
    assert not np.array_equal(base.preprocessor.resize(wide), policy.preprocessor.resize(wide))
    assert main(["data", "inspect", str(recordings), "--checkpoint", str(run.exported), "--output",
                 str(tmp_path / "inspect"), "--no-image-check"]) == 0  # the checkpoint's fit, unless --image-fit
    assert "frames       40x30 (the first); image_fit crop makes them square" in capsys.readouterr().out
    assert main(["data", "inspect", str(recordings), "--checkpoint", "tiny", "--output", str(tmp_path / "inspect"),
                 "--no-image-check"]) == 0  # a preset, as train --base takes one: no fit of its own
    assert "frames       40x30 (the first); image_fit pad makes them square" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["lora", "full"])
def test_every_file_of_a_run_gets_the_umask_permissions(recordings, tmp_path, method):
    """safetensors and mkstemp create owner-only files: a model exported by a container running
    as root would be unreadable on the host."""
    if not FILE_MODE & 0o044:
        pytest.skip("the umask lets nobody else read files, so there is nothing to check")
    train(config(recordings, tmp_path / "run", method=method, max_steps=2, export_at_end=True))
    files = [f for f in (tmp_path / "run").rglob("*") if f.is_file() and "tensorboard" not in f.parts]
    assert {"model.pt", "base.pt", "weights.safetensors", "rng_rank0.safetensors"} <= {f.name for f in files}
    assert {f.relative_to(tmp_path): oct(stat.S_IMODE(f.stat().st_mode)) for f in files
            if stat.S_IMODE(f.stat().st_mode) != FILE_MODE} == {}


def test_a_failed_push_to_the_hub_is_one_line_and_keeps_the_export(recordings, tmp_path):
    train(config(recordings, tmp_path / "run", max_steps=2))
    out = tmp_path / "model.pt"
    offline = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_not_a_token"}  # a closed port
    result = subprocess.run([sys.executable, "-m", "nitrogen_finetuner.cli", "export", str(tmp_path / "run"),
                             str(out), "--push-to-hub", "someone/model"], capture_output=True, text=True, env=offline,
                            timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nitrogen-finetune: error: pushing {out} to the hub as someone/model "
                                               "failed (") and "Connection refused" in err[0], err
    assert err[0].endswith("the exported file is kept: check the network and your token (hf auth login), "
                           "then export again with --force --push-to-hub")
    assert load_policy(out, verbose=False).model is not None
    bad_id = subprocess.run([sys.executable, "-m", "nitrogen_finetuner.cli", "export", str(tmp_path / "run"),
                             str(tmp_path / "never.pt"), "--push-to-hub", "not a repo id"], capture_output=True,
                            text=True, env=offline, timeout=120)
    assert bad_id.returncode == 2 and bad_id.stderr == ("nitrogen-finetune: error: --push-to-hub 'not a repo id' is "
                                                        "not a hub repo id (give USER/NAME, e.g. "
                                                        "my-name/nitrogen-my-game)\n")
    assert not (tmp_path / "never.pt").exists()  # refused before the export


def test_training_loss_falls_by_half_on_a_learnable_dataset(tmp_path):
    """Red frames: SOUTH held, left stick right; blue frames: nothing, left stick left."""
    data = tmp_path / "data"
    data.mkdir()
    for e in range(4):
        red = [(t // 6 + e) % 2 == 0 for t in range(48)]
        columns = {
            "image": [{"bytes": png_bytes(Image.new("RGB", (64, 64), (220, 20, 20) if r else (20, 20, 220))),
                       "path": None} for r in red],
            "south": red,
            "j_left": [[0.8, 0.0] if r else [-0.8, 0.0] for r in red],
            "j_right": [[0.0, 0.0]] * 48,
        }
        pq.write_table(pa.table(columns), data / f"episode_{e}.parquet")
    run = train(config(data, tmp_path / "run", max_steps=400, method="full", learning_rate=2e-3, batch_size=16,
                       warmup_steps=5, checkpoint_every=0, log_every=50,
                       **{"data.action_shift": 0, "data.prediction_horizon": 1, "val_fraction": 0}))
    first, last = np.mean(run.losses[:10]), np.mean(run.losses[-10:])
    assert last <= 0.5 * first, (first, last)


def test_a_run_killed_while_checkpointing_keeps_the_previous_checkpoint(recordings, tmp_path, monkeypatch):
    train(config(recordings, tmp_path / "run", max_steps=2))
    real_save = checkpoints_module.save_file

    def dies_after_the_first_file(tensors, path, *args, **kwargs):
        real_save(tensors, path, *args, **kwargs)
        raise KeyboardInterrupt  # as if killed halfway through the checkpoint

    monkeypatch.setattr(checkpoints_module, "save_file", dies_after_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        train(config(recordings, tmp_path / "run", max_steps=4), resume=True)
    monkeypatch.undo()
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_000002"]
    assert load_training_state(checkpoint_dirs(tmp_path / "run")[-1]).progress.step == 2
    assert train(config(recordings, tmp_path / "run", max_steps=4), resume=True).step == 4


def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_partial_checkpoint(recordings, tmp_path, capsys,
                                                                                  monkeypatch):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2))
    real_save = checkpoints_module.save_file

    def disk_fills_up(tensors, path, *args, **kwargs):
        real_save(tensors, path, *args, **kwargs)
        raise RuntimeError("unexpected pos 540224 vs 540112")  # how torch reports a short write

    monkeypatch.setattr(checkpoints_module, "save_file", disk_fills_up)
    monkeypatch.setattr(files_module.shutil, "disk_usage", lambda path: shutil_usage(total=10**9, used=10**9, free=4096))
    capsys.readouterr()
    code = main(["train", "--resume", str(run_dir), "--max-steps", "4"])
    err = [line for line in capsys.readouterr().err.splitlines() if "nitrogen-finetune:" in line]
    assert code == 2 and len(err) == 1 and err[0].startswith("nitrogen-finetune: error: "), err
    assert "checkpoint step_000004: no space left" in err[0] and "step_000002, is kept" in err[0]
    assert f"--resume {run_dir}" in err[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002"]  # no partial folder

    real_mkdir = Path.mkdir

    def read_only(folder, *args, **kwargs):
        if folder.name.startswith(".step_"):
            raise OSError(errno.EROFS, "Read-only file system", str(folder))
        return real_mkdir(folder, *args, **kwargs)

    monkeypatch.undo()  # the disk has room, and is remounted read-only
    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"nitrogen-finetune: error: {run_dir / 'checkpoints'}: checkpoint step_000004: Read-only file system; the "
        f"newest complete checkpoint, step_000002, is kept (make the run folder writable, then continue with --resume "
        f"{run_dir})")

    def disk_full(folder, *args, **kwargs):  # a new run's first checkpoint: its checkpoints/ cannot be made
        if folder.name == "checkpoints":
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        return real_mkdir(folder, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", disk_full)
    monkeypatch.setattr(files_module.shutil, "disk_usage", lambda path: shutil_usage(total=10**9, used=10**9, free=0))
    assert main(["train", "--data", str(recordings), "--output", str(tmp_path / "new"), "--max-steps", "2"]) == 2
    assert re.search(r"checkpoint step_000002: no space left \(about [\d.]+ MiB needed, 0.0 MiB free\); no checkpoint "
                     r"yet \(free some space, then start the run again\)$",
                     capsys.readouterr().err.splitlines()[-1])


def test_keep_best_spares_the_lowest_validation_loss_checkpoint_across_a_resume(recordings, tmp_path, capsys,
                                                                                monkeypatch):
    # A learning rate this high makes the first step's held-out loss the lowest of the run.
    settings = dict(method="full", learning_rate=0.05, warmup_steps=0, val_every=1, checkpoint_every=1, keep_last=1,
                    keep_best=True, val_chunks=0, max_steps=5)
    killed_after_saving(monkeypatch, 3)
    with pytest.raises(Killed):
        train(config(recordings, tmp_path / "run", **settings))
    monkeypatch.undo()
    train(config(recordings, tmp_path / "run", **settings), resume=True)
    val_losses = logged(tmp_path / "run", "val/loss")
    assert len(val_losses) == 5 and min(val_losses) == val_losses[0]
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_000001", "step_000005"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_checkpoint"].endswith("step_000001") and summary["best_val_loss"] == val_losses[0]
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "best.pt"), "--checkpoint", "best"]) == 0
    assert torch.load(tmp_path / "best.pt", weights_only=True)["step"] == 1
    capsys.readouterr()
    plain = tmp_path / "plain"
    train(config(recordings, plain, max_steps=1))  # val_every 0: validated once, at the end, and logged
    assert logged(plain, "val/loss") == [json.loads((plain / "summary.json").read_text())["val_loss"]]
    assert main(["export", str(plain), str(tmp_path / "none.pt"), "--checkpoint", "best"]) == 2
    assert "the run kept no best checkpoint (train with keep_best: true" in capsys.readouterr().err
    asked, one = tmp_path / "asked", tmp_path / "one"  # keep_best, but one recording: nothing held out
    write_nitrogen_parquet(one / "episode_0.parquet", n=24)
    train(config(one, asked, max_steps=2, keep_best=True))
    assert main(["export", str(asked), str(tmp_path / "none.pt"), "--checkpoint", "best"]) == 2
    assert "the run kept no best checkpoint: none of its checkpoints had a validation loss" in capsys.readouterr().err


def test_keep_best_records_a_last_step_checkpointed_before_its_final_validation(recordings, tmp_path, monkeypatch,
                                                                                capsys):
    # Validated at 3 (no checkpoint there) and, at the end, at 4, whose checkpoint the loop saved before that.
    settings = dict(keep_best=True, checkpoint_every=2, val_every=3, val_chunks=0, keep_last=1, max_steps=4)
    train(config(recordings, tmp_path / "straight", **settings))
    killed_after_saving(monkeypatch, 4)  # before the final validation: the resume only finishes the run
    with pytest.raises(Killed):
        train(config(recordings, tmp_path / "finished", **settings))
    monkeypatch.undo()
    train(config(recordings, tmp_path / "finished", **settings), resume=True)
    for run_dir in (tmp_path / "straight", tmp_path / "finished"):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["best_checkpoint"].endswith("step_000004") and summary["best_val_loss"] is not None
        assert summary["final_train_loss"] == logged(run_dir, "train/loss")[-1]  # also where no step was left
        assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_000004"]
        assert load_training_state(checkpoint_dirs(run_dir)[-1]).progress.best_step == 4
        assert main(["export", str(run_dir), str(tmp_path / "best.pt"), "--checkpoint", "best", "--force"]) == 0
        assert torch.load(tmp_path / "best.pt", weights_only=True)["step"] == 4
    shutil.copytree(tmp_path / "straight", tmp_path / "copy")
    train(config(recordings, tmp_path / "copy", **{**settings, "max_steps": 6, "keep_last": 2}), resume=True)
    newest = checkpoint_dirs(tmp_path / "copy")[-1] / "progress.json"  # as if step 4 had stayed the best
    newest.write_text(json.dumps({**json.loads(newest.read_text()), "best_step": 4}))
    shutil.rmtree(checkpoint_dirs(tmp_path / "copy")[0])  # and a user deleted it
    capsys.readouterr()
    assert main(["export", str(tmp_path / "copy"), str(tmp_path / "best.pt"), "--checkpoint", "best", "--force"]) == 2
    assert "the run's best checkpoint, step_000004, was deleted (export another: --checkpoint step_000006 is its " \
           "newest)" in capsys.readouterr().err


def test_the_run_says_which_profile_reads_the_actions_and_which_columns_nothing_reads(recordings, tmp_path, capsys):
    train(config(recordings, tmp_path / "auto", max_steps=1))
    printed = capsys.readouterr().out
    assert re.search(r"^profile     nitrogen \(loss on \d+/25 slots\)$", printed, re.M) and "unused" not in printed
    train(config(recordings, tmp_path / "forced", max_steps=1, **{"data.profile": "snes"}))
    lines = capsys.readouterr().out.splitlines()
    assert "profile     snes (loss on 5/25 slots)" in lines
    unused = next(line for line in lines if line.startswith("unused"))
    assert "j_left, j_right" in unused and unused.endswith("(check data.profile; `nitrogen-finetune data inspect` "
                                                           "shows the mapping)")
    ignored = {"data.profile": "snes", "data.mapping": {"j_left": None}}  # left out on purpose: not reported
    train(config(recordings, tmp_path / "ignored", max_steps=1, **ignored))
    unused = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("unused"))
    assert "j_right" in unused and "j_left" not in unused


def test_auto_and_all_can_be_typed_where_the_tables_show_them(recordings, tmp_path):
    cfg = config(recordings, tmp_path / "run", micro_batch_size="auto", deterministic="auto", val_batches="all",
                 mixed_precision=False, **{"data.image_column": "auto", "tune.vision_tower": "auto"})
    assert (cfg.micro_batch_size, cfg.deterministic, cfg.val_batches, cfg.mixed_precision) == (None, None, None, "no")
    assert cfg.data.image_column is None and cfg.tune.vision_tower is None


def test_misspelled_lora_target_is_a_clear_error(recordings, tmp_path, capsys):
    with pytest.raises(DataError, match="unknown LoRA target 'dit_atention'.*targets are: dit_attention"):
        config(recordings, tmp_path / "run", **{"lora.targets": ["dit_atention"]})
    code = main(["train", "--data", str(recordings), "--output", str(tmp_path / "run"),
                 "--set", "lora.targets=[vl_mixr]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown LoRA target 'vl_mixr'" in err[0]


def test_exporting_a_run_whose_base_moved_says_where_the_run_looks_for_it(recordings, tmp_path, capsys):
    assert main(["init", str(tmp_path / "ng.pt"), "--preset", "tiny"]) == 0
    train(config(recordings, tmp_path / "run", base=str(tmp_path / "ng.pt"), max_steps=2))
    (tmp_path / "ng.pt").rename(tmp_path / "moved.pt")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the base this run was trained from" in err[0] and "run/config.yaml" in err[0], err
    config_file = tmp_path / "run" / "config.yaml"
    config_file.write_text(config_file.read_text().replace(str(tmp_path / "ng.pt"), str(tmp_path / "moved.pt")))
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out.pt")]) == 0
    assert (tmp_path / "out.pt").is_file()


def test_a_resume_that_cannot_start_says_why_and_leaves_the_run_as_it_was(recordings, tmp_path, capsys):
    assert main(["init", str(tmp_path / "ng.pt"), "--preset", "tiny", "--seed", "1"]) == 0  # not the seed-0 preset
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, base=str(tmp_path / "ng.pt"), max_steps=2))
    files_before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
                    if p.is_file() and "tensorboard" not in p.parts and p.name != "metrics.jsonl"}
    fewer, short, other = tmp_path / "fewer", tmp_path / "short", tmp_path / "other"
    for i in range(2):
        write_nitrogen_parquet(fewer / f"episode_{i}.parquet", n=24, start=10 * i)
        write_nitrogen_parquet(short / f"episode_{i}.parquet", n=6, start=10 * i)
    for i in range(3):  # as many windows as the run's data, in other recordings
        write_nitrogen_parquet(other / f"take_{i}.parquet", n=24, start=50 + 10 * i)
    for flags, message in [
        (["--method", "full"], 'method is "full" now, but the run trained with "lora" (a run resumes with what it '
                               "trains; start a new run to change it)"),
        (["--set", "lora.rank=8"], "lora.rank is 8 now, but the run trained with 16"),
        (["--set", "tune.vision_tower=true"], "tune.vision_tower is true now, but the run trained with null"),
        (["--set", "seed=5"], "seed is 5 now, but the run trained with 0 (a run resumes with the episodes it holds out "
                              "and the order it reads the data in;"),
        (["--set", "val_fraction=0.5"], "val_fraction is 0.5 now, but the run trained with 0.1"),
        (["--set", "data.image_fit=stretch"], 'data.image_fit is "stretch" now, but the run trained with "pad"'),
        (["--data", str(fewer)], "the data makes 21 training windows now, but the run trained on 42"),
        (["--data", str(short)], "the data makes 3 training windows now, but the run trained on 42"),  # < a batch
        (["--data", str(other)], "for validation, and this data holds out 'take_"),
        (["--base", "tiny"], "tiny: not the base this run was trained from"),
        (["--data", str(tmp_path / "elsewhere")], "no such file or folder"),
    ]:
        capsys.readouterr()
        assert main(["train", "--resume", str(run_dir), "--max-steps", "4", *flags]) == 2, flags
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nitrogen-finetune:")]
        assert len(err) == 1 and message in err[0], (flags, err)
    files_after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
                   if p.is_file() and "tensorboard" not in p.parts and p.name != "metrics.jsonl"}
    assert files_after == files_before  # config.yaml included: a failed resume changes nothing
    written = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(written.replace("\nseed: 0\n", "\nseed: 5\n"))  # edited before --resume
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4"]) == 2
    assert f"{run_dir / 'config.yaml'}: seed is 5 now, but the run trained with 0" in capsys.readouterr().err
    (run_dir / "config.yaml").write_text(written)
    (run_dir / "config.yaml").unlink()  # lost: the newest checkpoint's copy stands in, and is checked alike
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", "--set", "seed=5"]) == 2
    assert "seed is 5 now, but the run trained with 0" in capsys.readouterr().err
    (tmp_path / "ng.pt").rename(tmp_path / "copy.pt")  # the same weights under another name will do
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", "--base", str(tmp_path / "copy.pt"),
                 "--set", "num_workers=0", "--set", "ema_decay=0.9"]) == 0
    assert load_training_state(checkpoint_dirs(run_dir)[-1]).progress.step == 4
    assert (f'resumed from checkpoints/step_000002 (step 2) with base "{tmp_path / "copy.pt"}" (was '
            f'"{tmp_path / "ng.pt"}"), max_steps 4 (was 2), ema_decay 0.9 (was null)') in capsys.readouterr().out
    assert main(["export", str(run_dir), str(tmp_path / "ema.pt"), "--checkpoint", "step_000002", "--weights",
                 "ema"]) == 2  # saved before the resume turned EMA on
    assert "this checkpoint has no EMA weights (ema_decay was off when it was saved)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--max-steps", "5", "--base", str(tmp_path / "copy.pt"),
                 "--set", "num_workers=0", "--set", "lora.targets=[vl_mixer, dit_feedforward, dit_attention]"]) == 0
    printed = capsys.readouterr().out  # the same layers adapt in any order: not a change
    assert "resumed from checkpoints/step_000004 (step 4) with max_steps 5 (was 4)" in printed
    assert "lora.targets" not in printed


def test_a_resume_under_block_sharding_keeps_its_workers_and_processes(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2, **{"data.shard": "blocks"}))
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4", "--set", "num_workers=1"]) == 2
    assert ("num_workers is 1 now, but the run trained with 0 (a run resumes with the order it reads the data in, "
            "which with data.shard blocks depends on the workers; start a new run to change it)") \
        in capsys.readouterr().err
    progress = checkpoint_dirs(run_dir)[-1] / "progress.json"  # as if two processes had trained it
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "processes": 2}))
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4"]) == 2
    assert ("the run trained with 2 process(es), and this resume has 1: with data.shard blocks the order it reads "
            "the data in depends on them (resume with 2 process(es))") in capsys.readouterr().err


def test_the_logged_learning_rate_is_the_one_each_step_used_and_a_long_warmup_is_noted(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=3, warmup_steps=4, learning_rate=1e-3))
    assert logged(run_dir, "train/lr") == pytest.approx([2.5e-4, 5e-4, 7.5e-4])
    assert "warmup_steps 4 > max_steps 3: the learning rate never reaches learning_rate 0.001" in capsys.readouterr().out


def test_a_resume_applies_a_new_learning_rate_and_weight_decay_from_its_step_on(recordings, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(config(recordings, run_dir, max_steps=2, warmup_steps=0, min_learning_rate_ratio=1.0))
    moved = tmp_path / "moved"
    shutil.copytree(recordings, moved)  # the same data at another path will do
    capsys.readouterr()
    resumed = config(moved, run_dir, max_steps=4, warmup_steps=0, min_learning_rate_ratio=1.0, learning_rate=5e-4,
                     weight_decay=0.1, **{"data.skip_bad_rows": True})  # a bad frame met mid-run: skip and go on
    train(resumed, resume=True)
    assert (f'resumed from checkpoints/step_000002 (step 2) with data.dataset_name "{moved}" (was "{recordings}"), '
            "data.skip_bad_rows true (was false), max_steps 4 (was 2), learning_rate 0.0005 (was 0.0001), "
            "weight_decay 0.1 (was 0.0)\n") in capsys.readouterr().out
    assert logged(run_dir, "train/lr") == pytest.approx([1e-4, 1e-4, 5e-4, 5e-4])
    optimizer = torch.load(checkpoint_dirs(run_dir)[-1] / "optimizer.pt", weights_only=True)["optimizer"]
    assert [(g["lr"], g["weight_decay"]) for g in optimizer["param_groups"]] == [(5e-4, 0.1)]
    assert resolve_config(run_dir / "config.yaml").learning_rate == 5e-4  # what the run now trains with


def test_a_run_on_one_recording_says_it_has_no_validation(tmp_path, capsys):
    write_nitrogen_parquet(tmp_path / "data" / "episode.parquet", n=24)
    train(config(tmp_path / "data", tmp_path / "run", max_steps=1, method="full", **{"lora.rank": 8}))
    printed = capsys.readouterr().out
    assert "no validation: it holds out whole recordings, and the data is one recording (1 episode(s))" in printed
    assert "note        base tiny: random weights, not NitroGen's (--base ng.pt fine-tunes the released model)" \
        in printed
    assert "note        the lora settings are not used: method is full" in printed


def test_keep_best_without_validation_is_refused(tmp_path):
    with pytest.raises(DataError, match="keep_best keeps the checkpoint of the lowest validation loss, and "
                                        "val_fraction 0 holds out nothing"):
        config(tmp_path, tmp_path / "run", keep_best=True, val_fraction=0)


def test_a_new_run_builds_its_preset_base_afresh_over_a_stale_base_pt(recordings, tmp_path):
    run_dir = tmp_path / "run"
    torch.manual_seed(123)
    save_checkpoint(run_dir / "base.pt", *build_preset("tiny"))  # left by an earlier attempt with another seed
    train(config(recordings, run_dir, max_steps=1, seed=0))
    torch.manual_seed(0)
    expected = fingerprint(build_preset("tiny")[0])
    assert fingerprint(load_policy(run_dir / "base.pt", verbose=False).model) == expected
    assert json.loads((run_dir / "base.json").read_text())["fingerprint"] == expected


def test_saved_weights_of_another_shape_are_a_clear_error():
    model = prepare_trainable(load_base("tiny", Path("/nonexistent"), 0, new_run=True).model,
                              "full", resolve_config(None, {"data.dataset_name": "x"}).lora)
    state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    name = next(iter(state))
    state[name] = torch.zeros(3, 1)
    with pytest.raises(DataError, match=rf"{re.escape(name)} is \(3, 1\) saved, .* here"):
        load_trainable_state(model, state)


def test_the_run_tune_section_overrides_the_checkpoint_switches(recordings, tmp_path):
    run = train(config(recordings, tmp_path / "run", method="full", max_steps=2, export_at_end=True,
                       learning_rate=1e-2, **{"tune.vision_tower": False}))
    saved = final_weights(tmp_path / "run")
    assert saved and not [n for n in saved if n.startswith("vision_encoder.")]
    assert any(n.startswith("model.") for n in saved)
    base = torch.load(tmp_path / "run" / "base.pt", weights_only=True)
    exported = torch.load(run.exported, weights_only=True)
    vision = [k for k in base["model"] if k.startswith("vision_encoder.")]
    assert all(torch.equal(exported["model"][k], base["model"][k]) for k in vision)
    assert not torch.equal(exported["model"]["model.proj_out_2.weight"], base["model"]["model.proj_out_2.weight"])
    assert exported["ckpt_config"]["model_cfg"] == base["ckpt_config"]["model_cfg"]  # the base's switches, kept

    # A checkpoint that freezes its tower: LoRA on it is refused unless the run unfreezes it.
    base["ckpt_config"]["model_cfg"]["tune_vision_tower"] = False
    torch.save(base, tmp_path / "frozen.pt")
    vision_lora = {"base": str(tmp_path / "frozen.pt"), "lora.targets": ["vision_tower"]}
    with pytest.raises(DataError, match=r"LoRA target 'vision_tower' is frozen \(tune_vision_tower: false\)"):
        train(config(recordings, tmp_path / "refused", max_steps=1, **vision_lora))
    unfrozen = config(recordings, tmp_path / "unfrozen", max_steps=1, **vision_lora, **{"tune.vision_tower": True})
    module = prepare_trainable(load_base(unfrozen.base, tmp_path, 0, new_run=False).model, "lora", unfrozen.lora,
                               unfrozen.tune)
    adapted = {n for n, p in module.named_parameters() if p.requires_grad and "lora_" in n}
    assert adapted and all(".vision_encoder.encoder.layers." in n for n in adapted)

    everything_off = {f"tune.{part}": False for part in ("vision_tower", "vl_mixing", "diffusion_model", "multi_projector")}
    with pytest.raises(DataError, match="nothing to train"):
        train(config(recordings, tmp_path / "none", method="full", max_steps=1, **everything_off))


def test_out_of_gpu_memory_is_one_line_with_what_to_lower(recordings, tmp_path, capsys, monkeypatch):
    from nitrogen_finetuner.training import trainer  # noqa: PLC0415

    def runs_out(config, resume=False, stop=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train", runs_out)
    code = main(["train", "--data", str(recordings), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "out of GPU memory (lower micro_batch_size" in err[0]


def test_config_precedence_defaults_file_flags(recordings, tmp_path, capsys):
    file = tmp_path / "run.yaml"
    file.write_text(f"data:\n  dataset_name: {recordings}\nmax_steps: 7\nlora:\n  rank: 4\n")
    cfg = resolve_config(file, {"lora.rank": 2})
    assert (cfg.max_steps, cfg.lora.rank, cfg.lora.alpha, cfg.method) == (7, 2, 32.0, "lora")
    output = tmp_path / "run"
    assert main(["train", str(file), "--set", "lora.rank=2", "--output", str(output), "--print-config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert resolve_config(printed) == cfg.model_copy(update={"output": str(output)}) and not output.exists()


@pytest.mark.parametrize("config_text, settings, expected", [
    (None, ["lora.targets=[dit_attention"], "--set lora.targets: '[dit_attention' is not a valid YAML value ("),
    ("lora: 5\n", ["lora.rank=4"], "lora is 5, not a section of keys, so lora.rank cannot be set"),
    ("lora: 5\n", [], "lora is a section of settings, not a value (give its keys, such as lora.rank)"),
    ("data: [1, 2]\n", [], "data is [1, 2], not a section of keys, so data.dataset_name cannot be set"),
    ("lora: [dit_attention\n", [], "not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)"),
    (b"\xff\xfe\x00binary", [], "not a UTF-8 text file"),
    ("lora:\n  rank: 8\nmax_steps: 3\nlora:\n  rank: 4\n", [],
     "not valid YAML (the key 'lora' is given twice at line 4, column 1)"),
    ("lora: {[1]: 2}\n", [], "not valid YAML (found unhashable key at line 1, column 8)"),
    ("max_steps: 5\n---\nmax_steps: 7\n", [],
     "not valid YAML (expected a single document in the stream, but found another document at line 2"),
    (None, ["lora={rank: 4, rank: 8}"], "not a valid YAML value (the key 'rank' is given twice at line 1, column 11)"),
    (None, ['output=" "'], "invalid setting output: the run folder name is empty"),
    (None, ["lora.rnak=8"], "unknown setting lora.rnak (did you mean lora.rank?)"),
    (None, ["LORA.RANK=8"], "unknown setting LORA (did you mean lora?)"),
    (None, ["learning_rate=1e39"], "invalid setting learning_rate: Input should be less than or equal to 1"),
    (None, ["weight_decay=.inf"], "invalid setting weight_decay: Input should be a finite number"),
    (None, ["seed=-1"], "invalid setting seed: Input should be greater than or equal to 0"),
    (None, ["lora.targets=[]"], "lora.targets is empty: LoRA needs a component to adapt"),
    (None, ["lora.rank=100000"], "invalid setting lora.rank: Input should be less than or equal to 1024"),
    (None, ["data.action_shift=9223372036854775807"], "invalid setting data.action_shift: Input should be less"),
    (None, ["keep_last=0"], "keep_last: 0 would keep no checkpoint to resume or export from"),
    (None, ["lora.targets=dit_attention"], "invalid setting lora.targets: 'dit_attention' is one value, and "
     "lora.targets is a list (write it in brackets: lora.targets=[dit_attention] on the command line"),
    (None, ["output="], "invalid setting output: it is empty (give output a value)"),
    (None, ["data.profile=atari"], "invalid setting data.profile: unknown console profile 'atari' (use auto or one of"),
    (None, ["data.stick_range={j_left: int12}"], "invalid setting data.stick_range: unknown stick_range 'int12'"),
    (None, ["max_steps=true"], "invalid setting max_steps: true is not a number"),  # pydantic would read 1
    (None, ["data.analog_deadzone=false"], "invalid setting data.analog_deadzone: false is not a number"),
    ("lora:\n  rank: yes\n", [], "run.yaml: invalid setting lora.rank: true is not a number"),  # YAML 1.1's yes
    ("max_stepz: 3\n", [], "run.yaml: unknown setting max_stepz (did you mean max_steps?)"),
    ("null: 2\n", [], "run.yaml: the key None is not a name (write the setting's name, e.g. batch_size: 32;"),
    ("max_steps: 1e3\n", [], "run.yaml: invalid setting max_steps: '1e3' is not written as a whole number (write 1000)"),
    ("learning_rate: 1.0e-3\n", ["learning_rate=abc"], "nitrogen-finetune: error: invalid setting learning_rate"),
])
def test_config_mistakes_are_one_line(recordings, tmp_path, capsys, config_text, settings, expected):
    args = ["train", "--data", str(recordings), "--print-config"]
    if config_text is not None:
        file = tmp_path / "run.yaml"
        file.write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
        args.insert(1, str(file))
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    if "given twice" in expected:  # no hint about quoting: the text parsed
        assert err[0].endswith(expected)


def test_a_folder_given_as_the_config_is_named_as_one(recordings, tmp_path, capsys):
    assert main(["train", str(tmp_path), "--data", str(recordings), "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == (f"nitrogen-finetune: error: {tmp_path}: a folder, not a config file "
                                               "(give a YAML config file)")


def test_a_config_without_data_says_how_to_give_it(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("lora:\n  rank: 4\n")
    with pytest.raises(DataError, match=r"setting data is required \(give --data PATH, or data.dataset_name"):
        resolve_config(file)


def test_a_key_may_override_what_a_yaml_merge_brings(recordings, tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("lora:\n  <<: {rank: 8, alpha: 16}\n  rank: 4\n")
    cfg = resolve_config(file, {"data.dataset_name": str(recordings)})
    assert (cfg.lora.rank, cfg.lora.alpha) == (4, 16)


def test_an_empty_section_takes_dotted_settings(recordings, tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("data:\nlora:\n")
    cfg = resolve_config(file, {"data.dataset_name": str(recordings), "lora.rank": 4})
    assert (cfg.data.dataset_name, cfg.lora.rank) == (str(recordings), 4)


def test_names_that_yaml_reads_as_numbers_stay_names():
    cfg = resolve_config(None, {"data.dataset_name": 2024, "output": 2024, "base": 7})  # --set output=2024
    assert (cfg.data.dataset_name, cfg.output, cfg.base) == ("2024", "2024", "7")


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(recordings, tmp_path):
    common = ["--data", str(recordings), "--max-steps", "3", "--method", "full", "--set", "dropout=0.0",
              "--set", "num_workers=0", "--set", "export_at_end=false", "--set", "batch_size=4",
              "--set", "checkpoint_every=0", "--set", "val_every=0", "--set", "log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def trained(name: str, processes: int, *settings: str) -> Path:
        launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes))
        train_in_a_process("--output", str(tmp_path / name), *common, *settings, env=env,
                           launcher=launcher if processes > 1 else ())
        return tmp_path / name

    float32 = trained("one", 1)
    bf16 = ["--set", "bf16_weights=true"]
    # Tolerances for the weights and the held-out loss, and for the gradient norms: bf16 gradients
    # are averaged across the processes in bf16, so there the two agree to bf16's precision.
    for one, two, tolerance, norm_tolerance in [
        (float32, trained("ddp", 2), 1e-5, 1e-4),
        (float32, trained("fsdp", 2, "--set", "fsdp=true"), 1e-5, 1e-4),
        (trained("one_bf16", 1, *bf16), trained("bf16_weights", 2, *bf16), 1e-3, 3e-2),
    ]:
        a, b = final_weights(one), final_weights(two)
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= tolerance, two.name
        # The held-out loss is over the same windows, however the processes share them.
        val_losses = [json.loads((run / "summary.json").read_text())["val_loss"] for run in (one, two)]
        assert val_losses[1] == pytest.approx(val_losses[0], rel=tolerance), two.name
        # The logged gradient norm is the whole model's, not one process's share.
        norms = [logged(run, "train/grad_norm") for run in (one, two)]
        assert len(norms[0]) == 3 and all(n > 0 for n in norms[0])
        assert norms[1] == pytest.approx(norms[0], rel=norm_tolerance), two.name


def _worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of the launcher's worker process with that RANK (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher_pid:
                if f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
        except OSError:
            continue
    raise LookupError(f"no worker of rank {rank}")


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(recordings, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "nitrogen_finetuner.cli", "train", "--data", str(recordings), "--output", str(run_dir),
               "--max-steps", "100000", "--set", "num_workers=0", "--set", "log_every=1",
               "--set", "checkpoint_every=0", "--set", "val_every=0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(_worker_of_rank(process.pid, 1), signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    checkpoint = checkpoint_dirs(run_dir)[-1]
    step = load_training_state(checkpoint).progress.step
    assert {p.name for p in checkpoint.glob("rng_rank*")} == {"rng_rank0.safetensors", "rng_rank1.safetensors"}
    streams = [load_file(str(checkpoint / f"rng_rank{rank}.safetensors"))["torch"] for rank in (0, 1)]
    assert not torch.equal(*streams)  # the same adapters, but dropout masks of each process's own
    assert len(checkpoint_dirs(run_dir)) == 1 and step >= 3
    assert (f"stopped by SIGTERM after step {step}; its checkpoint is saved: continue with  torchrun --nproc_per_node "
            f"2 -m nitrogen_finetuner.cli train --resume {run_dir}  (or accelerate launch with the same processes)") in err


RANK_1_ELSEWHERE = """
import os, sys
from nitrogen_finetuner.cli import main
if os.environ["RANK"] == "1":  # as if on another machine, whose disk holds another runs/ folder
    os.chdir(sys.argv[1])
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_processes_that_do_not_share_the_run_folder_stop_before_training(recordings, tmp_path):
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--no-python", sys.executable, "-c", RANK_1_ELSEWHERE, str(tmp_path / "there"),
               "train", "--data", str(recordings), "--output", "runs/a", "--max-steps", "4",
               "--set", "num_workers=0", "--set", "batch_size=4", "--set", "val_every=0"]
    done = subprocess.run(command, cwd=tmp_path / "here", capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "1 of 2 processes do not see this run folder (on several machines, --output must be a folder they " \
           "all share" in done.stderr
    assert not (tmp_path / "here" / "runs" / "a" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method, recompute", [("full", False), ("lora", False), ("lora", True)],
                         ids=["full", "lora", "lora_activation_checkpointing"])
def test_a_compiled_run_saves_and_exports_under_the_model_names(recordings, tmp_path, method, recompute, capsys):
    """``compile`` compiles each transformer layer, the adapters of LoRA's inside them; validation
    and its sampled chunks run eager. With activation checkpointing, LoRA's frozen tower, through
    which no backward pass runs, is not recomputed (compiled, it could not be: it has dropout)."""
    settings = {"method": method, "max_steps": 1, "dropout": 0.0, "lora.dropout": 0.0, "val_every": 1,
                "val_chunks": 2, "activation_checkpointing": recompute}
    train(config(recordings, tmp_path / "eager", **settings))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = train(config(recordings, tmp_path / "compiled", compile=True, export_at_end=True, **settings))
    layers = len(build_preset("tiny")[0].transformer_layers())
    # Like layers share their graphs: 12 SigLIP layers, 2 VL-mixer and 4 DiT blocks need 5 (full: two
    # kinds of SigLIP layer, as layer 11 is frozen, and mixer, cross- and self-attention blocks;
    # LoRA: one kind of frozen SigLIP layer, two of mixer block, as the first one's input needs no
    # gradient), and validation adds none.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 5 < layers
    assert logged(tmp_path / "compiled", "val/button_f1")
    assert "note        compile: the first step compiles" in capsys.readouterr().out
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4  # fused kernels round differently
    assert load_policy(compiled.exported).model.config.action_dim > 0


@pytest.mark.slow
def test_a_compiled_run_compiles_every_layer_after_other_models_were_compiled_in_the_process(recordings, tmp_path):
    """Dynamo keeps a function's graphs up to ``recompile_limit``, for every model whose layers share
    its code; a layer past the limit runs eager. Here other blocks compiled before (with dynamo's
    eager backend, which is quick) take all of the transformer block's places: the run compiles
    its 5 graphs all the same (see the test above)."""
    block = build_preset("tiny")[0].vl_self_attention_model.transformer_blocks[0]
    compiled_before = torch.compile(block, backend="eager", dynamic=False)
    for length in range(2, 2 + torch._dynamo.config.recompile_limit):
        compiled_before(torch.randn(1, length, block.norm3.normalized_shape[0]))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    train(config(recordings, tmp_path / "run", method="lora", max_steps=1, dropout=0.0, compile=True,
                 **{"lora.dropout": 0.0}))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 5


@pytest.mark.slow
def test_bf16_fsdp_follows_a_bf16_autocast_run_in_one_process_with_the_same_losses(recordings, tmp_path):
    """FSDP's bf16 layers and bf16 autocast train alike. The fp32 runs of the other tests share this
    process: each run sets its own precision."""
    common = dict(mixed_precision="bf16", method="full", max_steps=3, dropout=0.0)
    autocast = train(config(recordings, tmp_path / "autocast", **common)).losses
    sharded = train(config(recordings, tmp_path / "fsdp", fsdp=True, **common)).losses
    assert sharded == pytest.approx(autocast, rel=0.02)
    assert sharded != autocast  # bf16 layers, not autocast: the rounding differs
    float32 = train(config(recordings, tmp_path / "float32", mixed_precision="no", method="full", max_steps=3,
                           dropout=0.0)).losses
    assert float32 != autocast


def test_a_micro_batch_that_does_not_divide_the_batch_says_what_to_set(recordings, tmp_path):
    with pytest.raises(DataError, match=r"batch_size 4 is not a multiple of micro_batch_size 3 x 1 processes \(set "
                                        r"micro_batch_size \(--set micro_batch_size=N\) so that N x 1 divides 4"):
        train(config(recordings, tmp_path / "run", micro_batch_size=3, max_steps=1))


def test_block_sharding_refuses_data_with_fewer_blocks_than_readers(tmp_path):
    write_nitrogen_parquet(tmp_path / "data" / "one.parquet", n=24, row_group_size=24)  # one block
    with pytest.raises(DataError, match=r"data.shard blocks gives each of the 2 readers \(processes x workers\) "
                                        r"blocks of its own, and the data has 1"):
        train(config(tmp_path / "data", tmp_path / "run", max_steps=1, num_workers=2, **{"data.shard": "blocks"}))
