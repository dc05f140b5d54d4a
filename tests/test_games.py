"""The built-in games, their experts and recorder, closed-loop rollouts, and the no-argument demo."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest

from nitrogen_finetuner import load_policy
from nitrogen_finetuner.actions.layout import ActionLayout
from nitrogen_finetuner.cli import main
from nitrogen_finetuner.data.config import DataConfig
from nitrogen_finetuner.data.pipeline import ModelInputs, prepare_data
from nitrogen_finetuner.games import GAMES, GamepadAction
from nitrogen_finetuner.games.demo import next_demo_folder
from nitrogen_finetuner.games.base import BUTTONS
from nitrogen_finetuner.games.recorder import record_game
from nitrogen_finetuner.games.rollout import policy_player, random_player, rollout

LAYOUT = ActionLayout.resolve(25, old_layout=False)


@pytest.mark.parametrize("name", sorted(GAMES))
def test_experts_succeed_where_random_play_fails(name):
    successes = []
    for seed in range(10):
        game = GAMES[name]()
        frame, _ = game.reset(seed=seed)
        rng, done = np.random.default_rng(seed), False
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        while not done:
            frame, _, terminated, truncated, info = game.step(game.expert(rng, 0.0))
            done = terminated or truncated
        successes.append(info["success"])
    assert np.mean(successes) >= 0.9
    assert rollout(name, lambda s: random_player(s, LAYOUT.buttons), range(10)).success_rate <= 0.1


@pytest.mark.parametrize("name", sorted(GAMES))
def test_the_games_follow_gymnasiums_rules(name):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # render-mode notes: the games draw every frame
        check_env(GAMES[name]())  # spaces, seeding, and dict actions sampled from the action space
    game = GAMES[name]()
    with pytest.raises(RuntimeError, match=f"{name}: call reset"):
        game.step(GamepadAction())
    game.reset(seed=5)
    episodes = [np.stack([game.reset()[0]] + [game.step(GamepadAction())[0] for _ in range(10)]) for _ in range(2)]
    game.reset(seed=5)  # no seed after a seed goes on from it: the same two games again
    assert all(np.array_equal(np.stack([game.reset()[0]] + [game.step(GamepadAction())[0] for _ in range(10)]), e)
               for e in episodes)
    south = {"buttons": np.array([b == "SOUTH" for b in BUTTONS], np.int8), "j_left": np.zeros(2, np.float32),
             "j_right": np.zeros(2, np.float32)}
    game.reset(seed=1)
    as_dict = [game.step(south)[0] for _ in range(10)]
    game.reset(seed=1)
    assert all(np.array_equal(game.step(GamepadAction(frozenset({"SOUTH"})))[0], f) for f in as_dict)
    with pytest.raises(TypeError, match="a step takes a GamepadAction or a dict with buttons, j_left and j_right"):
        game.step({"SOUTH": 1})
    with pytest.raises(ValueError, match=r"j_left: \(x, y\) with each value in \[-1, 1\], got \(0.5, 2.0\)"):
        game.step(GamepadAction(j_left=(0.5, 2.0)))
    with pytest.raises(ValueError, match="j_right: "):
        game.step({**south, "j_right": np.array([np.nan, 0.0])})
    done = False
    while not done:
        _, _, terminated, truncated, _ = game.step(GamepadAction())
        done = terminated or truncated
    with pytest.raises(RuntimeError, match="the episode is over"):
        game.step(GamepadAction())


def test_runner_jumps_with_south_only():
    game = GAMES["runner"]()
    game.reset(seed=0)
    game.step(GamepadAction(buttons=frozenset({"EAST"})))
    assert game.height == 0.0
    game.step(GamepadAction(buttons=frozenset({"SOUTH"})))
    assert game.height > 0.0


def test_recordings_go_through_the_user_data_path(tmp_path):
    record_game("runner", tmp_path / "runner", episodes=2)
    record_game("collector", tmp_path / "collector", episodes=2)
    runner_file = sorted((tmp_path / "runner").glob("*.parquet"))[0]
    columns = pq.read_schema(runner_file).names
    assert "P1 B" in columns and "P1 A" in columns and "j_left" not in columns  # a raw NES log
    assert {"south", "j_left", "j_right"} <= set(pq.read_schema(sorted((tmp_path / "collector").glob("*.parquet"))[0]).names)
    data = prepare_data(DataConfig(dataset_name=str(tmp_path), action_shift=0),
                        ModelInputs(LAYOUT, horizon=18, action_shift=0, image_size=64))
    profiles = sorted(b.profile.name for b in data.index.bindings)
    assert profiles == ["nes", "nes", "nitrogen", "nitrogen"]
    runner = next(e for e in data.index.episodes if "runner" in e.name)
    jumps = pq.read_table(runner_file).column("P1 B").to_pylist()
    np.testing.assert_array_equal(runner.actions[:, LAYOUT.slot_names.index("SOUTH")], np.array(jumps, float))
    assert not runner.slot_mask[LAYOUT.slot_names.index("LEFT_X")]  # a NES has no stick: masked


def test_rollout_command_writes_a_gif(tmp_path, capsys):
    checkpoint = tmp_path / "tiny.pt"
    assert main(["init", str(checkpoint)]) == 0
    assert main(["rollout", "--checkpoint", str(checkpoint), "--game", "collector", "--episodes", "2",
                 "--output", str(tmp_path)]) == 0
    assert "collector: success" in capsys.readouterr().out
    assert (tmp_path / "rollout_collector.gif").read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    # A layout without SOUTH would never jump in runner and still report a score: refused.
    policy = load_policy(checkpoint, verbose=False)
    lower = tmp_path / "lower.pt"
    load_policy(checkpoint, buttons=[b.lower() for b in policy.layout.buttons], verbose=False).save(lower)
    assert main(["rollout", "--checkpoint", str(lower), "--game", "runner", "--episodes", "1"]) == 2
    assert "runner reads the SOUTH button, which the checkpoint's layout (custom) does not name" in capsys.readouterr().err


def test_shortened_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NITROGEN_FINETUNER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("nitrogen_finetuner.games.demo.HELD_OUT_SEEDS", range(10_000, 10_002))
    monkeypatch.setattr("nitrogen_finetuner.games.recorder.demo_dataset.__defaults__", (4, None))
    assert main(["train", "--output", str(tmp_path / "demo"), "--max-steps", "2", "--set", "batch_size=8",
                 "--set", "num_workers=0", "--set", "val_fraction=0.3", "--set", "export_at_end=false"]) == 0
    assert "runner success" not in capsys.readouterr().out  # nothing exported yet to play with
    assert main(["train", "--resume", str(tmp_path / "demo"), "--max-steps", "3", "--set", "export_at_end=true"]) == 0
    printed = capsys.readouterr().out  # a demo run resumed ends with the games' evaluation too
    (tmp_path / "demo" / "demo_results.json").unlink()  # as if Ctrl-C stopped that evaluation
    assert main(["train", "--resume", str(tmp_path / "demo"), "--max-steps", "3"]) == 0
    assert "has trained its 3 steps: evaluating its model.pt" in capsys.readouterr().out
    assert "runner success" in printed and "collector success" in printed and "button F1 (held-out)" in printed
    assert "evaluate    closed loop: collector, 2 unseen seeds for each of trained, untrained, random" in printed
    results = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(results["closed_loop_held_out_seeds"]) == {"runner", "collector"}
    assert set(results["closed_loop_held_out_seeds"]["runner"]) == {"trained", "untrained", "random"}
    for name in ("model.pt", "eval/f1.png", "rollout_runner.gif", "rollout_collector.gif"):
        assert (tmp_path / "demo" / name).exists(), name
    # the exported model remembers that it was trained with action_shift 0 (the official config
    # cannot hold 0), so evaluating it later aligns frames and actions the same way
    from nitrogen_finetuner import load_policy

    exported = load_policy(tmp_path / "demo" / "model.pt", verbose=False)
    assert exported.extra["data_action_shift"] == 0 and ModelInputs.of_policy(exported).action_shift == 0
    assert ModelInputs.of_checkpoint(str(tmp_path / "demo" / "model.pt")).action_shift == 0


def test_a_base_file_without_data_is_a_forgotten_data_not_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NITROGEN_FINETUNER_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--base", "ng.pt", "--output", str(tmp_path / "run")]) == 2
    assert ("no --data: without data, train runs the built-in demo, which fine-tunes a preset, not --base ng.pt "
            "(give --data with the recordings") in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # nothing recorded or started
    assert main(["train", "--base", "released", "--print-config"]) == 0  # a preset is still the demo's to take
    assert "base: released" in capsys.readouterr().out


def test_running_the_demo_again_takes_the_next_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert next_demo_folder() == "runs/demo"
    (tmp_path / "runs" / "demo" / "checkpoints" / "step_000010").mkdir(parents=True)
    (tmp_path / "runs" / "demo2").mkdir()  # a folder with no checkpoints holds no earlier run
    assert next_demo_folder() == "runs/demo2"
    (tmp_path / "runs" / "demo2" / "checkpoints" / "step_000010").mkdir(parents=True)
    assert next_demo_folder() == "runs/demo3"


def test_policy_player_replans_every_n_steps(tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    assert main(["init", str(checkpoint)]) == 0
    policy = load_policy(checkpoint, verbose=False)
    calls = []
    predict = policy.predict
    policy.predict = lambda frame, noise: calls.append(1) or predict(frame, noise=noise)
    frame = np.zeros((64, 64, 3), np.uint8)
    play = policy_player(policy, seed=0, replan_every=6)
    for step in range(18):
        play(frame, step)
    assert len(calls) == 3
    with pytest.raises(ValueError, match="replan_every"):
        policy_player(policy, seed=0, replan_every=policy.horizon + 1)
