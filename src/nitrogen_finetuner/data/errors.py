"""Bad input is reported, never silently turned into training data."""

from __future__ import annotations

import difflib
import re
from typing import Optional

from pydantic import BaseModel, ValidationError


class DataError(ValueError):
    """A problem in the user's data, located by file, row and column, with what to do about it.

    The message is one line. It is built once, so the exception survives being re-raised by a
    DataLoader worker (which reconstructs it from its message).
    """

    def __init__(self, message: str, *, file: Optional[str] = None, row: Optional[int] = None,
                 column: Optional[str] = None, hint: Optional[str] = None):
        where = [str(file)] if file is not None else []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        text = ", ".join(where) + ": " + message if where else message
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.file, self.row, self.column = file, row, column


class DamagedFileError(DataError):
    """A file that stops being readable part-way (a damaged data page): no one row of it can be
    fixed or skipped. The type survives a DataLoader worker's re-raise, which calls it with the
    message alone."""


def user_message(err: BaseException) -> str:
    """The one-line message of a DataError, also when a DataLoader worker re-raised it with the
    worker's traceback folded into the text."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return re.sub(rf"^[\w.]*\b{type(err).__name__}: ", "", last)


def invalid_setting(err: ValidationError, file: Optional[str] = None, model: Optional[type[BaseModel]] = None) -> DataError:
    """pydantic's first complaint about a config, as one line naming the setting: an unknown key
    first (a misspelling explains the rest), with the closest known key of ``model`` as the hint."""
    first = first_complaint(err)
    where = ".".join(str(p) for p in first["loc"] if not _union_member(p))
    if first["type"] == "extra_forbidden":
        known = _keys_at(model, first["loc"][:-1]) if model else []
        given = str(first["loc"][-1])
        same_letters = [key for key in known if key.lower() == given.lower()]  # `LORA`: settings are lower case
        close = same_letters or difflib.get_close_matches(given, known, n=1)
        return DataError(f"unknown setting {where}", file=file,
                         hint=f"did you mean {'.'.join([*map(str, first['loc'][:-1]), close[0]])}?" if close
                         else (f"settings here: {', '.join(known)}" if known else None))
    if first["type"] == "model_type" and model and first["loc"]:  # `data: recordings/` for `data: {dataset_name: ...}`
        keys = _keys_at(model, first["loc"])
        return DataError(f"{where} is a section of settings, not a value", file=file,
                         hint=f"give its keys, such as {where}.{keys[0]}" if keys else None)
    if first["type"] == "missing":
        return DataError(f"setting {where} is required", file=file,
                         hint="give --data PATH, or data.dataset_name in the config" if where.startswith("data") else None)
    value = first.get("input")
    if value is None and "input" in first:  # `--set output=`: YAML reads nothing as null
        return DataError(f"invalid setting {where}: it is empty", file=file, hint=f"give {where} a value")
    if first["type"] == "list_type" and not isinstance(value, dict):  # `lora.targets=dit_attention`
        return DataError(f"invalid setting {where}: {value!r} is one value, and {where} is a list", file=file,
                         hint=f"write it in brackets: {where}=[{value}] on the command line, [{value}] in YAML")
    message = first["msg"].removeprefix("Value error, ")
    whole = _whole_number(first.get("input")) if first["type"] == "int_parsing" else None
    if whole is not None:  # YAML reads `1e3` as text
        return DataError(f"invalid setting {where}: {first['input']!r} is not written as a whole number", file=file,
                         hint=f"write {whole}")
    return DataError(f"invalid setting {where}: {message}" if where else f"invalid config: {message}", file=file)


def _union_member(part) -> bool:
    """pydantic names the member of a union it tried (``str``, ``dict[str,str]``) in an error's
    location; it is no part of the setting's name."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "list", "dict") or "[" in part)


def first_complaint(err: ValidationError) -> dict:
    """The complaint to report: an unknown key first (a misspelling explains the rest)."""
    return sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]


def _keys_at(model: type[BaseModel], path: tuple) -> list[str]:
    """The keys a config section takes: ``model``'s fields, or those of the section ``path`` names."""
    for part in path:
        field = model.model_fields.get(str(part))
        section = getattr(field, "annotation", None) if field else None
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return []
        model = section
    return list(model.model_fields)


def _whole_number(text) -> Optional[int]:
    """``1e3`` -> 1000: a whole number in float notation, else None."""
    try:
        number = float(text)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**63 else None
