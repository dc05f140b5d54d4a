"""``nitrogen-finetune data inspect``: what a dataset holds, before any GPU hour is spent.

Reports episodes and frames, the detected profile and stick ranges, per-button press rates,
stick statistics, the windows that would be padded or dropped and why, bad rows, and draws a
contact sheet of sample frames with their decoded actions.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from ..actions.layout import N_STICK_VALUES
from .images import ImageDecodeError, bad_image_row, decode_image
from .pipeline import PreparedData

STICK_NAMES = ("LEFT_X", "LEFT_Y", "RIGHT_X", "RIGHT_Y")


def check_images(data: PreparedData) -> dict:
    """Decode every frame that belongs to an episode, counting their sizes; stop at the first
    bad one unless skipping."""
    index, bad, first_bad, sizes = data.index, 0, [], Counter()
    for s, source in enumerate(index.sources):
        column, (episode_of, _) = index.image_columns[s], index.row_lookup[s]
        for block in source.blocks():
            for first_row, values in source.iter_column(column, block):
                for offset, value in enumerate(values):
                    row = first_row + offset
                    if episode_of[row] < 0:
                        continue
                    try:
                        sizes[decode_image(value, source.base_dir).size] += 1
                    except ImageDecodeError as err:
                        if not data.config.skip_bad_rows:
                            raise bad_image_row(err, source.name, row, column) from None
                        bad += 1
                        if len(first_bad) < 5:
                            first_bad.append(f"{source.name} row {row}: {err}")
    return {"bad_images": bad, "first_bad_images": first_bad,
            "frame_sizes": [[width, height, count] for (width, height), count in sizes.most_common()]}


def summarize(data: PreparedData) -> dict:
    """Every number of the report, as plain values."""
    index, spec, layout = data.index, data.spec, data.spec.layout

    def slot_values(slot: int) -> np.ndarray:
        """A slot's good rows, from the episodes whose source can express it (the others hold 0)."""
        rows = [e.actions[~e.bad, slot] for e in index.episodes if e.slot_mask[slot]]
        return np.concatenate(rows) if rows else np.zeros(0, np.float32)

    slots = np.arange(layout.action_dim)
    buttons = [slot_values(slot) for slot in slots[layout.button_slice]]
    sticks = [slot_values(slot) * 2 - 1 for slot in slots[layout.stick_slice]]
    windows = {k: 0 for k in ("windows", "padded", "dropped_at_end", "dropped_bad_actions")}
    for episode in index.episodes:
        for k, v in spec.summary(episode).items():
            if k in windows:
                windows[k] += v
    return {
        "dataset": data.config.dataset_name,
        "files": len(index.sources),
        "episodes": len(index.episodes),
        "frames": index.num_frames,
        "shortest_episode": min((len(e) for e in index.episodes), default=0),
        "frame_size": data.frame_size(),
        "image_fit": data.config.image_fit,
        "frame_gaps": index.frame_gaps,
        "profiles": sorted({b.describe() for b in index.bindings}),
        "unused_columns": index.all_unused_columns,
        "differing_column": index.differing_column_note() or None,
        "action_shift": spec.action_shift,
        "horizon": spec.horizon,
        "bad_action_rows": index.bad_action_rows,
        "button_press_rate": {
            name: round(float(values.mean()), 4) if len(values) else None for name, values in zip(layout.buttons, buttons)
        },
        "sticks": {
            name: {
                "mean": round(float(values.mean()), 4),
                "std": round(float(values.std()), 4),
                "min": round(float(values.min()), 4),
                "max": round(float(values.max()), 4),
                "moved": round(float((values != 0).mean()), 4),
            } if len(values) else None
            for name, values in zip(STICK_NAMES[:N_STICK_VALUES], sticks)
        },
        **windows,
    }


