"""Episodes: the unit training windows never cross.

Each source file is an episode, or, when it has an episode column (``episode_id``,
``episode_index``, ``episode``, ``recording_id``, ...), each value of that column is one. Rows
are in file order, or, with a ``frame_index`` column (or ``frame_column``), in frame order (a
shuffled table, such as a ``datasets`` split, reads in time order); a step larger than the
recording's usual one by 3/4 (1, or 2 when every other frame was kept, or about 16.7 ms) cuts it
into pieces, so no window pairs a frame with actions from after a gap. Pieces of one recording
stay together on one side of the validation split. Building the index reads only the small
action columns and converts them through the UniversalVectorProcessor; frames stay on disk until
a DataLoader worker needs them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from ..actions.processor import ColumnBinding, UniversalVectorProcessor, as_number
from .errors import DataError
from .sources import ArrowFileSource, Source, TableSource, other_separator_hint

EPISODE_COLUMNS = ("episode_id", "episode_index", "episode", "recording_id", "recording", "session_id")
IMAGE_COLUMNS = ("image", "frame", "observation.image", "image_path", "frame_path", "file_name", "filename", "path")
FRAME_ORDER_COLUMN = "frame_index"
# Columns that describe rows rather than gamepad state: never offered to the action profiles.
# Columns that never hold actions (pandas writes its index as __index_level_0__).
NON_ACTION_COLUMNS = set(EPISODE_COLUMNS) | set(IMAGE_COLUMNS) | {"timestamp", FRAME_ORDER_COLUMN, "index", "game",
                                                                  "game_label", "__index_level_0__"}


@dataclass
class Episode:
    name: str
    recording: str  # the episode column's value (or the file) it was cut from: its pieces share it
    source: int  # index into DatasetIndex.sources
    rows: np.ndarray  # row numbers in the source, in time order
    actions: np.ndarray  # (n, action_dim) float32, model space
    bad: np.ndarray  # (n,) bool: action rows that could not be used
    slot_mask: np.ndarray  # (action_dim,) bool: slots this episode's source can express

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class DatasetIndex:
    sources: list[Source]
    episodes: list[Episode]
    image_columns: list[str]  # per source
    bindings: list[ColumnBinding]  # per source
    unused_columns: list[list[str]]  # per source: columns no profile or mapping entry reads
    bad_action_rows: int = 0
    frame_gaps: int = 0  # cuts where frame_index skips frames
    row_lookup: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self):
        """Per source: row -> episode number (-1: none) and row -> position in that episode."""
        self.row_lookup = [(np.full(n, -1, np.int64), np.zeros(n, np.int64))
                           for n in (source.num_rows() for source in self.sources)]
        for e, episode in enumerate(self.episodes):
            episode_of, position_of = self.row_lookup[episode.source]
            episode_of[episode.rows] = e
            position_of[episode.rows] = np.arange(len(episode))

    @property
    def num_frames(self) -> int:
        return sum(len(e) for e in self.episodes)

    def gaps_note(self) -> str:
        """"; frame numbers skip in N place(s), ..." when frame gaps cut recordings, else ""."""
        if not self.frame_gaps:
            return ""
        return f"; frame numbers skip in {self.frame_gaps} place(s), cutting the recordings into pieces"

    def profiles_note(self, slots_for: str = "loss on") -> str:
        """The profile of every source and how many slots it drives, in the words `train` prints:
        "nitrogen (loss on 21/25 slots)"; ``slots_for`` says what those slots count for."""
        return "; ".join(sorted({f"{b.profile.name} ({slots_for} {int(b.slot_mask.sum())}/{b.layout.action_dim} slots)"
                                 for b in self.bindings}))

    def differing_column_note(self) -> str:
        """"" when a column drives the same slot in every file; else the first that does not, in words
        `train` and `data inspect` print. Files detected as different consoles read one column
        differently, on purpose (`A` is EAST on a NES, SOUTH on an Xbox pad), or by mistake (one
        recorder's files, some of whose names fit another console: ``left_y`` is +y down under
        ``generic``, +y up under ``xbox``)."""
        first: dict[str, tuple[str, str, str]] = {}  # column -> (reading, file, profile) where first read
        for binding, source in zip(self.bindings, self.sources):
            for column, reading in binding.readings().items():
                earlier, file, profile = first.setdefault(column, (reading, source.name, binding.profile.name))
                if reading != earlier:
                    return (f"column {column!r} drives {reading} in {source.name} (profile {binding.profile.name}) "
                            f"and {earlier} in {file} (profile {profile}): if one recorder wrote every file, name "
                            "its profile with data.profile")
        return ""

    @property
    def all_unused_columns(self) -> list[str]:
        """The columns no profile entry or mapping reads, over all sources (most often: a wrong profile)."""
        return sorted({column for columns in self.unused_columns for column in columns})

    @property
    def recordings(self) -> list[str]:
        """Per episode, the recording it belongs to (what the validation split keeps together)."""
        return [e.recording for e in self.episodes]


def _find_column(columns: list[str], wanted: Optional[str], candidates: tuple[str, ...], what: str, source: str):
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"no {what} column '{wanted}' (columns: {', '.join(columns)})", file=source,
                            hint=f"set {what}_column to one of them")
        return wanted
    lowered = {c.lower(): c for c in columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _may_be_a_frame(value) -> bool:
    """Bytes, an Image struct or a path; not a number, a number written as text ("000012") or nothing."""
    if value is None or isinstance(value, (int, float, np.number)):
        return False
    return not (isinstance(value, str) and np.isfinite(as_number(value)))


def _find_image_column(source: Source, columns: list[str], wanted: Optional[str]) -> Optional[str]:
    """The image column: the one named, else the first by name whose first cell may be a frame
    (a ``frame`` counter next to ``image_path`` holds frame numbers, not frames)."""
    if wanted is not None or source.num_rows() == 0:
        return _find_column(columns, wanted, IMAGE_COLUMNS, "image", source.name)
    lowered = {c.lower(): c for c in columns}
    cameras = [c for c in columns if c.lower().startswith("observation.images.")]  # LeRobot's, one per camera
    named = [lowered[c] for c in IMAGE_COLUMNS if c in lowered] + (cameras if len(cameras) == 1 else [])
    return next((c for c in named if _may_be_a_frame(source.read_value(c, 0))), named[0] if named else None)


def _has_episode_id(values: np.ndarray, source: str, column: str, skip_bad_rows: bool) -> np.ndarray:
    """Which rows name their episode; a missing id stops with its row (with ``skip_bad_rows`` the
    row is left out), and so does a list where one id belongs."""
    values = np.asarray(values)
    if values.dtype == object:
        listed = next((row for row, v in enumerate(values) if isinstance(v, (list, tuple, dict, np.ndarray))), None)
        if listed is not None:
            raise DataError(f"the episode id is {np.asarray(values[listed]).tolist()!r}, not one value", file=source,
                            row=listed, column=column,
                            hint="set data.episode_column (--episode-column) to the column naming each row's episode")
        missing = np.array([v is None or (isinstance(v, float) and v != v) for v in values], bool)
    else:
        missing = np.isnat(values) if values.dtype.kind in "mM" else \
            np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)
    if missing.any() and not skip_bad_rows:
        raise DataError("the episode id is missing", file=source, row=int(np.argmax(missing)), column=column,
                        hint="fill it in, or set data.skip_bad_rows (--skip-bad-rows) to leave the row out")
    return ~missing


def _split_episodes(values: np.ndarray, rows: np.ndarray) -> list[tuple[object, np.ndarray]]:
    """``rows`` grouped by episode id, groups in order of first appearance, rows in file order."""
    ids = np.asarray(values)[rows]
    keys = ids.astype(str) if ids.dtype == object else ids
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    rows_by_key = np.split(rows[np.argsort(inverse, kind="stable")], np.cumsum(counts)[:-1])
    # Integer ids read as floats when the column has nulls: 1, not 1.0.
    return [(_whole(ids[first[k]]), rows_by_key[k]) for k in np.argsort(first)]


def _whole(value):
    return int(value) if isinstance(value, (float, np.floating)) and value == int(value) else value


def _frame_numbers(values: np.ndarray, source: str, column: str, skip_bad_rows: bool) -> np.ndarray:
    """The frame numbers as floats (timestamps in nanoseconds); with ``skip_bad_rows`` a missing
    one is NaN (its row is left out)."""
    values = np.asarray(values)
    if values.dtype.kind in "mM":  # timestamps and durations, whose null (NaT) reads as a huge negative number
        unit = "datetime64[ns]" if values.dtype.kind == "M" else "timedelta64[ns]"
        numbers = values.astype(unit).astype(np.int64).astype(np.float64)
        numbers[np.isnat(values)] = np.nan
    else:
        try:
            numbers = np.array(values, dtype=np.float64)  # a copy: Arrow's zero-copy arrays are read-only
        except (TypeError, ValueError):  # numbers as text, a null or a word: value by value
            numbers = np.array([as_number(v) for v in values], np.float64)
    wrong = ~np.isfinite(numbers)
    if wrong.any() and skip_bad_rows:
        numbers[wrong] = np.nan
    elif wrong.any():
        row = int(np.argmax(wrong))
        value = values[row].item() if isinstance(values[row], np.generic) else values[row]
        what = "is missing" if value is None or value != value else f"{value!r} is not a number"
        raise DataError(f"the frame number {what}", file=source, row=row, column=column,
                        hint="fix the row, set data.skip_bad_rows (--skip-bad-rows) to leave it out, or set "
                             "data.frame_column: none (--frame-column none) to read the rows in file order")
    return numbers


def _check_time_order(rows: np.ndarray, times: np.ndarray, source: str, column: str) -> None:
    """Rows in file order whose times (``_frame_numbers``; NaN: unreadable) never run back."""
    times = times[rows]
    readable = rows[~np.isnan(times)]
    back = np.flatnonzero(np.diff(times[~np.isnan(times)]) < 0)
    if back.size:
        raise DataError("the rows are not in time order: the timestamp goes back here, and rows are read in file "
                        "order where there is no frame_index", file=source, row=int(readable[back[0] + 1]),
                        column=column, hint=f"set data.frame_column: {column} (--frame-column {column}) to read them "
                        "in its order, data.episode_column if the file holds several recordings, or frame_column: "
                        "none to keep file order")


def _check_episodes_together(groups: list[tuple[object, np.ndarray]], placed: np.ndarray, source: str,
                             column: str, clock: Optional[str]) -> None:
    """Rows read in file order (no frame_index) make an episode only where its rows lie together
    (rows left out aside): a shuffled table would otherwise train on its frames in shuffled order."""
    place = np.cumsum(placed) - 1  # each row's place among the rows kept
    for key, rows in groups:
        apart = np.flatnonzero(np.diff(place[rows]) > 1)
        if apart.size:
            order = f"set data.frame_column: {clock} (--frame-column {clock}) to read each episode in its order" \
                if clock else "give each row its frame_index (a dataset shuffled before saving has lost the order)"
            raise DataError(f"the rows of episode {key} are not together: it goes on here after rows of another "
                            "episode, and rows are read in file order where there is no frame_index", file=source,
                            row=int(rows[apart[0] + 1]), column=column,
                            hint=f"{order}, or set data.frame_column: none (--frame-column none) if each episode's "
                                 "rows are in time order in the file")


def _frame_label(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:.12g}"


def _usual_step(steps: np.ndarray, timestamps: bool) -> float:
    """The step between two frames: the most common one for frame numbers (a split that dropped
    frames at random still steps by 1 most often), the median for timestamps (which jitter, in
    whole milliseconds too)."""
    if not timestamps and np.all(steps == np.round(steps)):
        values, counts = np.unique(steps, return_counts=True)
        return float(values[np.argmax(counts)])
    return float(np.median(steps))


def _in_frame_order(rows: np.ndarray, frames: np.ndarray, source: str, column: str,
                    timestamps: bool) -> list[np.ndarray]:
    """An episode's rows sorted by frame number, cut where a step exceeds the usual one by 3/4
    (a recording keeps every frame, or every n-th, or counts milliseconds with jitter)."""
    order = np.argsort(frames[rows], kind="stable")
    rows, numbers = rows[order], frames[rows][order]
    steps = np.diff(numbers)
    if np.any(steps == 0):
        repeat = int(np.argmax(steps == 0)) + 1
        raise DataError(f"frame {_frame_label(numbers[repeat])} appears twice in the episode", file=source,
                        row=int(rows[repeat]), column=column,
                        hint="drop the repeated rows, or name the column that tells episodes apart (episode_column)")
    if not len(steps):
        return [rows]
    return np.split(rows, np.flatnonzero(steps > 1.75 * _usual_step(steps, timestamps)) + 1)


class _BoundSource(NamedTuple):
    """A source's columns by role, its binding, and the trigger scales its values show, which
    decide how the dataset's files are converted."""

    image_column: str
    episode_column: Optional[str]
    frame_column: Optional[str]
    action_columns: list[str]
    binding: ColumnBinding
    trigger_scales: dict[str, tuple[str, Optional[float]]]  # ColumnBinding.trigger_scale_shown


