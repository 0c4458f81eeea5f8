"""How ``liploc --help`` names the value an option takes: ``PATH``, ``INTEGER``, ``a|b|c``, nothing for flags.

typer's rich help shows Python annotations (``<bool>`` on every flag, ``<list[Path]>`` on repeated
arguments). A user wants to know what to type: the kind of value, the choices, or nothing at all
for a flag. :func:`install_help_types` replaces the label once for every command, including the
commands other modules add later, so that help reads the same everywhere.
"""

from __future__ import annotations

import re
from typing import Any

import typer.core

_KINDS = {
    "int": "INTEGER",
    "float": "FLOAT",
    "str": "TEXT",
    "path": "PATH",
    "bool": None,
}
_LIST = re.compile(r"^list\[(.*)\]$")


def help_type(label: str, is_flag: bool = False) -> str | None:
    """The help label for typer's type label ``label`` (``<int range>``, ``<list[Path]>``, ``<a|b>``).

    None for flags; choices stay ``a|b|c``; Python names become the kind of value to type.
    """
    if is_flag:
        return None
    inner = label.strip("<>").removesuffix(" range")
    repeated = _LIST.match(inner)
    if repeated:
        inner = repeated.group(1)
    if "|" in inner:
        return inner
    return _KINDS.get(inner.lower(), inner.upper())


def install_help_types() -> None:
    """Use :func:`help_type` for the options and arguments of every typer command."""

    def option_type(self: Any, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        return help_type(self.display_type(ctx), bool(self.is_flag or self.count))

    def argument_type(self: Any, ctx: Any) -> str | None:
        # An argument's metavar is already its name in the panel: do not print it twice.
        return None if self.metavar is not None else help_type(self.display_type(ctx))

    typer.core.TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    typer.core.TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign]
