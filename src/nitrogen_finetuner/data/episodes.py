"""Episodes: the unit training windows never cross.

Each source file is an episode, or, when it has an episode column (``episode_id``,
``episode_index``, ``episode``, ``recording_id``, ...), each value of that column is one. Building
the index reads only the small action columns and converts them through the
UniversalVectorProcessor; frames stay on disk until a DataLoader worker needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..actions.processor import ColumnBinding, UniversalVectorProcessor
from .errors import DataError
from .sources import Source

EPISODE_COLUMNS = ("episode_id", "episode_index", "episode", "recording_id", "recording", "session_id")
IMAGE_COLUMNS = ("image", "frame", "observation.image", "image_path", "frame_path", "file_name", "filename", "path")
# Columns that describe rows rather than gamepad state: never offered to the action profiles.
NON_ACTION_COLUMNS = set(EPISODE_COLUMNS) | set(IMAGE_COLUMNS) | {"timestamp", "frame_index", "index", "game", "game_label"}


@dataclass
class Episode:
    name: str
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


def _find_column(columns: list[str], wanted: Optional[str], candidates: tuple[str, ...], what: str, source: str):
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"no {what} column '{wanted}' (columns: {', '.join(columns)})", file=source,
                            hint=f"set {what}_column to one of them")
        return wanted
    lowered = {c.lower(): c for c in columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _split_episodes(values: np.ndarray) -> list[tuple[object, np.ndarray]]:
    """Rows grouped by episode value, groups in order of first appearance, rows in file order."""
    keys = values.astype(str) if values.dtype == object else values
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    rows_by_key = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    return [(values[first[k]], rows_by_key[k]) for k in np.argsort(first)]

def build_index(
    sources: list[Source],
    processor: UniversalVectorProcessor,
    image_column: Optional[str] = None,
    episode_column: Optional[str] = None,
    skip_bad_rows: bool = False,
) -> DatasetIndex:
    """Read every source's action columns and cut them into episodes."""
    episodes, image_columns, bindings, unused, bad_total = [], [], [], [], 0
    for s, source in enumerate(sources):
        columns = source.column_names()
        image_col = _find_column(columns, image_column, IMAGE_COLUMNS, "image", source.name)
        if image_col is None:
            raise DataError(f"no image column (columns: {', '.join(columns)})", file=source.name,
                            hint="name it with image_column")
        episode_col = _find_column(columns, episode_column, EPISODE_COLUMNS, "episode", source.name)
        if source.num_rows() == 0:
            raise DataError("the file has no rows", file=source.name, hint="remove it or record some gameplay")
        action_columns = [c for c in columns if c.lower() not in NON_ACTION_COLUMNS and c not in (image_col, episode_col)]
        binding = processor.bind(action_columns, source.name)
        data = source.read_columns(binding.columns + ([episode_col] if episode_col else []))
        actions, bad = binding.convert(data, source.name, first_row=0, skip_bad_rows=skip_bad_rows)
        bad_total += int(bad.sum())
        groups = _split_episodes(data[episode_col]) if episode_col else [(None, np.arange(source.num_rows()))]
        for key, rows in groups:
            name = source.name if key is None else f"{source.name} [{episode_col}={key}]"
            episodes.append(Episode(name, s, rows, actions[rows], bad[rows], binding.slot_mask))
        image_columns.append(image_col)
        bindings.append(binding)
        unused.append([c for c in action_columns if c not in binding.columns and not processor.ignores(c)])
    _check_mapping(processor, sources)
    _check_stick_ranges(bindings, sources)
    return DatasetIndex(sources, episodes, image_columns, bindings, unused, bad_total)


def _check_mapping(processor: UniversalVectorProcessor, sources: list[Source]) -> None:
    columns = sorted({c for source in sources for c in source.column_names()})
    unmatched = processor.unmatched_mapping(columns)
    if unmatched:
        raise DataError(f"mapping names the column {unmatched[0]!r}, which no file of the dataset has",
                        file=sources[0].name if len(sources) == 1 else None,
                        hint=f"columns: {', '.join(columns)}")


def _check_stick_ranges(bindings: list[ColumnBinding], sources: list[Source]) -> None:
    """One column, one stick range: "auto" picks a range per file from its values, and a file in
    which a 0..1 stick seldom rests would otherwise be read as a -1..1 stick."""
    seen: dict[str, tuple[str, str]] = {}
    for binding, source in zip(bindings, sources):
        for column, name in binding.stick_ranges.items():
            first = seen.setdefault(column, (name, source.name))
            if first[0] != name:
                raise DataError(f"stick column {column!r} reads as {name} here but as {first[0]} in {first[1]}",
                                file=source.name,
                                hint=f"set stick_range to the range the recorder wrote, for this column alone "
                                     f"{{{column}: {first[0]}}}")


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out whole episodes (never windows) for validation."""
    if num_episodes < 2 or val_fraction <= 0:
        return list(range(num_episodes)), []
    n_val = max(1, round(num_episodes * val_fraction))
    order = np.random.default_rng([seed, 7]).permutation(num_episodes)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())