def build_index(
    sources: list[Source],
    processor: UniversalVectorProcessor,
    image_column: Optional[str] = None,
    episode_column: Optional[str] = None,
    frame_column: Optional[str] = None,
    skip_bad_rows: bool = False,
) -> DatasetIndex:
    """Read every source's action columns and cut them into episodes."""
    files: list[_BoundSource] = []
    for source in sources:
        columns = source.column_names()
        image_col = _find_image_column(source, columns, image_column)
        if image_col is None:
            separator = other_separator_hint(columns[0]) if len(columns) == 1 else None
            raise DataError(f"no image column (columns: {', '.join(columns)})", file=source.name,
                            hint=separator or "name it with image_column; a file beside the recordings that holds "
                                              "none: move it out of the data folder")
        episode_col = _find_column(columns, episode_column, EPISODE_COLUMNS, "episode", source.name)
        if source.num_rows() == 0:
            raise DataError("the file has no rows", file=source.name, hint="remove it or record some gameplay")
        frame_col = None if frame_column is not None and frame_column.lower() == "none" else \
            _find_column(columns, frame_column, (FRAME_ORDER_COLUMN,), "frame", source.name)
        action_columns = [c for c in columns
                          if c.lower() not in NON_ACTION_COLUMNS and c not in (image_col, episode_col, frame_col)]
        binding = processor.bind(action_columns, source.name)
        triggers = source.read_columns(binding.analog_trigger_columns) if binding.analog_trigger_columns else {}
        files.append(_BoundSource(image_col, episode_col, frame_col, action_columns, binding,
                                  binding.trigger_scale_shown(triggers, source.name)))
    _agree_trigger_scales(files)
    _check_tables_list_each_frame_once(sources, [f.image_column for f in files])

    episodes, bad_total, gaps = [], 0, 0
    for s, (source, (_, episode_col, frame_col, _, binding, _)) in enumerate(zip(sources, files)):
        # Rows read in file order (no frame_index, and no frame_column chosen) must not run back in
        # time where the file says when each was recorded.
        clock = next((c for c in source.column_names() if c.lower() == "timestamp"), None) \
            if frame_col is None and frame_column is None else None
        data = source.read_columns(binding.columns + [c for c in (episode_col, frame_col, clock) if c])
        times = _frame_numbers(data[clock], source.name, clock, skip_bad_rows=True) if clock else None
        actions, bad = binding.convert(data, source.name, first_row=0, skip_bad_rows=skip_bad_rows)
        bad_total += int(bad.sum())
        # A row without its place in time or its episode is left out, and counted as bad.
        placed = np.ones(source.num_rows(), bool)
        frames = _frame_numbers(data[frame_col], source.name, frame_col, skip_bad_rows) if frame_col else None
        # A clock (a date-time column, or one named for time: timestamp, time_ms) rather than a frame counter.
        timestamps = frame_col is not None and (np.asarray(data[frame_col]).dtype.kind in "mM"
                                                or "time" in frame_col.lower())
        if frames is not None:
            placed &= ~np.isnan(frames)
        if episode_col:
            placed &= _has_episode_id(data[episode_col], source.name, episode_col, skip_bad_rows)
        bad_total += int((~placed & ~bad).sum())
        groups = _split_episodes(data[episode_col], np.flatnonzero(placed)) if episode_col else \
            [(None, np.flatnonzero(placed))]
        if episode_col and frame_col is None and frame_column is None:
            _check_episodes_together(groups, placed, source.name, episode_col, clock)
        for key, rows in groups:
            if not len(rows) and len(placed):  # every row left out
                continue
            if clock:
                _check_time_order(rows, times, source.name, clock)
            in_file = source.name if key is None else f"{source.name} [{episode_col}={key}]"
            # The Arrow files of one saved or hub dataset are shards, not recordings: an episode that
            # a shard boundary cuts stays one recording, kept on one side of the validation split.
            recording = f"{source.path.parent} [{episode_col}={key}]" if key is not None and \
                isinstance(source, ArrowFileSource) else in_file
            pieces = [rows] if frames is None else _in_frame_order(rows, frames, source.name, frame_col, timestamps)
            gaps += len(pieces) - 1
            for piece in pieces:
                name = in_file if len(pieces) == 1 else \
                    f"{in_file} frames {_frame_label(frames[piece[0]])}-{_frame_label(frames[piece[-1]])}"
                episodes.append(Episode(name, recording, s, piece, actions[piece], bad[piece], binding.slot_mask))
    if not episodes:  # only skip_bad_rows leaves rows out: those without a frame number or an episode id
        lacking = {what: fix for what, fix, has in (
            ("a frame number", "set frame_column: none to read the rows in file order", any(f.frame_column for f in files)),
            ("an episode id", "set episode_column to another column", any(f.episode_column for f in files))) if has}
        raise DataError(f"every row was left out as bad: none has {' and '.join(lacking)} ({bad_total} bad rows)",
                        file=sources[0].name if len(sources) == 1 else None,
                        hint=f"fill them in, or {', or '.join(lacking.values())}")
    bindings = [f.binding for f in files]
    unused = [[c for c in f.action_columns if c not in f.binding.columns and not processor.ignores(c)] for f in files]
    _check_mapping(processor, sources)
    _check_stick_ranges(bindings, sources)
    return DatasetIndex(sources, episodes, [f.image_column for f in files], bindings, unused, bad_total, gaps)


