"""The ``data`` section of a run's configuration."""

from __future__ import annotations

from typing import Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..actions.processor import checked_profile, checked_stick_range


def auto_means_null(model: type[BaseModel], values):
    """``auto`` (or ``all``) for a setting whose default is null: the words the README's tables
    use for "decided for you" work when typed, instead of failing or naming a column "auto"."""
    if not isinstance(values, dict):
        return values
    nullable = {name for name, field in model.model_fields.items() if field.default is None}
    return {k: None if k in nullable and v in ("auto", "all") else v for k, v in values.items()}


def numbers_are_not_true_or_false(model: type[BaseModel], value, info: ValidationInfo):
    """``max_steps: true`` is a slip, not 1: a setting that takes a number refuses true and false
    (pydantic would read them as 1 and 0)."""
    field = model.model_fields[info.field_name]
    if isinstance(value, bool) and {int, float} & set(get_args(field.annotation) or [field.annotation]):
        raise ValueError(f"{str(value).lower()} is not a number")
    return value


class WrittenInt(int):
    """A YAML integer that keeps the text it was written as (``written``), for settings that take text."""
    written: str


class WrittenFloat(float):
    """A YAML float that keeps the text it was written as (``written``), for settings that take text."""
    written: str


def as_written(value):
    """``value`` with every YAML number in it back to the text it was written as."""
    if isinstance(value, dict):
        return {as_written(k): as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_written(v) for v in value]
    return getattr(value, "written", value)


def _takes_text(annotation) -> bool:
    return annotation is str or any(_takes_text(arg) for arg in get_args(annotation))


def text_as_written(model: type[BaseModel], value, info: ValidationInfo):
    """``output: 2024.10`` names the folder 2024.10, not 2024.1 (nor ``007`` the folder 7): a setting
    that takes text gets a YAML number as it was written."""
    return as_written(value) if _takes_text(model.model_fields[info.field_name].annotation) else value


class DataConfig(BaseModel):
    """How recordings become training windows. Unset values come from the checkpoint."""

    # `--set output=2024` is a name; inf and nan are no setting's value
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, allow_inf_nan=False)

    dataset_name: str = Field(description="local parquet file or folder, save_to_disk folder, frames folder, or hub id")
    split: str = Field("train", description="split of a hub or save_to_disk dataset")
    profile: str = Field("auto", description="console profile naming the columns (auto: detect from the columns)")
    mapping: dict[str, Optional[str]] = Field(
        default_factory=dict, description="source column -> action slot (LEFT_X, -LEFT_Y, LEFT for [x, y]) or null"
    )
    stick_range: Union[str, dict[str, str]] = Field(
        "auto", description="auto, float_pm1, float_01, int8, uint8 or int16; or per column: {j_left: int16}"
    )
    analog_deadzone: float = Field(0.05, ge=0.0, lt=1.0, description="|stick| below this becomes 0")
    trigger_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="analog trigger above this is a press")
    prediction_horizon: Optional[int] = Field(None, ge=1, le=100_000,
                                              description="action rows per window (checkpoint's horizon)")
    action_shift: Optional[int] = Field(None, ge=0, le=100_000, description="rows between a frame and its first action")
    episode_column: Optional[str] = Field(None, description="column whose values split files into episodes")
    image_column: Optional[str] = Field(None, description="column holding the frames (auto: image, frame, ...)")
    frame_column: Optional[str] = Field(None, description="column whose numbers order each episode's rows "
                                        "(auto: frame_index when there is one; none: file order)")
    image_fit: Literal["pad", "crop", "stretch"] = "pad"
    augment: bool = False
    augment_crop_scale: float = Field(0.9, gt=0.0, le=1.0)
    augment_jitter: float = Field(0.1, ge=0.0, lt=1.0)
    skip_bad_rows: bool = Field(False, description="skip and count bad rows instead of stopping")
    shuffle_buffer: int = Field(512, ge=1, description="windows mixed across blocks when shuffling")
    shard: Literal["windows", "blocks"] = Field(
        "windows", description="split over ranks by window (exact, any world size) or by block (less I/O)"
    )

    _auto = model_validator(mode="before")(classmethod(auto_means_null))
    _numbers = field_validator("*", mode="before")(classmethod(numbers_are_not_true_or_false))
    _text = field_validator("*", mode="before")(classmethod(text_as_written))

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:  # checked now: --print-config checks a config
        checked_profile(value)
        return value

    @field_validator("mapping", "stick_range", mode="before")
    @classmethod
    def _yaml_words(cls, value, info: ValidationInfo):
        """YAML reads the words on, off, yes, no, true, false and null as true, false and null: said
        here, instead of a complaint about column "1" or "None"."""
        for column, slot in value.items() if isinstance(value, dict) else ():
            if column is None or isinstance(column, bool):
                word = "null" if column is None else str(column).lower()
                raise ValueError(f"a column name reads as YAML's {word}: quote it, e.g. {{'on': ...}}")
            if isinstance(slot, bool) and info.field_name == "mapping":
                raise ValueError(f"{column}: {str(slot).lower()} is no action slot: give one (SOUTH, LEFT_X, ...), "
                                 "or null to leave the column out")
        return value

    @field_validator("stick_range")
    @classmethod
    def _known_stick_range(cls, value: Union[str, dict[str, str]]) -> Union[str, dict[str, str]]:
        checked_stick_range(value)
        return value

    @field_validator("dataset_name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():  # an unset shell variable: it would read the current folder
            raise ValueError("the data path is empty: give the recordings' file, folder or hub id")
        return value
