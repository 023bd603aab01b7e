"""Command-line flags generated from config dataclasses: the one way options are defined.

Every option is a dataclass field made with ``option(default, help, ...)``; ``add_arguments``
turns a dataclass into an argparse group and ``from_arguments`` builds the dataclass back from
the parsed namespace. A field becomes ``--field-name`` (Megatron-LM's spelling: our field names
follow Megatron's); its metadata can rename the flag (``flag="--model-arch"``), hide it
(``cli=False``), restrict it (``choices``) or name its value (``metavar``). A field without a
default is a required flag. Flags the user did not pass are absent from the namespace, so
presets fill them before the dataclass defaults apply, and every default is written once: in
the dataclass.

Types: ``bool`` fields are switches (``--x``, or ``--x/--no-x`` when the default is True);
``Tuple[T, ...]`` / ``Sequence[T]`` / ``List[T]`` fields take several values (``nargs='*'``,
``'+'`` when required); ``Optional[T]`` and plain ``int``/``float``/``str`` take one value.

This module imports nothing from the package, so every subpackage and tool can use it.
"""

import argparse
import collections.abc
import dataclasses
import typing
from typing import Any, Dict, Iterable, Optional, Type


def option(default=dataclasses.MISSING, help: str = "", **metadata):
    """A dataclass field with its command-line help. ``metadata``: ``flag`` (the flag's name),
    ``cli=False`` (no flag), ``choices``, ``metavar``, ``negatable`` (a ``--no-`` form for a
    switch that is off by default), ``default_factory`` (called for the
    default, e.g. a machine-dependent one)."""
    factory = metadata.pop("default_factory", dataclasses.MISSING)
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=dict(metadata, help=help))
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults: use a tuple")
    return dataclasses.field(default=default, metadata=dict(metadata, help=help))


def flag_name(field: dataclasses.Field) -> str:
    """The command-line spelling of ``field``."""
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def field_default(field: dataclasses.Field):
    """The field's default value (MISSING for a required field)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _value_kind(annotation):
    """(element type, takes several values) behind Optional[...] / Tuple[...] / Sequence[...]."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _value_kind(inner[0])
    if origin in (tuple, list, collections.abc.Sequence):
        return typing.get_args(annotation)[0], True
    return annotation, False


def cli_fields(cls: Type) -> Iterable[dataclasses.Field]:
    return [field for field in dataclasses.fields(cls) if field.metadata.get("cli", True)
            and field.init]


def add_arguments(parser: argparse.ArgumentParser, cls: Type, title: Optional[str] = None,
                  exclude: Iterable[str] = (),
                  defaults: Optional[Dict[str, Any]] = None) -> argparse._ArgumentGroup:
    """One argparse group holding a flag for each field of ``cls`` (but ``exclude``).
    ``defaults`` replaces some fields' defaults for this command line (a tool's own choice,
    e.g. the usable CPUs as worker count)."""
    defaults = defaults or {}
    group = parser.add_argument_group(title or cls.__name__,
                                      (cls.__doc__ or "").split("\n\n")[0] or None)
    hints = typing.get_type_hints(cls)
    for field in cli_fields(cls):
        if field.name in exclude:
            continue
        kind, several = _value_kind(hints[field.name])
        default = defaults[field.name] if field.name in defaults else field_default(field)
        required = default is dataclasses.MISSING
        help_text = field.metadata.get("help", "")
        if not required and default not in (None, ()) and kind is not bool:
            shown = " ".join(map(str, default)) if several else default
            help_text += f" (default: {shown})"
        common = dict(dest=field.name, help=help_text.replace("%", "%%"))
        if required:
            common["required"] = True
        else:
            common["default"] = default if field.name in defaults else argparse.SUPPRESS
        for key in ("choices", "metavar"):
            if key in field.metadata:
                common[key] = field.metadata[key]
        if kind is bool:
            negatable = default or field.metadata.get("negatable", False)
            action = argparse.BooleanOptionalAction if negatable else "store_true"
            group.add_argument(flag_name(field), action=action, **common)
        elif several:
            group.add_argument(flag_name(field), nargs="+" if required else "*", type=kind,
                               **common)
        else:
            group.add_argument(flag_name(field), type=kind, **common)
    return group


def explicit_values(namespace: argparse.Namespace, cls: Type) -> Dict[str, Any]:
    """The fields of ``cls`` given on the command line (lists made tuples)."""
    names = {field.name for field in cli_fields(cls)}
    return {name: tuple(value) if isinstance(value, list) else value
            for name, value in vars(namespace).items() if name in names}


def from_arguments(cls: Type, namespace: argparse.Namespace,
                   preset: Optional[Dict[str, Any]] = None, **values):
    """``cls`` from: its defaults <- ``preset`` <- explicit flags <- ``values``."""
    names = {field.name for field in dataclasses.fields(cls)}
    merged = {key: value for key, value in (preset or {}).items() if key in names}
    merged.update(explicit_values(namespace, cls))
    merged.update(values)
    return cls(**merged)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser that reports a usage error as one line (no usage dump) and takes no
    abbreviations (``--num-layer`` is a typo, not ``--num-layers``), as Megatron-LM's."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Freezable:
    """Base of the config dataclasses: ``freeze`` makes an instance read-only, as a resolved
    run configuration is (``dataclasses.replace`` still derives new, unfrozen ones)."""

    def __setattr__(self, name, value):
        if self.__dict__.get("_frozen", False):
            raise dataclasses.FrozenInstanceError(
                f"cannot set {type(self).__name__}.{name}: the configuration is resolved and "
                "frozen (derive a changed copy with dataclasses.replace)")
        super().__setattr__(name, value)


def freeze(config):
    """Make ``config`` and every Freezable dataclass it holds read-only; returns it."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, Freezable):
            freeze(value)
    object.__setattr__(config, "_frozen", True)
    return config