def _agree_trigger_scales(files: list[_BoundSource]) -> None:
    """An analog trigger that holds only 0 and 1 reads on the scale the same trigger shows in the
    dataset's other files, or else the file's other trigger, or else the dataset's triggers, where
    they agree: in a 0..255 recording a 1 is a trigger at rest, not a press."""
    scales: dict[str, set[float]] = {}  # trigger slot -> the scales files show for it
    for f in files:
        for slot, scale in f.trigger_scales.values():
            if scale is not None:
                scales.setdefault(slot, set()).add(scale)
    everywhere = set().union(*scales.values())
    for f in files:
        in_file = {scale for _, scale in f.trigger_scales.values() if scale is not None}
        f.binding.trigger_scales = {}
        for column, (slot, scale) in f.trigger_scales.items():
            shown = next((s for s in (scales.get(slot), in_file, everywhere) if s), set())
            if scale is None and len(shown) == 1:
                f.binding.trigger_scales[column] = next(iter(shown))


def _check_tables_list_each_frame_once(sources: list[Source], image_columns: list[str]) -> None:
    """Two actions tables (CSV/JSONL) that list the same frame file would train on it twice, and
    could put one copy in validation: a second table written over the same frames, say."""
    tables = [(s, c) for s, c in zip(sources, image_columns) if type(s) is TableSource]
    if len(tables) < 2:
        return
    listed: dict[str, str] = {}  # frame file -> the table that lists it first
    for source, column in tables:
        for row, value in enumerate(source.table.column(column).to_pylist()):
            if not isinstance(value, str):
                continue
            frame = os.path.abspath(os.path.join(source.base_dir or "", value))
            first = listed.setdefault(frame, source.name)
            if first != source.name:
                raise DataError(f"the frame {value} is listed by {first} too: the dataset would hold it twice",
                                file=source.name, row=row, column=column,
                                hint="keep one table per recording: move or delete the other")


