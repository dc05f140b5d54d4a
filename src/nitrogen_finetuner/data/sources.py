"""Where recordings come from: parquet files and folders, ``save_to_disk`` folders, Hugging Face
hub datasets, and folders of frames with an actions table (CSV, JSONL or parquet).

Every kind becomes a list of ``Source`` objects: one table of rows (one row per game frame) that
can hand over its small action columns whole and its image column in blocks, so a dataset
larger than memory streams. Sources are cheap to pickle: workers reopen files themselves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from .errors import DamagedFileError, DataError

TABLE_SUFFIXES = (".csv", ".jsonl")
ARROW_BLOCK_ROWS = 512


class Source:
    """One table of frames and action rows."""

    name: str
    base_dir: Optional[Path] = None

    def column_names(self) -> list[str]:
        raise NotImplementedError

    def num_rows(self) -> int:
        raise NotImplementedError

    def read_columns(self, columns: list[str]) -> dict[str, np.ndarray]:
        """Whole columns (the action columns: a few bytes per row) as numpy arrays."""
        raise NotImplementedError

    def blocks(self) -> list[tuple[int, int]]:
        """Row ranges to stream the images in (parquet row groups, Arrow slices)."""
        raise NotImplementedError

    def iter_column(self, column: str, block: tuple[int, int]) -> Iterator[tuple[int, list]]:
        """(first row, values) chunks of one column over a block, in row order."""
        raise NotImplementedError

    def read_value(self, column: str, row: int):
        """One cell, for previews; training streams whole blocks with ``iter_column``."""
        for block in self.blocks():
            if block[0] <= row < block[1]:
                for first, values in self.iter_column(column, block):
                    if row < first + len(values):
                        return values[row - first]
        raise IndexError(f"{self.name}: no row {row}")


def _to_numpy(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return array.to_numpy(zero_copy_only=False)


class ParquetSource(Source):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = str(path)
        self.base_dir = self.path.parent
        self._file: Optional[pq.ParquetFile] = None

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    @property
    def file(self) -> pq.ParquetFile:
        if self._file is None:
            try:
                self._file = pq.ParquetFile(self.path)
            except (pa.ArrowInvalid, OSError) as err:
                raise DataError(f"not a readable parquet file ({str(err).splitlines()[0][:150]})", file=self.name,
                                hint="check that the file is a complete parquet file") from None
        return self._file

    def column_names(self) -> list[str]:
        return list(self.file.schema_arrow.names)

    def num_rows(self) -> int:
        return self.file.metadata.num_rows

    def read_columns(self, columns: list[str]) -> dict[str, np.ndarray]:
        try:
            table = self.file.read(columns=columns)
        except (pa.ArrowException, OSError) as err:
            raise self._damaged(err, self._damaged_block(columns)) from None
        return {c: _to_numpy(table.column(c)) for c in columns}

    def _damaged_block(self, columns: list[str]) -> Optional[tuple[int, int]]:
        """The first block (row group) of these columns that cannot be read, to name its rows."""
        for group, block in enumerate(self.blocks()):
            try:
                self.file.read_row_group(group, columns=columns)
            except (pa.ArrowException, OSError):
                return block
        return None

    def blocks(self) -> list[tuple[int, int]]:
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        ends = np.cumsum(sizes).tolist()
        return [(end - size, end) for size, end in zip(sizes, ends)]

    def iter_column(self, column: str, block: tuple[int, int]) -> Iterator[tuple[int, list]]:
        group = self.blocks().index(block)
        row = block[0]
        batches = self.file.iter_batches(batch_size=256, row_groups=[group], columns=[column])
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as err:
                raise self._damaged(err, block, column) from None
            if batch is None:
                return
            yield row, batch.column(0).to_pylist()
            row += batch.num_rows

    def _damaged(self, err: Exception, block: Optional[tuple[int, int]] = None,
                 column: Optional[str] = None) -> DamagedFileError:
        where = f"rows {block[0]}-{block[1] - 1} cannot be read" if block else "its columns cannot be read"
        return DamagedFileError(f"a damaged parquet file: {where} ({str(err).splitlines()[0][:150]})", file=self.name,
                                column=column, hint="copy it again from the recording, or move it out of the data")


class TableSource(Source):
    """An in-memory Arrow table: an actions table (CSV/JSONL) whose image column holds paths."""

    def __init__(self, name: str, table: pa.Table, base_dir: Optional[Path] = None):
        self.name, self.table, self.base_dir = name, table, base_dir

    def column_names(self) -> list[str]:
        return list(self.table.column_names)

    def num_rows(self) -> int:
        return self.table.num_rows

    def read_columns(self, columns: list[str]) -> dict[str, np.ndarray]:
        return {c: _to_numpy(self.table.column(c)) for c in columns}

    def blocks(self) -> list[tuple[int, int]]:
        n = self.num_rows()
        return [(s, min(s + ARROW_BLOCK_ROWS, n)) for s in range(0, n, ARROW_BLOCK_ROWS)]

    def iter_column(self, column: str, block: tuple[int, int]) -> Iterator[tuple[int, list]]:
        start, stop = block
        yield start, self.table.column(column).slice(start, stop - start).to_pylist()


class ArrowFileSource(TableSource):
    """A memory-mapped Arrow file from the ``datasets`` cache or a ``save_to_disk`` folder.

    Only the path is pickled; each worker maps the file again, so nothing is copied.
    """

    def __init__(self, path: Path, base_dir: Optional[Path] = None):
        self.path = Path(path)
        self.name, self.base_dir = str(path), base_dir
        self._table: Optional[pa.Table] = None

    def __getstate__(self):
        return {**self.__dict__, "_table": None}

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            with pa.memory_map(str(self.path)) as source:
                self._table = pa.ipc.open_stream(source).read_all()
        return self._table


_UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # what spreadsheets' "Unicode text" exports start with


def _read_table(path: Path) -> pa.Table:
    with path.open("rb") as f:
        if f.read(2) in _UTF16_MARKS:  # pyarrow would read it as UTF-8 and blame a row
            raise DataError("the table is UTF-16 text, and tables are read as UTF-8", file=str(path),
                            hint="save it as UTF-8: CSV UTF-8 in a spreadsheet")
    try:
        if path.suffix.lower() == ".csv":
            return pyarrow.csv.read_csv(path)
        return pyarrow.json.read_json(path)
    except pa.ArrowInvalid as err:
        header = path.open(encoding="utf-8", errors="replace").readline() if path.suffix.lower() == ".csv" else ""
        row = _short_or_long_row(path) if header else None
        if row is not None:
            values, names = (f"{n} {word}{'' if n == 1 else 's'}" for n, word in
                             ((row.actual_columns, "value"), (row.expected_columns, "column")))
            raise DataError(f"the row holds {values}, and the header names {names}", file=str(path),
                            row=row.number - 2,  # counted from 1, the header's line first
                            hint=other_separator_hint(header) or "give the row one value per column: an empty one "
                            "between two commas where it has none, and quotes around a value that holds a comma") \
                from None
        raise DataError(f"cannot parse the actions table ({str(err).splitlines()[0][:150]})", file=str(path),
                        hint=other_separator_hint(header)) from None


def _short_or_long_row(path: Path):
    """The first CSV row with another number of values than the header has names, read again on
    one thread, where the parser counts the rows (pyarrow's ``InvalidRow``), or None."""
    found = []

    def stop_at(row):
        found.append(row)
        return "error"

    try:
        pyarrow.csv.read_csv(path, read_options=pyarrow.csv.ReadOptions(use_threads=False),
                             parse_options=pyarrow.csv.ParseOptions(invalid_row_handler=stop_at))
    except pa.ArrowInvalid:
        pass
    return found[0] if found and found[0].number is not None else None


def other_separator_hint(header: str) -> Optional[str]:
    """What to do about a CSV header written with semicolons or tabs (as spreadsheets in many
    countries write them), or None."""
    if "," in header:
        return None
    separator = next((name for sign, name in ((";", "';'"), ("\t", "tabs")) if sign in header), None)
    return f"its values are separated by {separator}: write the table with commas" if separator else None


def _datasets_sources(dataset, base_dir: Optional[Path]) -> list[Source]:
    if dataset._indices is not None:  # a selected/shuffled view: materialise its rows first
        dataset = dataset.flatten_indices()
    return [ArrowFileSource(Path(f["filename"]), base_dir) for f in dataset.cache_files]


def _load_from_disk(folder: Path, split: str) -> list[Source]:
    import datasets  # noqa: PLC0415 - heavy import, only for this source kind

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"no split '{split}' (splits: {', '.join(loaded)})", file=str(folder),
                            hint="set split to one of them")
        loaded = loaded[split]
    return _datasets_sources(loaded, folder)


