"""``nitrogen-finetune``: a thin command line over the library.

A user's mistake (a missing file, a checkpoint that is not NitroGen, an unknown preset) ends with
one line on stderr and exit status 2, never a traceback; running out of GPU memory ends with one
line saying what to lower, and status 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from pydantic import ValidationError

from .actions.layout import BUTTON_ORDERS, LayoutError
from .data.errors import DataError, invalid_setting, user_message
from .files import check_output_folder, output_file, refuse_existing, replaced_when_done
from .model.checkpoint import CheckpointError, parse_config, save_checkpoint
from .model.presets import PRESETS, build_preset
from .policy import __version__, checkpoint_layout, load_policy
from .training.stop_signals import AnotherProcessStopped

USER_ERRORS = (CheckpointError, LayoutError, DataError)

# The system refused a path the user chose: what to do about it.
PATH_ERROR_HINTS = {
    errno.ENOENT: None,
    errno.EEXIST: "a file of that name is in the way: choose another path",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENOTDIR: "part of the path is a file, not a folder",
    errno.EACCES: "check its permissions, or choose another path",
    errno.EPERM: "check its permissions, or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def path_error(err: OSError) -> str:
    """"ro/model.pt: Read-only file system (...)" rather than "[Errno 30] Read-only file system: 'ro/model.pt'"."""
    hint = PATH_ERROR_HINTS[err.errno]
    text = f"{err.filename}: {err.strerror}" if err.filename else (err.strerror or user_message(err))
    return f"{text} ({hint})" if hint else text


def _count(minimum: int):
    """An argparse type: a whole number >= minimum that fits a 64-bit integer (seeds do)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        if value >= 2**63:
            raise argparse.ArgumentTypeError(f"{value} is too large: at most {2**63 - 1}")
        return value
    return parse


