"""Command-line flags generated from config dataclasses.

Each dataclass field becomes ``--field-name`` (Megatron-LM's spelling, since our field names
follow Megatron's), its help text is the attribute docstring-style ``help`` metadata, and a
field can rename its flag with ``metadata={"flag": "--model-arch"}`` or hide it with
``metadata={"cli": False}``. Flags the user did not pass are absent from the parsed namespace,
so presets can fill them before dataclass defaults apply.
"""

import argparse
import dataclasses
import typing
from typing import Any, Dict, Optional, Type


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _scalar_type(annotation):
    """int/float/str behind Optional[...]; tuples become nargs='*' of their element type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])
    if origin in (tuple, typing.Tuple):
        element = typing.get_args(annotation)[0]
        return ("tuple", element)
    return annotation


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: Type, title: str) -> None:
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.metadata.get("cli", True):
            continue
        kind = _scalar_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = field.metadata.get("help", "")
        if default not in (None, ()) and kind is not bool:
            help_text += f" (default: {default})"
        common = dict(dest=field.name, default=argparse.SUPPRESS,
                      help=help_text.replace("%", "%%"))
        if "choices" in field.metadata:
            common["choices"] = field.metadata["choices"]
        if kind is bool:
            if default:
                group.add_argument(_flag(field), action=argparse.BooleanOptionalAction, **common)
            else:
                group.add_argument(_flag(field), action="store_true", **common)
        elif isinstance(kind, tuple):
            group.add_argument(_flag(field), nargs="*", type=kind[1], **common)
        else:
            group.add_argument(_flag(field), type=kind, **common)


def explicit_values(namespace: argparse.Namespace, cls: Type) -> Dict[str, Any]:
    """The fields of ``cls`` the user set on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names}


def build_dataclass(cls: Type, namespace: argparse.Namespace,
                    preset: Optional[Dict[str, Any]] = None):
    """Defaults <- preset values <- explicit flags."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in (preset or {}).items() if k in names}
    values.update(explicit_values(namespace, cls))
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return cls(**values)