def _check_mapping(processor: UniversalVectorProcessor, sources: list[Source]) -> None:
    columns = sorted({c for source in sources for c in source.column_names()})
    for setting, unmatched in (("mapping", processor.unmatched_mapping(columns)),
                               ("stick_range", processor.unmatched_stick_ranges(columns))):
        if unmatched:
            raise DataError(f"{setting} names the column {unmatched[0]!r}, which no file of the dataset has",
                            file=sources[0].name if len(sources) == 1 else None,
                            hint=f"columns: {', '.join(columns)}")


def _check_stick_ranges(bindings: list[ColumnBinding], sources: list[Source]) -> None:
    """One column, one stick range: "auto" picks a range per file from its values, and a file in
    which a 0..1 stick seldom rests would otherwise be read as a -1..1 stick."""
    seen: dict[str, tuple[str, str]] = {}
    for binding, source in zip(bindings, sources):  # first the ranges read from moving sticks
        for column, name in binding.stick_ranges.items():
            if column not in binding.centred_columns:
                seen.setdefault(column, (name, source.name))
    for binding, source in zip(bindings, sources):
        for column, name in binding.stick_ranges.items():
            first = seen.setdefault(column, (name, source.name))
            if not binding.agree(column, first[0]):
                raise DataError(f"stick column {column!r} reads as {name} here but as {first[0]} in {first[1]}",
                                file=source.name,
                                hint=f"set stick_range to the range the recorder wrote, for this column alone "
                                     f"{{{column}: {first[0]}}}")


