"""``nitrogen-finetune``: a thin command line over the library.

A user's mistake (a missing file, a checkpoint that is not NitroGen, an unknown preset) ends with
one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .actions.layout import LayoutError
from .model.checkpoint import CheckpointError, save_checkpoint
from .model.presets import PRESETS, build_preset
from .policy import __version__, load_policy

USER_ERRORS = (CheckpointError, LayoutError, FileNotFoundError, IsADirectoryError, PermissionError)


def cmd_info(args: argparse.Namespace) -> int:
    policy = load_policy(args.checkpoint, trust_pickle=args.trust_pickle, verbose=False)
    print(policy.summary())
    print(f"  slots           {', '.join(policy.layout.slot_names)}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    model, raw = build_preset(args.preset)
    path = save_checkpoint(args.output, model, raw)
    print(f"wrote a randomly initialised '{args.preset}' NitroGen ({sum(p.numel() for p in model.parameters()):,} parameters) to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nitrogen-finetune", description="Fine-tune NVIDIA's NitroGen gaming model.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="summarise a checkpoint: parameters, action layout, horizon, steps")
    info.add_argument("checkpoint", help="an official-format checkpoint such as ng.pt")
    info.add_argument("--trust-pickle", action="store_true", help="allow arbitrary unpickling (only for files you trust)")
    info.set_defaults(func=cmd_info)

    init = sub.add_parser("init", help="write a randomly initialised NitroGen checkpoint of a preset")
    init.add_argument("output", help="where to write the .pt file")
    init.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    init.set_defaults(func=cmd_init)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"nitrogen-finetune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
