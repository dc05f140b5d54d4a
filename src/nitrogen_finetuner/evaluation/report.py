"""``nitrogen-finetune eval``: several checkpoints, one dataset, one report.

Writes ``report.json`` (every number), ``f1.png``, ``horizon.png``, ``traces_<checkpoint>.png``
and, with the button-order check, ``button_order_<checkpoint>.png``; returns a short table under
the profile the data is read with, the columns nothing reads, the held-out split (``--episodes
val``: a run's own, read from the ``config.yaml`` beside its checkpoint) and the chunks left out
for frames that do not decode (``--skip-bad-rows``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..actions.layout import STICK_SLOTS
from ..data.config import DataConfig
from ..data.episodes import (read_held_out, recorded_in_place, recording_key, recording_key_endings,
                             recording_key_within, split_episodes)
from ..data.errors import DataError, user_message
from ..data.images import COMMAND_HINT
from ..data.pipeline import ModelInputs, prepare_data
from ..files import check_output_folder
from ..model.checkpoint import read_record
from ..policy import load_policy, require_finite_actions
from ..training.config import resolve_config
from . import plots
from .metrics import slot_agreement
from .open_loop import Chunks, predict_chunks, score_chunks


def button_order_check(chunks: Chunks, policy) -> dict:
    """Agreement of every predicted button slot with every labelled button, each button over the
    rows that label it (data from several consoles labels different buttons on different rows)."""
    layout = policy.layout
    mask = chunks.mask[..., layout.button_slice].reshape(-1, layout.n_buttons)
    labelled = [i for i in range(layout.n_buttons) if mask[:, i].any()]
    scores = chunks.predicted[..., layout.button_slice].reshape(-1, layout.n_buttons)
    true = chunks.true[..., layout.button_slice].reshape(-1, layout.n_buttons)
    columns = [slot_agreement(scores[mask[:, i]], true[mask[:, i]][:, [i]]) for i in labelled]
    agreement = {key: np.concatenate([c[key] for c in columns], axis=1) if columns else np.empty((layout.n_buttons, 0))
                 for key in ("correlation", "best_f1")}
    names = [layout.buttons[i] for i in labelled]
    best = {}
    for j, name in enumerate(names):
        column = agreement["correlation"][:, j]
        if np.all(np.isnan(column)):
            continue
        slot = int(np.nanargmax(column))
        best[name] = {"best_slot": layout.buttons[slot], "correlation": float(column[slot]),
                      "own_slot_correlation": float(agreement["correlation"][layout.buttons.index(name), j]),
                      "matches_assumed_order": layout.buttons[slot] == name}
    return {
        "button_order": layout.button_order,
        "labelled_buttons": names,
        "correlation": np.where(np.isnan(agreement["correlation"]), None, agreement["correlation"]).tolist(),
        "best_threshold_f1": np.where(np.isnan(agreement["best_f1"]), None, agreement["best_f1"]).tolist(),
        "best_slot_per_label": best,
    }


def _labels(paths: Sequence[str]) -> list[str]:
    """The name of each checkpoint in the table, plots and file names: its file name, with its
    folder's where two share one (two runs' model.pt), and a number where that is not enough."""
    keys = [(Path(p).resolve().parent.name, Path(p).stem) for p in paths]
    stems = [stem for _, stem in keys]
    labels, taken = [], set()
    for folder, stem in keys:
        first = stem if keys.count((folder, stem)) == stems.count(stem) else f"{folder}-{stem}"
        label, n = first, 2
        while label in taken:
            label, n = f"{first}_{n}", n + 1
        labels.append(label)
        taken.add(label)
    return labels


DEFAULT_VAL_FRACTION, DEFAULT_SEED = 0.1, 0


@dataclass(frozen=True)
class Split:
    """The episodes ``--episodes val`` holds out: the recordings the run recorded it held out, or
    (for a run from before that record, or flags that choose another split) those val_fraction
    and seed pick; and where the values came from."""

    val_fraction: float
    seed: int
    runs: tuple[str, ...] = ()  # run folders whose config.yaml gave a value
    given: tuple[str, ...] = ()  # the flags the caller gave, which win over a run's values
    run_data: tuple[str, ...] = ()  # the datasets those runs trained on
    recordings: Optional[tuple[str, ...]] = None  # the runs' held-out recordings (recording_key names)

    def choose(self, recordings: list[str], dataset: str) -> tuple[list[int], int]:
        """The held-out episodes of the data as it reads now, and how many of the run's held-out
        recordings it holds. Recordings added to the data since the run are in neither set."""
        if self.recordings is None:
            return split_episodes(recordings, self.val_fraction, self.seed)[1], 0
        # A held-out recording still where the run read it is matched there, by its path within the
        # run's data (the data given may be that folder, a folder or file within it, or one around
        # it): a file of the same name elsewhere in it is another recording. One that moved is
        # matched by the end of its path (data/sub/run.parquet is the run's sub/run.parquet), and so
        # is every one when the data given lies outside the run's (a copy).
        roots = [d for d in self.run_data if Path(d).expanduser().exists()]
        in_place = {k for k in self.recordings if any(recorded_in_place(k, root) for root in roots)}
        exacts = [next((k for k in (recording_key_within(r, root) for root in roots) if k is not None), None)
                  for r in recordings]
        by_ending = set(self.recordings) - in_place if any(exacts) else set(self.recordings)
        keys = [exact if exact in in_place else
                next((k for k in (recording_key(r, dataset), *recording_key_endings(r)) if k in by_ending), None)
                for r, exact in zip(recordings, exacts)]  # recording_key: a dataset folder's own ". [..]"
        chosen = [e for e, key in enumerate(keys) if key is not None]
        present = len({keys[e] for e in chosen})
        if self.recordings and not present:
            raise DataError(f"none of the {len(self.recordings)} recordings run {', '.join(self.runs)} held out is in "
                            f"this data as it reads now (it held out {self.recordings[0]!r}, here: "
                            f"{recording_key(recordings[0], dataset)!r})",
                            file=dataset, hint="give the data the run trained on, read with the run's data settings "
                                               "(such as --episode-column; see its config.yaml), or "
                                               "--episodes all for other data")
        return chosen, present

    def describe(self, dataset: str, present: int = 0) -> str:
        # A run is its folder, or the checkpoint file that recorded its split (an exported copy).
        of = " of " + ", ".join(f"run {run}" if Path(run).is_dir() else f"the run that wrote {run}"
                                for run in self.runs) if self.runs else ""
        other = [d for d in self.run_data if not _same_dataset(d, dataset)]
        trained_on = f" (the run trained on {', '.join(other)}, not on {dataset})" if other else ""
        if self.recordings is not None:
            missing = len(self.recordings) - present
            return (f"held-out recordings{of}: the {len(self.recordings)} it recorded"
                    + (f", {missing} of them not in this data" if missing else "") + trained_on)
        flags = {"val_fraction": "--val-fraction", "seed": "--seed"}
        values = [f"{key} {value:g}" + (f" ({flags[key]})" if self.runs and key in self.given else "")
                  for key, value in (("val_fraction", self.val_fraction), ("seed", self.seed))]
        what = f"not the held-out recordings{of}, but" if self.runs and self.given else f"held-out episodes{of}:"
        return f"{what} {', '.join(values)}{trained_on}"


def _same_dataset(a: str, b: str) -> bool:
    """Two dataset names that name the same dataset (a folder under two spellings, or one hub id)."""
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.resolve() == second.resolve() if first.exists() and second.exists() else a == b


def recorded_split(path: str) -> Optional[dict]:
    """The held-out split an exported checkpoint records (``val_fraction``, ``seed``, ``data``, and
    since it recorded them, ``recordings``), or None for a checkpoint without one."""
    held_out = read_record(path).get("held_out")
    return held_out if isinstance(held_out, dict) and {"val_fraction", "seed", "data"} <= held_out.keys() else None


def held_out_split(checkpoints: Sequence[str], val_fraction: Optional[float] = None,
                   seed: Optional[int] = None) -> Split:
    """The split of ``--episodes val``. A checkpoint whose folder holds the ``config.yaml`` of the
    run that wrote it (a run's exported ``model.pt``), or that records its run's split (``export``
    writes it), gives the recordings that run held out; the caller's ``val_fraction`` or ``seed``,
    given, choose another split by those values. Without a run: 0.1 and 0. Checkpoints of runs
    that held out different episodes are refused."""
    given = tuple(key for key, value in (("val_fraction", val_fraction), ("seed", seed)) if value is not None)
    found: dict[str, tuple[float, int, Optional[tuple[str, ...]]]] = {}
    run_data: dict[str, str] = {}
    if len(given) < 2:
        for path in checkpoints:
            config_file = Path(path).parent / "config.yaml"
            if str(config_file.parent) in found:
                continue
            if config_file.is_file():
                try:
                    config = resolve_config(config_file)
                except DataError as err:
                    raise DataError(f"--episodes val reads the split of the run beside the checkpoint {path}, and "
                                    f"{user_message(err)}", hint="pass --val-fraction and --seed to choose the split") from None
                run, record = str(config_file.parent), {"val_fraction": config.val_fraction, "seed": config.seed,
                                                        "data": config.data.dataset_name,
                                                        "recordings": read_held_out(config_file.parent)}
            else:
                run, record = str(path), recorded_split(path)
                if record is None:
                    continue
            recordings = record.get("recordings")  # --seed alone changes the start noise, not them
            kept = tuple(sorted(recordings)) if isinstance(recordings, list) and val_fraction is None else None
            found[run] = (record["val_fraction"] if val_fraction is None else val_fraction,
                          record["seed"] if seed is None else seed, kept)
            run_data[run] = record["data"]
    splits = set(found.values())
    if len(splits) > 1:
        listing = "; ".join(f"{run}: val_fraction {vf:g}, seed {sd}" + (f", {len(r)} held-out recording(s)" if r else "")
                            for run, (vf, sd, r) in found.items())
        raise DataError(f"--episodes val: the checkpoints come from runs that held out different episodes ({listing})",
                        hint="evaluate them one at a time, or pass --val-fraction and --seed to choose one split")
    if splits:
        chosen_fraction, chosen_seed, recordings = splits.pop()
    else:
        chosen_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        chosen_seed = DEFAULT_SEED if seed is None else seed
        recordings = None
    return Split(chosen_fraction, chosen_seed, tuple(found), given, tuple(dict.fromkeys(run_data.values())),
                 recordings)


def run_eval(
    checkpoints: Sequence[str],
    data_config: DataConfig,
    output: Path,
    episodes: str = "all",
    val_fraction: Optional[float] = None,
    seed: Optional[int] = None,
    button_order: Optional[str] = None,
    check_button_order: bool = False,
    limit: Optional[int] = None,
    device: str = "cpu",
    trust_pickle: bool = False,
    buttons: Optional[Sequence[str]] = None,
    image_fit: Optional[str] = None,
) -> tuple[dict, str]:
    """``seed`` seeds the start noise and, with ``episodes="val"``, the split; left None, they
    (and ``val_fraction``) are the run's where a checkpoint's run config is found, else 0 (and 0.1).
    ``image_fit`` left None fits each checkpoint's frames square as it is played (``data_config``'s
    is not used)."""
    split = held_out_split(checkpoints, val_fraction, seed) if episodes == "val" else None
    seed = split.seed if split else (DEFAULT_SEED if seed is None else seed)
    check_output_folder(output, "eval")  # made once a checkpoint is evaluated: a failure before leaves none
    for path in checkpoints[1:]:  # a mistake in a later one stops the command before hours on the first
        _check_checkpoint(path, button_order, buttons, trust_pickle)
    reports, orders, files, fits, shifts, chosen, names = {}, {}, {}, {}, {}, None, []
    profiles, unused, skipped = {}, set(), []
    for path, label in zip(checkpoints, _labels(checkpoints)):
        policy = load_policy(path, device=device, button_order=button_order, buttons=buttons,
                             trust_pickle=trust_pickle, verbose=False)
        _require_finite_weights(policy, path)
        fitted = data_config.model_copy(update={"image_fit": image_fit or policy.preprocessor.fit})
        data = prepare_data(fitted, ModelInputs.of_policy(policy))
        every = list(range(len(data.index.episodes)))
        chosen, present = (every, 0) if split is None else split.choose(data.index.recordings, data_config.dataset_name)
        if not chosen:
            if split is not None and split.val_fraction == 0:  # a run may train on every episode
                whose = f"run {', '.join(split.runs)}" if split.runs else "the split"
                raise DataError(f"no held-out episodes: {whose} has val_fraction 0", file=data_config.dataset_name,
                                hint="evaluate with --episodes all, or pass --val-fraction")
            raise DataError("no held-out episodes: the dataset has fewer than two recordings",
                            file=data_config.dataset_name, hint="evaluate with --episodes all")
        chunks = predict_chunks(policy, data, chosen, seed=seed, limit=limit, hint=COMMAND_HINT)
        if not len(chunks.episodes):
            if chunks.skipped:
                raise DataError(f"the frame of every chunk queried does not decode ({len(chunks.skipped)} left out "
                                f"with --skip-bad-rows; first: {chunks.skipped[0]})", file=data_config.dataset_name,
                                hint="fix the frames, or name the column that holds them with --image-column")
            gaps = data.index.gaps_note()
            raise DataError("no frame of the chosen episodes has an action chunk to compare with" + gaps,
                            file=data_config.dataset_name,
                            hint=f"an episode needs more than action_shift ({data.spec.action_shift}) frames"
                            + (" (--frame-column none reads the rows in file order)" if gaps else ""))
        require_finite_actions(chunks.predicted, str(path))
        reports[label], files[label] = score_chunks(chunks, policy), str(Path(path).resolve())
        profiles[label] = data.index.profiles_note("scored on")
        fits[label] = fitted.image_fit
        shifts[label] = data.spec.action_shift
        unused.update(data.index.all_unused_columns)
        skipped += [note for note in chunks.skipped if note not in skipped]
        names = [data.index.episodes[i].name for i in chosen]
        output.mkdir(parents=True, exist_ok=True)  # only now: a checkpoint or dataset that fails leaves no folder
        plots.traces(chunks, policy, output / f"traces_{label}.png", label, data.spec.action_shift)
        if check_button_order:
            orders[label] = button_order_check(chunks, policy)
            plots.agreement_heatmap(np.array(orders[label]["correlation"], dtype=float), list(policy.layout.buttons),
                                    orders[label]["labelled_buttons"], output / f"button_order_{label}.png",
                                    f"{label}: correlation, {policy.layout.button_order} order")
    plots.f1_bars(reports, output / "f1.png")
    plots.horizon_errors(reports, output / "horizon.png")
    report = {"data": data_config.dataset_name, "episodes": chosen, "episode_names": names, "seed": seed,
              "profiles": profiles, "image_fits": fits, "action_shifts": shifts, "unused_columns": sorted(unused),
              "skipped_bad_frames": skipped, "checkpoint_files": files, "checkpoints": reports}
    if split is not None:
        report["split"] = {"val_fraction": split.val_fraction, "seed": split.seed, "runs": list(split.runs),
                           "given": list(split.given), "text": split.describe(data_config.dataset_name, present)}
        if split.recordings is not None:
            report["split"]["recordings"] = list(split.recordings)
    if orders:
        report["button_order_check"] = orders
    (output / "report.json").write_text(json.dumps(report, indent=2))
    drawn = {f"traces_{label}.png" for label in reports} | {f"button_order_{label}.png" for label in orders}
    for stale in [*output.glob("traces_*.png"), *output.glob("button_order_*.png")]:  # an earlier eval's, here
        if stale.name not in drawn and stale.is_file():
            stale.unlink()
    return report, format_table(report, output)


def _check_checkpoint(path: str, button_order: Optional[str], buttons: Optional[Sequence[str]],
                      trust_pickle: bool) -> None:
    """A checkpoint loads as a policy (on the CPU, then let go), with weights that are numbers."""
    _require_finite_weights(load_policy(path, button_order=button_order, buttons=buttons, trust_pickle=trust_pickle,
                                        verbose=False), path)


def _require_finite_weights(policy, path: str) -> None:
    if policy.nonfinite_weights():
        raise DataError("the weights hold NaN or infinity", file=str(path),
                        hint="use an earlier checkpoint of the run, or export it again")


def _fmt(value, pattern="{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def format_header(report: dict) -> list[str]:
    """What the numbers are of: the profile, the columns nothing reads, the split, the left-out chunks."""
    lines = []
    if "split" in report:
        lines.append(f"episodes     {report['split']['text']} ({len(report['episodes'])} episode(s))")
    profiles = report.get("profiles", {})
    if len(set(profiles.values())) == 1:
        lines.append(f"profile      {next(iter(profiles.values()))}")
    else:
        lines += [f"profile      {note} ({label})" for label, note in profiles.items()]
    fits = report.get("image_fits", {})
    if len(set(fits.values())) > 1:  # checkpoints fine-tuned on frames made square in other ways
        lines.append("image fit    " + ", ".join(f"{fit} ({label})" for label, fit in fits.items()))
    shifts = report.get("action_shifts", {})
    if len(set(shifts.values())) > 1:  # each checkpoint's chunks align as it was trained: their counts differ
        lines.append("action shift " + ", ".join(f"{shift} ({label})" for label, shift in shifts.items())
                     + ": each checkpoint's chunks are aligned as it was trained")
    if report.get("unused_columns"):  # most often a wrong --profile: the metrics would leave those columns out
        lines.append(f"unused       {', '.join(report['unused_columns'])}: no profile entry or mapping reads these "
                     "columns (check --profile; `nitrogen-finetune data inspect` shows the mapping)")
    if report.get("skipped_bad_frames"):
        counts = {r["skipped_bad_frames"] for r in report["checkpoints"].values()}
        count = f"{counts.pop()} chunk(s)" if len(counts) == 1 else "chunks (per checkpoint in the table)"
        lines.append(f"skipped      {count} left out: their frame does not decode (--skip-bad-rows); first: "
                     f"{report['skipped_bad_frames'][0]}")
    return lines


def format_table(report: dict, output: Path) -> str:
    labels = list(report["checkpoints"])
    width = max(12, *(len(label) for label in labels))
    rows = [("chunks", lambda r: str(r["chunks"])),
            ("button F1 (macro)", lambda r: _fmt(r["buttons"]["macro_f1"])),
            ("stick MAE", lambda r: _fmt(r["sticks"]["mean_mae"])),
            ("boundary flips", lambda r: _fmt(r["consistency"]["predicted"]["boundary_button_flip_rate"])),
            ("  (recorded)", lambda r: _fmt(r["consistency"]["true"]["boundary_button_flip_rate"]))]
    if any(r.get("skipped_bad_frames") for r in report["checkpoints"].values()):
        rows.insert(1, ("  bad frames skipped", lambda r: str(r.get("skipped_bad_frames", 0))))
    lines = format_header(report)
    lines.append(f"{'':<20}" + "".join(f"{label:>{width + 2}}" for label in labels))
    for name, get in rows:
        lines.append(f"{name:<20}" + "".join(f"{get(report['checkpoints'][label]):>{width + 2}}" for label in labels))
    buttons = sorted({b for r in report["checkpoints"].values() for b in r["buttons"]["per_button"]})
    for b in buttons:
        lines.append(f"  F1 {b:<15}" + "".join(
            f"{_fmt(report['checkpoints'][label]['buttons']['per_button'].get(b, {}).get('f1')):>{width + 2}}"
            for label in labels))
    axes = [a for a in STICK_SLOTS  # the mean can hide one poor stick
            if any(a in r["sticks"]["per_axis"] for r in report["checkpoints"].values())]
    for a in axes:
        lines.append(f"  MAE {a:<14}" + "".join(
            f"{_fmt(report['checkpoints'][label]['sticks']['per_axis'].get(a, {}).get('mae')):>{width + 2}}"
            for label in labels))
    for label, check in report.get("button_order_check", {}).items():
        checked = check["best_slot_per_label"]
        wrong = {k: v["best_slot"] for k, v in checked.items() if not v["matches_assumed_order"]}
        unpressed = [name for name in check["labelled_buttons"] if name not in checked]
        verdict = ("no labelled button is pressed some of the time in this data: nothing to check the order by"
                   if not checked
                   else "agrees best elsewhere: " + ", ".join(f"{k}->{v}" for k, v in wrong.items()) if wrong
                   else "every pressed button agrees best with its own slot")
        lines.append(f"button order ({label}, {check['button_order']}): {verdict}"
                     + (f" ({len(unpressed)} labelled button(s) never pressed or always pressed, not checked)"
                        if checked and unpressed
                        else ""))
    lines.append(f"written      {output / 'report.json'}, f1.png, horizon.png, traces_*.png"
                 + (", button_order_*.png" if report.get("button_order_check") else ""))
    return "\n".join(lines)