HELD_OUT_FILE = "held_out.json"  # a run folder's record of the recordings its validation held out


def recording_key(recording: str, dataset_name: str) -> str:
    """A recording's name as any reader of the same data spells it, wherever the data now lies:
    its path within the dataset's folder (a file of its own: its file name; the hub's cache: the
    file name), with its episode value (``sub/run.parquet [session=3]``)."""
    name, value = _episode_value(recording)
    return recording_key_within(recording, dataset_name) or Path(name).name + value


def recording_key_within(recording: str, dataset_name: str) -> Optional[str]:
    """``recording_key`` of a recording that lies in the dataset's folder (or is its file), else
    None: a file elsewhere with the same name is another recording. Links count under either
    spelling of the path."""
    name, value = _episode_value(recording)
    root = Path(dataset_name).expanduser()
    for file, place in ((os.path.abspath(name), os.path.abspath(root)), (os.path.realpath(name), os.path.realpath(root))):
        if root.is_dir():
            relative = os.path.relpath(file, place)
            if relative != ".." and not relative.startswith(".." + os.sep):
                return Path(relative).as_posix() + value
        elif file == place:
            return Path(name).name + value
    return None


def recorded_in_place(key: str, dataset_name: str) -> bool:
    """Whether the file a ``recording_key`` names is still where the dataset had it."""
    name, _ = _episode_value(key)
    root = Path(dataset_name).expanduser()
    return (root / name).exists() if root.is_dir() else root.is_file() and root.name == name


