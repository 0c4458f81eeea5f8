"""Terminal output shared by the commands: tables that fit the terminal, plain lines in pipes.

On a terminal a table is drawn by rich with light rules, headers that may take two lines and no
column cut below its widest value. When the output is a pipe or a file (``liploc evaluate ... |
grep``), the same table comes out as plain aligned lines without colour, box characters or wrapping,
so that every value is whole and a script can split the columns on runs of spaces.

Commands build a :class:`rich.table.Table` as usual (see :func:`new_table`) and print it with
:func:`print_table`; messages that hold paths go through :func:`print_line`, which never breaks a
path in the middle.
"""

from __future__ import annotations

from typing import overload

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

PLAIN_GAP = "  "
"""Between the columns of a table printed as plain lines."""


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that writes no colour codes or cursor moves into pipes."""
    return Console(stderr=stderr, highlight=False)


def is_interactive(console: Console) -> bool:
    """True when ``console`` writes to a terminal (progress bars and drawn tables make sense)."""
    return console.is_terminal


def new_table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    """A compact table (no outer box, one rule under the header) whose columns are not cut.

    Args:
        columns: column headers; a ``\\n`` puts a header on two lines to keep the column narrow.
        title: printed above the table (on its own line, never truncated).
        right: headers of the columns to right-align (numbers).
    """
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    return table


def table_lines(table: Table) -> list[str]:
    """The table as plain aligned lines: the title, one header line, one line per row.

    A cell of several lines (a matrix) continues on the next lines, in its own column.
    """
    headers = [Text.from_markup(str(c.header)).plain.replace("\n", " ") for c in table.columns]
    cells = [[_plain(cell).split("\n") for cell in column.cells] for column in table.columns]
    rows = list(zip(*cells, strict=True)) if cells else []
    widths = [max([len(h), *(len(part) for row in rows for part in row[i])]) for i, h in enumerate(headers)]

    def line(values: list[str] | tuple[str, ...]) -> str:
        parts = []
        for column, value, width in zip(table.columns, values, widths, strict=True):
            parts.append(value.rjust(width) if column.justify == "right" else value.ljust(width))
        return PLAIN_GAP.join(parts).rstrip()

    lines = []
    if table.title:
        lines.append(_plain(table.title))
    if table.show_header:
        lines.append(line(headers))
    for row in rows:
        for k in range(max(len(cell) for cell in row)):
            lines.append(line([cell[k] if k < len(cell) else "" for cell in row]))
    if table.caption:
        lines.append(_plain(table.caption))
    return lines


def print_table(console: Console, table: Table) -> None:
    """Draw ``table`` on a terminal, or print it as plain lines into a pipe or file."""
    if is_interactive(console):
        if table.title:
            # A title on its own line wraps (if at all) like a path in a terminal: whole, not folded.
            print_line(console, table.title)
            table.title = None
        console.print(table)
    else:
        for text in table_lines(table):
            print_line(console, text)


def print_line(console: Console, text: str) -> None:
    """One message line; long paths are left to the terminal to wrap, never cut mid-word by rich."""
    console.print(text, soft_wrap=True, highlight=False)


def _plain(cell: object) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(str(cell)).plain


@overload
def progress_bar(console: Console, *, transient: bool = True, elapsed: bool = False) -> Progress: ...
@overload
def progress_bar(console: None, *, transient: bool = True, elapsed: bool = False) -> None: ...
def progress_bar(
    console: Console | None, *, transient: bool = True, elapsed: bool = False
) -> Progress | None:
    """The rich progress bar of every command: description, bar, done/total and the time left
    (``elapsed``: the time taken so far); None when quiet (``console`` None).

    ``transient``: the bar disappears when done; otherwise its last state stays, in a terminal
    and, as one line, in a pipe or log file.
    """
    if console is None:
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn() if elapsed else TimeRemainingColumn(),
        console=console,
        transient=transient,
    )
