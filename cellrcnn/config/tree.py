"""The whole config tree: sections together, overrides by dotted name, saving and loading."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..utils.errors import DataError
from ..utils.files import MAX_SETTINGS_BYTES, atomic_write, read_text_within
from .data import DataConfig
from .fields import _check, _field_types, _Section, parse_field_value
from .model import ModelConfig
from .train import SCHEDULES, TrainConfig, best_metrics

__all__ = ["Config", "rename_settings"]


@dataclass(frozen=True)
class Config(_Section):
    """The whole configuration of a run; saved as ``config.json`` with every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(isinstance(self.model, ModelConfig), f"model must be a ModelConfig, got {type(self.model).__name__}")
        _check(isinstance(self.data, DataConfig), f"data must be a DataConfig, got {type(self.data).__name__}")
        _check(isinstance(self.train, TrainConfig), f"train must be a TrainConfig, got {type(self.train).__name__}")
        schedule = SCHEDULES["pretrained" if self.model.pretrained else "scratch"]
        auto = {name: value for name, value in schedule.items() if getattr(self.train, name) is None}
        if auto:  # resolved once, here: the saved config.json says what was used
            object.__setattr__(self, "train", dataclasses.replace(self.train, **auto))
        metrics = best_metrics(self.model.parts)
        _check(self.train.best_metric in metrics,
               f"best_metric {self.train.best_metric!r} is not measured for the parts {list(self.model.parts)}; "
               f"choose one of {', '.join(metrics)}")
        _check(len(self.data.part_values) == self.model.num_parts,
               f"part_values {list(self.data.part_values)} must give one value per part {list(self.model.parts)}")
        _check(len(self.data.class_names) == self.model.num_classes,
               f"class_names {list(self.data.class_names)} must name each of the model's "
               f"{self.model.num_classes} cell classes")
        _check(self.data.encoding != "cells+nuclei" or self.model.num_parts == 3,
               f"encoding 'cells+nuclei' gives three parts (background, cytoplasm, nucleus); "
               f"the model has {list(self.model.parts)}")

    def to_json(self, path: str | os.PathLike, command: Sequence[str] | None = None) -> None:
        """Write the config to ``path`` atomically (a partial file is never left behind).

        ``command``, the command line that started the run, is recorded beside the
        sections as ``"command"``; :meth:`from_json` ignores it.
        """
        path = Path(path)
        values = self.to_dict()
        if command is not None:
            values = {"command": shlex.join(command), **values}
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(values, indent=2) + "\n"), overwrite=True)

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> "Config":
        """The config of a checkpoint: as :meth:`from_dict`, with the model section read by
        :meth:`ModelConfig.from_saved` so the model is rebuilt as it was trained."""
        _check(isinstance(values, Mapping) and isinstance(values.get("model", {}), Mapping),
               "a checkpoint's config must be a mapping with a 'model' section")
        return cls.from_dict({**values, "model": ModelConfig.from_saved(values.get("model", {}))})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Config":
        """Read a config written by :meth:`to_json` (a run's ``config.json`` works as is)."""
        path = Path(path)
        try:
            values = json.loads(read_text_within(path, MAX_SETTINGS_BYTES, "a config is a small JSON file, as a "
                                                                           "run's config.json: give that"))
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"cannot read config {path}: {err}") from None
        except json.JSONDecodeError as err:
            raise DataError(f"cannot read config {path}: a config is a JSON file, as a run's config.json, and this "
                            f"is not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
        if not isinstance(values, dict):
            raise DataError(f"{path} does not hold a config object ({{\"model\": ..., \"data\": ..., "
                            f"\"train\": ...}}, as a run's config.json)")
        values.pop("command", None)
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as err:
            raise DataError(f"{path}: {err}") from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """A copy with fields replaced, validated as on construction.

        Parameters
        ----------
        overrides : mapping
            ``"section.field"`` (``"train.lr"``) to a value; a string is parsed as
            the field's type (:func:`parse_field_value`), so command-line text
            can be passed as is.

        Raises
        ------
        ValueError
            An unknown section or field, a value of the wrong type, or a value the
            section rejects; the message names the field.
        """
        return dataclasses.replace(self, **_sections(overrides, lambda name, fields: dataclasses.replace(
            getattr(self, name), **fields)))

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> "Config":
        """The defaults with ``overrides`` (as in :meth:`with_overrides`). Unlike
        ``Config().with_overrides(...)``, settings that follow the weights (the lr
        schedule) follow the weights given here."""
        return cls(**_sections(overrides, lambda name, fields: _SECTIONS[name](**fields)))


def _sections(overrides: Mapping[str, Any], make) -> dict[str, Any]:
    """Each overridden section built by ``make(section, fields)``; its errors name the fields."""
    sections = {}
    for section, fields in _typed_overrides(overrides).items():
        try:
            sections[section] = make(section, fields)
        except ValueError as err:
            raise ValueError(f"{', '.join(f'{section}.{n}' for n in fields)}: {err}") from None
    return sections


def _typed_overrides(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"train.lr": "0.002"}`` as ``{"train": {"lr": 0.002}}``, each string parsed as its field's type."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        cls = _SECTIONS.get(section)
        _check(cls is not None and bool(name),
               f"{key!r}: expected section.field with section one of {', '.join(_SECTIONS)}")
        hints = _field_types(cls)
        _check(name in hints, f"{key!r}: {cls.__name__} has no field {name!r}; its fields are {', '.join(hints)}")
        if isinstance(value, str):
            value = parse_field_value(hints[name], value, key)
        changes.setdefault(section, {})[name] = value
    return changes


_SECTIONS: dict[str, type[_Section]] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


#: A setting as library messages name it: a config field (``data.projection``) or an argument
#: (``cell_diameter``), with an optional value (``='max'``, ``=True``); not the setting a message is about
#: (``train.epochs: expected an integer``).
_SETTING = re.compile(r"\b(?>((?:model|data|train)\.[a-z_]+|[a-z]+(?:_[a-z]+)*)(?:=('[^']*'|[\w.,-]+))?)(?(2)|(?!:))")


def rename_settings(message: str, rename: Callable[[str, str | None], str | None]) -> str:
    """``message`` with each setting it names put in a front end's terms.

    Library messages name config fields (``data.snap_values=True``) and
    arguments (``cell_diameter='auto'``), so that they hold in a notebook; the
    command line and napari call this to say it in flags or widget labels.

    Parameters
    ----------
    message : str
        One message.
    rename : callable
        ``rename(name, value)`` gives the text for a setting (``value``: the
        text after ``=``, unquoted, or None), or None to leave it as it is. A
        bare word (no ``section.`` and no value) is never taken for a setting.
    """
    def replace(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if "." not in name and value is None:
            return match.group(0)
        told = rename(name, value.strip("'") if value is not None else None)
        return match.group(0) if told is None else told

    return _SETTING.sub(replace, message)