def recording_key_endings(recording: str) -> list[str]:
    """The names a recording may have had in a run that read it from a folder elsewhere: the
    endings of its path, longest first (``a/sub/run.parquet``, ``sub/run.parquet``, ``run.parquet``)."""
    name, value = _episode_value(recording)
    parts = Path(os.path.abspath(name)).parts[1:]
    return ["/".join(parts[i:]) + value for i in range(len(parts))]


def _episode_value(recording: str) -> tuple[str, str]:
    """A recording's file and its episode value (`` [session=3]``; "" for a file of its own)."""
    name, bracket, value = recording.rpartition(" [")
    if not (bracket and value.endswith("]") and "=" in value):  # no episode value: a folder may hold " ["
        return recording, ""
    return name, bracket + value


def read_held_out(run_dir: Path) -> Optional[list[str]]:
    """The recordings a run folder records it held out (``recording_key`` names), or None for a
    run from before the record, or a damaged one (its split is worked out again)."""
    try:
        recordings = json.loads((Path(run_dir) / HELD_OUT_FILE).read_text())["recordings"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return recordings if isinstance(recordings, list) and all(isinstance(r, str) for r in recordings) else None


def split_episodes(recordings: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out whole recordings (never windows, never part of a recording) for validation:
    episode numbers for training and for validation, given each episode's recording."""
    names = list(dict.fromkeys(recordings))
    if len(names) < 2 or val_fraction <= 0:
        return list(range(len(recordings))), []
    n_val = min(len(names) - 1, max(1, round(len(names) * val_fraction)))  # one recording at least trains
    held_out = {names[i] for i in np.random.default_rng([seed, 7]).permutation(len(names))[:n_val]}
    return ([e for e, name in enumerate(recordings) if name not in held_out],
            [e for e, name in enumerate(recordings) if name in held_out])