HUB_ID = re.compile(r"[\w-][\w.-]*/[\w-][\w.-]*")  # user/name; anything else is a local path


def load_hub_dataset(name: str, split: str) -> list[Source]:
    """A dataset on the Hugging Face hub (downloaded once into the local ``datasets`` cache)."""
    import datasets  # noqa: PLC0415

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # network, authentication, unknown repository, unknown split
        raise DataError(f"'{name}' is no local file or folder, and the Hugging Face hub cannot load it as a dataset "
                        f"id ({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                        hint="check the path; for the hub, the id, the split and your network") from None
    return _datasets_sources(dataset, None)


def _files_below(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, each once: links are followed, but only after every
    folder reached without one, so a file is named by its own path where it has one, and a file
    or folder reached again (a link to a folder already read, a link loop) is read once. Hidden
    files and folders (``.cache``, macOS's ``._`` copies) are left out, as ``datasets`` leaves
    them out. A subfolder that cannot be read stops with its name (``rglob`` would leave its
    recordings out without a word)."""
    def unreadable(err: OSError):
        raise err

    walked, found, links = set(), [], [Path(folder)]
    while links:
        for root, folders, names in os.walk(links.pop(0), onerror=unreadable, followlinks=True):
            if os.path.realpath(root) in walked:
                folders[:] = []
                continue
            walked.add(os.path.realpath(root))
            linked = {f for f in folders if (Path(root) / f).is_symlink()}
            visible = sorted(f for f in folders if not f.startswith("."))
            links += [Path(root) / f for f in visible if f in linked]
            folders[:] = [f for f in visible if f not in linked]
            found += [Path(root) / name for name in names if not name.startswith(".") and (Path(root) / name).is_file()]
    unique = {}
    for path in sorted(found, key=Path.is_symlink):  # a file's own path before a link to it
        unique.setdefault(os.path.realpath(path), path)
    return sorted(unique.values())


def open_sources(dataset_name: str, split: str = "train") -> list[Source]:
    """All sources of a dataset: a path on disk (file or folder), else a hub dataset id."""
    path = Path(dataset_name).expanduser()
    saved = path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())
    if path.exists() and not saved and split != "train":  # splits are the hub's and save_to_disk's
        raise DataError(f"split {split!r} names a split of a hub or save_to_disk dataset, and this is "
                        f"{'a file' if path.is_file() else 'a folder of recordings'}", file=str(path),
                        hint="leave split out (every recording is read), or give the folder of that split")
    if path.is_file():  # suffixes in any case: Windows tools write RUN.PARQUET
        if path.suffix.lower() == ".parquet":
            return [ParquetSource(path)]
        if path.suffix.lower() in TABLE_SUFFIXES:
            return [TableSource(str(path), _read_table(path), path.parent)]
        raise DataError("not a dataset file: expected .parquet, .csv or .jsonl", file=str(path))
    if path.is_dir():
        if saved:
            return _load_from_disk(path, split)
        files = _files_below(path)
        parquet = [p for p in files if p.suffix.lower() == ".parquet"]
        tables = [p for p in files if p.suffix.lower() in TABLE_SUFFIXES]
        if parquet and tables:
            raise DataError(f"the folder holds parquet files and also actions tables "
                            f"({', '.join(str(p.relative_to(path)) for p in tables[:3])}): which are the recordings?",
                            file=str(path), hint="give the folder that holds only the recordings (a LeRobot "
                                                 "dataset's data/, say) or one file, or keep one kind in the folder")
        if parquet:
            return [ParquetSource(p) for p in parquet]
        if tables:
            return [TableSource(str(p), _read_table(p), p.parent) for p in tables]
        raise DataError("no recordings found: expected .parquet files, a save_to_disk folder, or frames with an "
                        "actions table (.csv/.jsonl)", file=str(path))
    if not HUB_ID.fullmatch(dataset_name):
        raise DataError("no such file or folder", file=dataset_name,
                        hint="give a local path, or a Hugging Face dataset id such as user/name")
    if path.parent.is_dir():  # `recordings/my-game` beside a folder `recordings`: a mistyped path
        raise DataError("no such file or folder", file=dataset_name,
                        hint=f"{path.parent} is a local folder: check the name (for the hub dataset of that "
                             "id, run from another folder)")
    return load_hub_dataset(dataset_name, split)