def format_report(report: dict) -> str:
    lines = [
        f"dataset      {report['dataset']}",
        f"episodes     {report['episodes']} in {report['files']} file(s), {report['frames']} frames "
        f"(shortest episode {report['shortest_episode']})",
    ]
    if report.get("frame_sizes"):  # every frame decoded
        sizes = report["frame_sizes"]
        shown = ", ".join(f"{w}x{h} ({n})" for w, h, n in sizes[:3]) + (f" and {len(sizes) - 3} more sizes"
                                                                         if len(sizes) > 3 else "")
        not_square = sum(n for w, h, n in sizes if w != h)
        fitted = f"; image_fit {report['image_fit']} makes the {not_square} non-square frames square" \
            if not_square else ""
        lines.append(f"frames       {shown}{fitted}, then resized to the vision tower's input")
    elif report["frame_size"]:
        width, height = report["frame_size"]
        fitted = "" if width == height else f"; image_fit {report['image_fit']} makes them square"
        lines.append(f"frames       {width}x{height} (the first){fitted}, then resized to the vision tower's input")
    if report["frame_gaps"]:
        lines.append(f"gaps         frame numbers skip in {report['frame_gaps']} place(s): the recordings are "
                     "cut there into episodes that windows never cross")
    lines += [f"profile      {p.removeprefix('profile ')}" for p in report["profiles"]]
    if report["unused_columns"]:
        lines.append(f"unused       {', '.join(report['unused_columns'])} (no profile entry or mapping reads them)")
    if report["differing_column"]:
        lines.append(f"note         {report['differing_column']}")
    lines.append(
        f"windows      {report['windows']} (frame t -> action rows t+{report['action_shift']} .. "
        f"t+{report['action_shift'] + report['horizon'] - 1}); {report['padded']} run past their episode's end "
        "(padded, masked out of the loss)"
    )
    lines.append(
        f"dropped      {report['dropped_at_end']} frames with no action row after them in their episode, "
        f"{report['dropped_bad_actions']} whose action rows are all bad"
    )
    lines.append(f"bad rows     {report['bad_action_rows']} action row(s)" +
                 (f", {report['bad_images']} image(s)" if "bad_images" in report else "") +
                 (" (the windows above count them: training leaves out each window whose frame is bad, as it reads "
                  "it)" if report.get("bad_images") else ""))
    lines.append("buttons      press rate (- : the source cannot express it, masked out of the loss)")
    rates = [f"{k:<15}{'-' if v is None else f'{v:.3f}':>7}" for k, v in report["button_press_rate"].items()]
    lines += ["  " + "   ".join(rates[i:i + 3]) for i in range(0, len(rates), 3)]
    lines.append("sticks       mean / std / min / max / moved (in [-1, 1], y > 0 is down)")
    for name, st in report["sticks"].items():
        lines.append(f"  {name:<8}" + ("-" if st is None else
                     f"{st['mean']:+.3f} / {st['std']:.3f} / {st['min']:+.3f} / {st['max']:+.3f} / {st['moved']:.1%}"))
    return "\n".join(lines)


def contact_sheet(data: PreparedData, path: Path, count: int = 12, columns: int = 4, tile: int = 192) -> Optional[Path]:
    """Sample frames (as the model will see them) with the first action row they predict."""
    index, spec, layout = data.index, data.spec, data.spec.layout
    candidates = [(e, int(t)) for e, episode in enumerate(index.episodes) for t in spec.starts(episode)]
    if not candidates:
        return None
    picks = [candidates[i] for i in np.linspace(0, len(candidates) - 1, min(count, len(candidates))).astype(int)]
    rows = (len(picks) + columns - 1) // columns
    text_h = 58
    sheet = Image.new("RGB", (columns * tile, rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (e, t) in enumerate(picks):
        episode = index.episodes[e]
        source = index.sources[episode.source]
        value = source.read_value(index.image_columns[episode.source], int(episode.rows[t]))
        try:
            frame = Image.fromarray(data.transform(decode_image(value, source.base_dir))).resize((tile, tile))
        except ImageDecodeError:
            frame = Image.new("RGB", (tile, tile), "gray")
        x, y = (k % columns) * tile, (k // columns) * (tile + text_h)
        sheet.paste(frame.resize((tile - 4, tile - 4)), (x + 2, y + 2))
        actions, mask = spec.window(episode, t)
        row = actions[0] if mask[0].any() else spec.neutral
        pressed = [b for b, v in zip(layout.buttons, row[layout.button_slice]) if v > 0.5]
        sticks = row[layout.stick_slice] * 2 - 1
        label = [
            f"ep {e} frame {t} -> row {t + spec.action_shift}",
            " ".join(pressed)[:34] or "(no buttons)",
            f"L {sticks[0]:+.2f},{sticks[1]:+.2f} R {sticks[2]:+.2f},{sticks[3]:+.2f}",
        ]
        for i, text in enumerate(label):
            draw.text((x + 4, y + tile + 3 + 17 * i), text, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def inspect_dataset(data: PreparedData, output: Path, check_all_images: bool = True) -> tuple[dict, str]:
    """The report (also written to ``output/report.json``) and its text."""
    report = summarize(data)
    if check_all_images:
        report.update(check_images(data))
    sheet = contact_sheet(data, output / "contact_sheet.png")
    report["contact_sheet"] = str(sheet) if sheet else None
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=2))
    text = format_report(report)
    text += f"\nwritten      {output / 'report.json'}" + (f", {sheet}" if sheet else "")
    return report, text
