"""How ``liploc --help`` reads: value names, placeholders, option panels and examples that fit 80 columns.

typer's rich help shows Python annotations (``<bool>`` on every flag, ``<list[Path]>`` on repeated
arguments). A user wants to know what to type: the kind of value, the choices, or nothing at all
for a flag. typer also lays options out in five columns that share the width, so that at 80
columns long names are cut (``--allow-training-d…``) and descriptions get 20 characters a line.
:func:`install_help_types` changes, once for every command (including the commands other modules
add later), so that help reads the same everywhere:

- the value an option takes (:func:`help_type`);
- the usage line: ``RUN``, ``[OUT]``, ``IMAGE...``, upper case like the panels, without typer's braces;
- the option panels (:func:`options_panel`): one column with the whole name, its other spelling
  (``--exclude-self/--keep-self``) and its value, one with the description, default and
  ``[required]`` as one paragraph; a name too long for the first column gets its description on
  the next lines, so no name, default or description is ever cut.

:func:`examples` writes the examples that end every command's help so that each fits 80
columns: a long command continues on the next line after a backslash, between options, so that a
pasted example runs as shown.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import typer.core
import typer.rich_utils as rich_utils
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

EXAMPLE_WIDTH = 76
"""Longest example line: 80 columns less the help's margins."""
EXAMPLES_TITLE = "[bold]Examples[/]"
NAME_SHARE = 0.4
"""Most of a panel's width that the name column takes; longer names put their help below."""

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

    def usage_name(self: Any) -> str:
        name = self.display_name_raw.upper()
        repeated = self.nargs != 1 and not name.endswith("...")
        name += "..." if repeated else ""
        return name if self.required else f"[{name}]"

    typer.core.TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    typer.core.TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign]
    typer.core.TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    rich_utils._print_options_panel = options_panel  # type: ignore[assignment]


def option_label(param: Any, ctx: Any) -> Text:
    """``-k, --top-k INTEGER [x>=1]``, ``--exclude-self/--keep-self``, ``RUN``: what to type."""
    if isinstance(param, typer.core.TyperArgument):
        names = param.display_name_raw.upper()
        if param.metavar is None and param.nargs != 1:
            names += "..."
        label = Text(names, style=rich_utils.STYLE_OPTION)
    else:
        shorts = [o for o in param.opts if not o.startswith("--")]
        longs = [o for o in param.opts if o.startswith("--")]
        label = rich_utils.highlighter(Text(", ".join([*shorts, *longs])))
        if param.secondary_opts:
            label.append("/")
            label.append_text(rich_utils.negative_highlighter(Text("/".join(param.secondary_opts))))
    value = param.display_type_rich(ctx=ctx) or ""
    limits = param._get_number_range_help_str()
    if limits:
        value += rich_utils.RANGE_STRING.format(limits)
    if value.strip():
        label.append(" ")
        label.append_text(rich_utils.types_highlighter(Text(value.strip(), style=rich_utils.STYLE_TYPES)))
    return label


def option_help(param: Any, ctx: Any, markup_mode: Any) -> RenderableType:
    """The description with ``[default: ...]`` and ``[required]`` as one paragraph (typer puts
    them in columns of their own); a word longer than the column folds instead of being cut."""
    parts = rich_utils._get_parameter_help(param=param, ctx=ctx, markup_mode=markup_mode).renderables
    if not all(isinstance(part, Text) for part in parts):
        return Group(*parts)
    paragraph = Text(overflow="fold")
    for part in parts:
        if paragraph:
            paragraph.append(" ")
        paragraph.append_text(part)  # type: ignore[arg-type]
    return paragraph


def options_panel(*, name: str, params: list[Any], ctx: Any, markup_mode: Any, console: Console) -> None:
    """An options (or arguments) panel whose names and defaults are never cut (see the module doc)."""
    if not params:
        return
    rows = [(bool(p.required), option_label(p, ctx), option_help(p, ctx, markup_mode)) for p in params]
    marker = 2 if any(required for required, _, _ in rows) else 0
    inner = max(20, (console.width or 80) - 4)  # the panel's border and padding
    longest = max(label.cell_len for _, label, _ in rows)
    name_width = min(longest, max(12, int(inner * NAME_SHARE)))
    lines: list[RenderableType] = []
    for required, label, help_text in rows:
        star = Text(
            rich_utils.REQUIRED_SHORT_STRING if required else "", style=rich_utils.STYLE_REQUIRED_SHORT
        )
        if label.cell_len <= name_width:
            grid = Table.grid(padding=(0, 1, 0, 0))  # a space after each column but the last
            if marker:
                grid.add_column(width=marker - 1)
            grid.add_column(width=name_width, no_wrap=True)
            grid.add_column(ratio=1)
            grid.add_row(*([star] if marker else []), label, help_text)
            lines.append(grid)
        else:  # the whole name on its line, the description below it, in the description column
            head = Text.assemble(star, " " * (marker - star.cell_len), label) if marker else label
            lines.append(head)
            lines.append(Padding(help_text, (0, 0, 0, marker + name_width + 1)))
    console.print(
        Panel(
            Group(*lines),
            border_style=rich_utils.STYLE_OPTIONS_PANEL_BORDER,
            title=name,
            title_align=rich_utils.ALIGN_OPTIONS_PANEL,
        )
    )


def examples(*commands: str, notes: str = "") -> str:
    """The epilog of a command's help: ``Examples``, each command fitted to :data:`EXAMPLE_WIDTH`
    (continued after a backslash between options, an option and its value kept together), then
    ``notes`` (rich markup) if any."""
    blocks = [EXAMPLES_TITLE, *(_fitted(command) for command in commands)]
    if notes:
        blocks.append(notes)
    return "\n\n".join(blocks)


def example_lines(command: str) -> list[str]:
    """``command`` as the lines :func:`examples` prints (without markup escapes)."""
    words = shlex.split(command, posix=False)
    lines: list[str] = []
    current = ""
    for i, word in enumerate(words):
        # Break only before an option, or before a shell redirection: never between an option
        # and its value, never inside a word.
        breakable = i > 0 and (word.startswith("-") or word in (">", "|", ">>"))
        if breakable and len(current) + 1 + len(word) + _value_length(words, i) + 2 > EXAMPLE_WIDTH:
            lines.append(current + " \\")
            current = "    " + word
        else:
            current += (" " if i else "") + word
    lines.append(current)
    return lines


def _value_length(words: list[str], i: int) -> int:
    nxt = words[i + 1] if i + 1 < len(words) else ""
    return 1 + len(nxt) if words[i].startswith("-") and nxt and not nxt.startswith("-") else 0


def _fitted(command: str) -> str:
    # A line's continuation backslash stays out of the escaping (rich doubles a trailing one).
    lines = [line.removesuffix(" \\") for line in example_lines(command)]
    return " \\\n".join(escape(line) for line in lines)
