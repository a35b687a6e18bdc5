"""Scalar field types and the error helper every config model shares (durations, sizes, strict ints,
clean strings), kept apart so that models in several modules can use them without importing each other."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic_core import PydanticCustomError

from tierscale.config.durations import parse_duration, parse_size

ERROR_TYPE = "tierscale"
"""pydantic error type of every error raised by our own validators (the loader keys on it)."""


def problem(message: str, *loc: str | int) -> PydanticCustomError:
    """An error whose message is shown as is, optionally pointing at a field below the raising model."""
    return PydanticCustomError(ERROR_TYPE, "{message}", {"message": message, "loc": loc})


# ---- scalar types --------------------------------------------------------------------------------------


def to_duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise problem(str(exc)) from None


def _size(value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise problem(str(exc)) from None


Duration = Annotated[float, BeforeValidator(to_duration)]
PositiveDuration = Annotated[Duration, Field(gt=0)]
Size = Annotated[int, BeforeValidator(_size)]
# Strict scalars: YAML already gives real ints and bools, so `max: "3"` or `healthy_after: yes` are
# mistakes worth pointing at rather than silently coercing.
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveFloat = Annotated[StrictFloat, Field(gt=0)]
NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]


def _expand_path(value: str) -> str:
    return str(Path(value).expanduser())


def no_control(value: str) -> str:
    """Paths, URIs and names that end up in XML, URLs or file names: a control character in one is a
    mistake (XML 1.0 cannot even carry most of them) and never what the user meant."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise problem(f"must not contain control characters such as newlines (got {value!r})")
    return value


def no_nul(value: str) -> str:
    # Arguments and environment values are C strings to execve: NUL would end them early, silently.
    if "\0" in value:
        raise problem(f"must not contain a NUL character (got {value!r})")
    return value


def env_name(value: str) -> str:
    # "A=B" would reach the environment as a variable A whose value starts with "B=": not what was asked.
    if not value or "=" in value or "\0" in value:
        raise problem(f"environment variable name must be non-empty, without '=' or NUL (got {value!r})")
    return value


PathStr = Annotated[NonEmptyStr, AfterValidator(no_control), AfterValidator(_expand_path)]
CleanStr = Annotated[NonEmptyStr, AfterValidator(no_control)]


class StrictModel(BaseModel):
    # validate_default: defaults go through the same validators (so `~` in the default state_dir expands).
    model_config = ConfigDict(extra="forbid", validate_default=True)
