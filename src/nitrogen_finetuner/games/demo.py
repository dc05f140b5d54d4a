"""The no-argument ``nitrogen-finetune train``: the whole job on the built-in games, on a CPU.

Records (once) expert play of both games, fine-tunes the ``tiny`` preset on it through the same
loaders, trainer and exporter a GPU user runs, then evaluates the exported model against the
untrained model and a random player: open-loop on the held-out episodes, closed-loop in the games
on seeds no recording used. Everything lands in the run folder (``demo_results.json``,
``eval/``, ``rollout_<game>.gif``, ``model.pt``).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from ..data.config import DataConfig
from ..evaluation.report import run_eval
from ..policy import load_policy
from ..training.checkpoints import checkpoint_dirs
from . import GAMES
from .rollout import policy_player, random_player, rollout

HELD_OUT_SEEDS = range(10_000, 10_010)  # recordings use seeds 0..episodes-1
# Closed loop, every model player re-plans after 6 of the chunk's 18 actions (receding horizon):
# the later steps of a chunk guess at what happens after the next target is reached.
REPLAN_EVERY = 6

DEMO_SETTINGS = {
    "base": "tiny",
    "method": "full",
    "max_steps": 4000,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "warmup_steps": 20,
    "dropout": 0.0,
    "val_fraction": 0.15,
    "val_every": 1000,
    "checkpoint_every": 1000,
    "num_workers": 1,
    "data.action_shift": 0,  # frame t is what the expert saw before choosing action row t
}


def next_demo_folder(first: str = "runs/demo") -> str:
    """``runs/demo``, else ``runs/demo2``, ``runs/demo3``, ...: the first holding no checkpoints
    of an earlier run, so running the demo again works and leaves earlier demo runs alone."""
    candidates = (first if n == 1 else f"{first}{n}" for n in itertools.count(1))
    return next(folder for folder in candidates if not checkpoint_dirs(Path(folder)))


def evaluate_demo(run_dir: Path, data_folder: Path, seed: int = 0, val_fraction: float = 0.15) -> tuple[dict, str]:
    """Open- and closed-loop numbers of the trained model, the untrained model and random play."""
    trained_path, untrained_path = run_dir / "model.pt", run_dir / "base.pt"
    data_config = DataConfig(dataset_name=str(data_folder), action_shift=0)
    # Minutes on a CPU with nothing else printed: say what runs.
    print("evaluate    open loop: the untrained and the trained model on the held-out episodes", flush=True)
    open_loop, _ = run_eval([str(untrained_path), str(trained_path)], data_config, run_dir / "eval", episodes="val",
                            val_fraction=val_fraction, seed=seed)
    trained = load_policy(trained_path, verbose=False)
    untrained = load_policy(untrained_path, verbose=False)
    players = {
        "trained": lambda s: policy_player(trained, s, REPLAN_EVERY),
        "untrained": lambda s: policy_player(untrained, s, REPLAN_EVERY),
        "random": lambda s: random_player(s, trained.layout.buttons),
    }
    closed_loop = {}
    for game in GAMES:
        print(f"evaluate    closed loop: {game}, {len(HELD_OUT_SEEDS)} unseen seeds for each of {', '.join(players)}",
              flush=True)
        closed_loop[game] = {
            name: rollout(game, make, HELD_OUT_SEEDS,
                          gif=run_dir / f"rollout_{game}.gif" if name == "trained" else None).as_dict()
            for name, make in players.items()
        }
    scores = open_loop["checkpoints"]
    results = {
        "open_loop_held_out": {
            name: {"button_f1": scores[label]["buttons"]["macro_f1"], "stick_mae": scores[label]["sticks"]["mean_mae"]}
            for name, label in (("untrained", "base"), ("trained", "model"))
        },
        "closed_loop_held_out_seeds": closed_loop,
        "closed_loop_replan_every": REPLAN_EVERY,
    }
    (run_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    return results, format_demo(results, run_dir)


def _cell(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def format_demo(results: dict, run_dir: Path) -> str:
    lines = [f"{'':<26}{'trained':>10}{'untrained':>11}{'random':>9}"]
    open_loop = results["open_loop_held_out"]
    lines.append(f"{'button F1 (held-out)':<26}{_cell(open_loop['trained']['button_f1'], '{:.3f}'):>10}"
                 f"{_cell(open_loop['untrained']['button_f1'], '{:.3f}'):>11}{'-':>9}")
    lines.append(f"{'stick MAE (held-out)':<26}{_cell(open_loop['trained']['stick_mae'], '{:.3f}'):>10}"
                 f"{_cell(open_loop['untrained']['stick_mae'], '{:.3f}'):>11}{'-':>9}")
    for game, by_player in results["closed_loop_held_out_seeds"].items():
        lines.append(f"{game + ' success':<26}" + "".join(
            f"{by_player[p]['success_rate']:>{w}.0%}" for p, w in (("trained", 10), ("untrained", 11), ("random", 9))))
        lines.append(f"{game + ' mean return':<26}" + "".join(
            f"{by_player[p]['mean_return']:>{w}.1f}" for p, w in (("trained", 10), ("untrained", 11), ("random", 9))))
    lines += [
        f"(closed loop: {len(HELD_OUT_SEEDS)} unseen seeds per game; models re-plan every "
        f"{results['closed_loop_replan_every']} steps)",
        f"run folder   {run_dir}  (demo_results.json, metrics.jsonl, tensorboard/)",
        f"plots        {run_dir / 'eval'}  (f1.png, horizon.png, traces_*.png), {run_dir}/rollout_*.gif",
        f"checkpoint   {run_dir / 'model.pt'}  (official format)",
    ]
    return "\n".join(lines)