def _fraction(text: str) -> float:
    """An argparse type: a share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def _device(text: str) -> str:
    """An argparse type: a torch device this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: this tool runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("this machine has no CUDA GPU (use cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return text


def _buttons(args: argparse.Namespace) -> Optional[list[str]]:
    if getattr(args, "buttons", None) is None:
        return None
    if not args.buttons.strip():
        raise LayoutError("--buttons is empty: give the button names in slot order, e.g. --buttons A,B,START")
    return [name.strip() for name in args.buttons.split(",")]


def _load(args: argparse.Namespace, path: str):
    """The policy of a checkpoint named on the command line, with the command's options."""
    return load_policy(path, device=getattr(args, "device", "cpu"), button_order=getattr(args, "button_order", None),
                       buttons=_buttons(args), trust_pickle=args.trust_pickle, verbose=False,
                       image_fit=getattr(args, "image_fit", None))


def cmd_info(args: argparse.Namespace) -> int:
    if args.checkpoint in PRESETS and not Path(args.checkpoint).exists():
        raise DataError(f"'{args.checkpoint}' is a preset name, not a checkpoint file",
                        hint=f"nitrogen-finetune init {args.checkpoint}.pt --preset {args.checkpoint} writes one")
    policy = _load(args, args.checkpoint)
    print(policy.summary())
    print(f"  slots           {', '.join(policy.layout.slot_names)}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    refuse_existing(output_file(args.output), args.force)
    torch.manual_seed(args.seed)
    model, raw = build_preset(args.preset)
    layout = checkpoint_layout(parse_config(raw), {})
    path = save_checkpoint(args.output, model, raw, {"version": __version__, "action_layout": layout.to_dict()})
    print(f"wrote a randomly initialised '{args.preset}' NitroGen ({sum(p.numel() for p in model.parameters()):,} parameters) to {path}")
    return 0


def _mapping(items: list[str]) -> dict[str, Optional[str]]:
    out = {}
    for item in items:
        column, sep, slot = item.partition("=")
        if not sep or not column:
            raise DataError(f"--map expects COLUMN=SLOT (or COLUMN= to ignore a column), got '{item}'")
        out[column] = slot or None
    return out


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from .data.inspect import inspect_dataset  # noqa: PLC0415 - keep `info` fast
    from .data.pipeline import ModelInputs, prepare_data

    model = ModelInputs.of_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    args.image_fit = args.image_fit or model.image_fit  # a fine-tune's frames, fitted as it trained on them
    data = prepare_data(_data_config(args, args.dataset), model)
    _, text = inspect_dataset(data, Path(args.output), check_all_images=not args.no_image_check)
    print(text)
    return 0


def _trained_to_the_end(run_dir: Path, max_steps: int) -> bool:
    """A finished run with its model.pt: one whose end (a demo's evaluation, say) may still be to do."""
    summary = run_dir / "summary.json"
    if not summary.is_file() or not (run_dir / "model.pt").is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("step", 0) >= max_steps
    except (ValueError, AttributeError):
        return False


def _evaluate_demo(run_dir: Path, config) -> int:
    """The demo's ending: its model against the untrained one and a random player."""
    from .games.demo import evaluate_demo  # noqa: PLC0415

    _, text = evaluate_demo(run_dir, Path(config.data.dataset_name), config.seed, config.val_fraction)
    print(text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .data.config import as_written  # noqa: PLC0415
    from .training.config import (dump_config, parse_override, resolve_config, run_config_file,  # noqa: PLC0415
                                  with_absolute_paths)
    from .training.stop_signals import StopRequest, TrainingStopped, interrupted
    from .training.trainer import train

    overrides = {}
    for key, value in map(parse_override, args.set):  # in the order last given: after a section it replaces
        overrides.pop(key, None)
        overrides[key] = value
    for flag, key in (("base", "base"), ("data", "data.dataset_name"), ("output", "output"),
                      ("max_steps", "max_steps"), ("method", "method"), ("skip_bad_rows", "data.skip_bad_rows")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    config_file = args.config
    if args.resume:
        output = as_written(overrides.get("output"))  # --output, or --set output=...
        if output is not None and Path(str(output)).resolve() != Path(args.resume).resolve():
            raise DataError(f"--resume continues the run in {args.resume}, not in --output {output}",
                            hint="leave out --output (or copy the run folder first)")
        config_file = config_file or str(run_config_file(args.resume))
        overrides["output"] = args.resume
    demo = config_file is None and not {"data", "data.dataset_name"} & overrides.keys()
    if demo:  # no config and no data: the built-in games, end to end
        from .games.demo import DEMO_SETTINGS, next_demo_folder  # noqa: PLC0415
        from .games.recorder import demo_dataset, demo_folder

        if str(overrides.get("base", "tiny")) not in PRESETS:  # most likely a forgotten --data
            raise DataError(f"no --data: without data, train runs the built-in demo, which fine-tunes a preset, "
                            f"not --base {overrides['base']}",
                            hint=f"give --data with the recordings to fine-tune on; the demo's are cached in "
                                 f"{demo_folder()} once it has run")
        if not args.print_config:
            print("no --data given: recording the built-in games (cached) and fine-tuning the tiny preset on them")
            demo_dataset()
        overrides = {**DEMO_SETTINGS, "output": next_demo_folder(), "data.dataset_name": str(demo_folder()),
                     **overrides}
    config = resolve_config(config_file, overrides)
    trained_on = Path(config.data.dataset_name)
    if args.resume and "data.dataset_name" not in overrides and trained_on.is_absolute() and not trained_on.exists():
        raise DataError("the data the run trained on is no longer there", file=str(trained_on),
                        hint="if it moved, give its new path with --data")
    if args.resume and not demo:  # a demo run resumed: its games' evaluation still ends it
        from .games.recorder import demo_folder  # noqa: PLC0415

        demo = Path(config.data.dataset_name).resolve() == demo_folder().resolve()
    if args.print_config:
        print(dump_config(with_absolute_paths(config)), end="")
        return 0
    main_process = int(os.environ.get("RANK", "0")) == 0
    if demo and args.resume and _trained_to_the_end(Path(args.resume), config.max_steps):
        print(f"{args.resume} has trained its {config.max_steps} steps: evaluating its model.pt")
        return _evaluate_demo(Path(args.resume), config)
    try:
        with StopRequest(announce=main_process) as stop:
            result = train(config, resume=bool(args.resume), stop=stop)
    except TrainingStopped as stopped:
        if main_process:
            print(f"nitrogen-finetune: {stopped}", file=sys.stderr)
        return 128 + stopped.signal_number
    except KeyboardInterrupt:  # a second Ctrl-C
        if main_process:
            processes = int(os.environ.get("WORLD_SIZE", "1"))
            print(f"nitrogen-finetune: {interrupted(Path(config.output), processes)}", file=sys.stderr)
        return 128 + signal.SIGINT
    if not main_process:  # one report per run, not per process
        return 0
    if demo and result.exported:
        return _evaluate_demo(result.run_dir, config)
    print(f"run folder  {result.run_dir}  (config.yaml, metrics.jsonl, tensorboard/, checkpoints/)")
    if result.exported:
        print(f"exported    {result.exported}  (official format: load_policy or the official player)")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from .games import GAMES  # noqa: PLC0415
    from .games.rollout import policy_player, rollout

    if args.game not in GAMES:
        raise DataError(f"unknown game '{args.game}'", hint=f"games: {', '.join(GAMES)}")
    policy = _load(args, args.checkpoint)
    missing = sorted(GAMES[args.game].buttons_read - set(policy.layout.buttons))
    if missing:  # the game would never see a press, and would still report a score
        raise DataError(f"{args.game} reads the {missing[0]} button, which the checkpoint's layout "
                        f"({policy.layout.button_order}) does not name", file=args.checkpoint,
                        hint="rollout plays the built-in games with the universal button names")
    if args.replan_every is not None and not 1 <= args.replan_every <= policy.horizon:
        raise DataError(f"--replan-every {args.replan_every} is outside 1..{policy.horizon}",
                        file=args.checkpoint, hint=f"the checkpoint predicts {policy.horizon} actions per chunk")
    output = Path(args.output)
    gif = output / f"rollout_{args.game}.gif"
    if output.suffix.lower() == ".gif" and not output.is_dir():
        raise DataError(f"--output is the folder rollout writes {gif.name} into, not the GIF", file=args.output,
                        hint="give a folder's name; --output . writes into this folder")
    check_output_folder(output, "rollout")  # before the games are played
    if gif.is_dir():
        raise DataError("a folder of the GIF's name is in the way", file=str(gif),
                        hint="move it, or give another --output")
    result = rollout(args.game, lambda seed: policy_player(policy, seed, args.replan_every),
                     range(args.seed, args.seed + args.episodes), gif=gif)
    print(f"{args.game}: success {result.success_rate:.0%} over {result.episodes} episode(s), "
          f"mean return {result.mean_return:.1f}; first episode: {gif}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .training.export import export_run  # noqa: PLC0415

    if args.push_to_hub:  # before the export: a repo id the hub cannot take is a typo to fix first
        from huggingface_hub.utils import HFValidationError, validate_repo_id  # noqa: PLC0415

        try:
            validate_repo_id(args.push_to_hub)
        except HFValidationError:
            raise DataError(f"--push-to-hub {args.push_to_hub!r} is not a hub repo id",
                            hint="give USER/NAME, e.g. my-name/nitrogen-my-game") from None
    best = args.checkpoint == "best"
    path = export_run(args.run_dir, args.out, checkpoint=None if best else args.checkpoint, best=best,
                      use_ema={"ema": True, "final": False}.get(args.weights), base_file=args.base,
                      force=args.force)
    policy = load_policy(path, verbose=False)
    print(f"wrote {path}\n{policy.summary()}")
    if args.push_to_hub:
        from huggingface_hub import HfApi  # noqa: PLC0415

        api = HfApi()
        try:
            api.create_repo(args.push_to_hub, exist_ok=True)
            api.upload_file(path_or_fileobj=str(path), path_in_repo=Path(path).name, repo_id=args.push_to_hub)
        except Exception as err:  # the network, the token or the hub: the export itself is done
            print(f"nitrogen-finetune: error: pushing {path} to the hub as {args.push_to_hub} failed "
                  f"({type(err).__name__}: {user_message(err)}); the exported file is kept: check the network "
                  "and your token (hf auth login), then export again with --force --push-to-hub", file=sys.stderr)
            return 1
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")
    return 0


def _data_config(args: argparse.Namespace, dataset: str):
    from .data.config import DataConfig  # noqa: PLC0415

    try:
        return DataConfig(
            dataset_name=dataset, split=args.split, profile=args.profile, mapping=_mapping(args.map),
            stick_range=args.stick_range, analog_deadzone=args.analog_deadzone,
            trigger_threshold=args.trigger_threshold, episode_column=args.episode_column,
            image_column=args.image_column, frame_column=args.frame_column, image_fit=args.image_fit or "pad",
            skip_bad_rows=args.skip_bad_rows,
        )
    except ValidationError as err:
        raise invalid_setting(err, model=DataConfig) from None


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.report import run_eval  # noqa: PLC0415

    if args.val_fraction is not None and args.episodes != "val":
        raise DataError("--val-fraction chooses the held-out episodes, and eval scores all of them",
                        hint="add --episodes val, or leave --val-fraction out")
    _, text = run_eval(
        args.checkpoint, _data_config(args, args.data), Path(args.output), episodes=args.episodes,
        val_fraction=args.val_fraction, seed=args.seed, button_order=args.button_order,
        check_button_order=args.check_button_order, limit=args.max_chunks, device=args.device,
        trust_pickle=args.trust_pickle, buttons=_buttons(args), image_fit=args.image_fit,
    )
    print(text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .evaluation.predict import check_inputs, check_outputs, predict_files  # noqa: PLC0415

    output = None if args.output == "-" else output_file(args.output, example="actions.jsonl")
    overlay = None if args.overlay is None else output_file(args.overlay, example="overlay.mp4")
    check_inputs(args.inputs, overlay)
    check_outputs(args.inputs, args.checkpoint, output, overlay, args.force)
    policy = _load(args, args.checkpoint)
    if output is None:
        predict_files(policy, args.inputs, sys.stdout, args.seed, overlay)
        return 0
    with replaced_when_done(output) as partial, open(partial, "w") as sink:
        lines = predict_files(policy, args.inputs, sink, args.seed, overlay)
    print(f"wrote {lines} line(s) to {output}" + (f" and {overlay}" if overlay else ""))
    return 0


def _stick_range(text: str):
    """A range for every stick column, or per column as a YAML mapping: {LStick X: uint8}."""
    if not text.strip().startswith("{"):
        return text
    import yaml  # noqa: PLC0415

    from .training.config import ConfigYamlLoader, yaml_problem  # noqa: PLC0415

    try:
        ranges = yaml.load(text, Loader=ConfigYamlLoader)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid YAML mapping ({yaml_problem(err)})") from None
    if not isinstance(ranges, dict) or not all(isinstance(v, str) for v in ranges.values()):
        raise argparse.ArgumentTypeError(f"expected a range or a mapping {{COLUMN: RANGE, ...}}, got {text!r}")
    return ranges  # its keys are column names as written; YAML's words (on, null) are refused as the config's


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="auto", help="console profile (default: detect from the columns)")
    parser.add_argument("--map", action="append", default=[], metavar="COLUMN=SLOT",
                        help="map a column to an action slot (repeatable; COLUMN= ignores it)")
    parser.add_argument("--stick-range", type=_stick_range, default="auto",
                        help="auto, float_pm1, float_01, int8, uint8, int16; or per column: '{LStick X: uint8}'")
    parser.add_argument("--analog-deadzone", type=float, default=0.05)
    parser.add_argument("--trigger-threshold", type=float, default=0.5)
    parser.add_argument("--episode-column")
    parser.add_argument("--image-column")
    parser.add_argument("--frame-column", help="column that orders each episode's rows (default: frame_index "
                        "when there is one; none: file order)")
    parser.add_argument("--image-fit", choices=("pad", "crop", "stretch"),
                        help="how frames that are not square are made square (default: pad; eval: as each "
                        "checkpoint is played, the fit it was fine-tuned with, stretch for the released model)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--skip-bad-rows", action="store_true", help="count bad rows instead of stopping at the first")


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes in one line, like every other user error (the usage is in --help)."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments") and "train" in sys.argv[1:2]:
            self.exit(2, f"{self.prog}: error: {message}; a config key is given as --set KEY=VALUE "
                         f"(see {self.prog} train --help)\n")
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--trust-pickle", action="store_true", help="allow arbitrary unpickling (only for files you trust)")
    parser.add_argument("--buttons", help=BUTTONS_HELP)


BUTTONS_HELP = "the checkpoint's button names in slot order, comma-separated (for a layout of its own)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nitrogen-finetune", description="Fine-tune NVIDIA's NitroGen gaming model.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="summarise a checkpoint: parameters, action layout, horizon, and a "
                          "fine-tuned one's step")
    info.add_argument("checkpoint", help="an official-format checkpoint such as ng.pt")
    info.add_argument("--trust-pickle", action="store_true", help="allow arbitrary unpickling (only for files you trust)")
    info.add_argument("--buttons", help=BUTTONS_HELP)
    info.set_defaults(func=cmd_info)

    init = sub.add_parser("init", help="write a randomly initialised NitroGen checkpoint of a preset")
    init.add_argument("output", help="where to write the .pt file")
    init.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model size (default: tiny)")
    init.add_argument("--seed", type=_count(0), default=0, help="seed of the random weights")
    init.add_argument("--force", action="store_true", help="replace the file if it exists")
    init.set_defaults(func=cmd_init)

    train = sub.add_parser("train", help="fine-tune (LoRA or full) and export an official-format checkpoint; "
                           "with no config and no --data: the built-in demo games")
    train.add_argument("config", nargs="?", help="a YAML config (defaults < file < flags)")
    train.add_argument("--base", help="official-format checkpoint, or a preset (tiny, released) with random weights")
    train.add_argument("--data", help="dataset path or hub id (data.dataset_name)")
    train.add_argument("--output", help="run folder")
    train.add_argument("--max-steps", type=int, help="optimizer steps to train (max_steps)")
    train.add_argument("--method", choices=("lora", "full"))
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    train.add_argument("--skip-bad-rows", action="store_true", default=None,
                       help="count bad rows instead of stopping at the first (data.skip_bad_rows)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config key, dotted (repeatable): --set lora.rank=8 --set data.augment=true")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (as the run folder's config.yaml) and exit")
    train.set_defaults(func=cmd_train)

    export = sub.add_parser("export", help="merge a run into an official-format checkpoint")
    export.add_argument("run_dir", help="the run folder (train's --output)")
    export.add_argument("out", help="the .pt file to write")
    export.add_argument("--checkpoint", help="one of the run's checkpoints (step_000120, or its folder), or best: "
                        "the one with the lowest validation loss (keep_best); default: the latest")
    export.add_argument("--base", help="the run's base checkpoint, when it has moved since training "
                        "(its weights must be the ones the run started from)")
    export.add_argument("--weights", choices=("auto", "ema", "final"), default="auto",
                        help="EMA weights when the run kept them (auto), or as named")
    export.add_argument("--force", action="store_true",
                        help="replace OUT if it exists (never the run's base or a file the run needs)")
    export.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the file to this hub model repo")
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser("eval", help="open-loop metrics of checkpoints on recorded episodes")
    evaluate.add_argument("--checkpoint", action="append", required=True, help="repeat to compare checkpoints")
    evaluate.add_argument("--data", required=True, help="dataset path or hub id")
    evaluate.add_argument("--output", default="eval", help="folder for report.json and the figures (default: eval)")
    evaluate.add_argument("--episodes", choices=("all", "val"), default="all",
                          help="all episodes, or the recordings a training run held out: those its held_out.json "
                          "lists when its run folder holds the checkpoint (as its exported model.pt), or those an "
                          "exported copy records; --val-fraction chooses another split")
    evaluate.add_argument("--val-fraction", type=_fraction,
                          help="hold out this share of the recordings instead of the run's (with --episodes val; "
                          "without a run, 0.1)")
    evaluate.add_argument("--seed", type=_count(0), help="start-noise seed, and the split's with --val-fraction or a "
                          "run from before held_out.json (default: the run's with --episodes val, else 0)")
    evaluate.add_argument("--max-chunks", type=_count(1), help="evaluate at most this many chunks")
    evaluate.add_argument("--check-button-order", action="store_true",
                          help="correlate every predicted slot with every labelled button")
    evaluate.add_argument("--button-order", help="use another named button order")
    _add_checkpoint_options(evaluate)
    _add_data_options(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    predict = sub.add_parser("predict", help="actions for frames or videos as JSONL")
    predict.add_argument("inputs", nargs="+", help="image files (.png, .jpg) or videos (.mp4, ..., animated .gif)")
    predict.add_argument("--checkpoint", required=True, help="an official-format checkpoint such as a run's model.pt")
    predict.add_argument("--output", default="-", help="JSONL file (default: standard output)")
    predict.add_argument("--overlay", help="for a video: write an MP4 with the actions drawn on it")
    predict.add_argument("--force", action="store_true",
                         help="replace --output and --overlay if they exist (never an input or the checkpoint)")
    predict.add_argument("--seed", type=_count(0), default=0,
                         help="noise seed; the noise is keyed by the seed and each file's contents, so reruns match")
    predict.add_argument("--button-order", help=f"name the button slots by this built-in order "
                         f"({', '.join(BUTTON_ORDERS)}) instead of the one the checkpoint records "
                         "(--buttons: names of your own)")
    predict.add_argument("--image-fit", choices=("pad", "crop", "stretch"),
                         help="how frames that are not square are made square (default: as the checkpoint was "
                         "fine-tuned; stretch, as the official player, for the released model)")
    _add_checkpoint_options(predict)
    predict.set_defaults(func=cmd_predict)

    play = sub.add_parser("rollout", help="play a built-in game with a checkpoint (closed loop)")
    play.add_argument("--checkpoint", required=True, help="an official-format checkpoint, such as a run's model.pt")
    play.add_argument("--game", required=True, help="runner or collector")
    play.add_argument("--episodes", type=_count(1), default=10, help="games to play (default: 10)")
    play.add_argument("--seed", type=_count(0), default=10_000, help="first game seed (default 10000; recordings use 0, 1, ...)")
    play.add_argument("--output", default=".", help="folder for the GIF of the first episode (default: here; "
                      "replaces the game's GIF there)")
    play.add_argument("--replan-every", type=int, help="query the policy every N steps (default: once per "
                      "chunk, as the official player does; the demo uses 6)")
    _add_checkpoint_options(play)
    play.set_defaults(func=cmd_rollout)

    data = sub.add_parser("data", help="look at a dataset before training on it")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="episodes, profile, press rates, stick stats, windows, contact sheet")
    inspect.add_argument("dataset", help="parquet file or folder, save_to_disk folder, frames folder, or hub id")
    inspect.add_argument("--checkpoint", help="take layout, horizon and frame size from this checkpoint or preset "
                         "(default: the released NitroGen's)")
    inspect.add_argument("--output", default="data_inspect", help="folder for report.json and contact_sheet.png "
                         "(default: data_inspect)")
    _add_data_options(inspect)
    inspect.add_argument("--no-image-check", action="store_true", help="do not decode every frame")
    inspect.add_argument("--trust-pickle", action="store_true",
                         help="allow arbitrary unpickling of --checkpoint (only for files you trust)")
    inspect.set_defaults(func=cmd_data_inspect)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"nitrogen-finetune: error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nitrogen-finetune: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:  # `nitrogen-finetune info x.pt | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except torch.OutOfMemoryError:
        print("nitrogen-finetune: error: out of GPU memory (lower micro_batch_size, and gradient accumulation "
              "keeps batch_size; or set activation_checkpointing: true, or fsdp: true for full fine-tuning on "
              "several GPUs)", file=sys.stderr)
        return 1
    except AnotherProcessStopped as err:
        print(f"nitrogen-finetune: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in PATH_ERROR_HINTS:
            raise
        print(f"nitrogen-finetune: error: {path_error(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
