"""The ``liploc`` command line: the typer app, assembled from :mod:`liploc.commands`.

Each command lives in its module there, with its options, help and examples; it imports its
library inside the command function, so that ``liploc info`` starts without torch and a
mistyped argument is refused before torch loads. Errors end every command the same way
(:func:`liploc.commands._common.reported_errors`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from liploc import __version__
from liploc.commands import (
    cache,
    demo_command,
    evaluate,
    info,
    interop,
    localize,
    maps,
    serve,
    synth,
    train,
)
from liploc.help_format import install_help_types

install_help_types()

app = typer.Typer(
    name="liploc",
    help="Global visual localization in LiDAR maps (LIP-Loc: LiDAR-image pretraining).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
map_app = typer.Typer(help=maps.HELP, no_args_is_help=True)
app.add_typer(map_app, name="map")
cache_app = typer.Typer(help=cache.HELP, no_args_is_help=True)
app.add_typer(cache_app, name="cache")
import_app = typer.Typer(help=interop.IMPORT_HELP, no_args_is_help=True)
app.add_typer(import_app, name="import")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"liploc {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global visual localization in LiDAR maps (LIP-Loc: LiDAR-image pretraining)."""


# In the order of `liploc --help`: the commands, then the groups (map, cache, import).
app.command("info", epilog=info.EPILOG)(info.info)
app.command("synth", epilog=synth.EPILOG)(synth.synth)
app.command("train", epilog=train.EPILOG)(train.train)
app.command("evaluate", epilog=evaluate.EPILOG)(evaluate.evaluate)
map_app.command("build", epilog=maps.BUILD_EPILOG)(maps.build)
map_app.command("add", epilog=maps.ADD_EPILOG)(maps.add)
app.command("localize", epilog=localize.EPILOG)(localize.localize)
import_app.command("lip-loc", epilog=interop.IMPORT_EPILOG)(interop.import_lip_loc)
app.command("export", epilog=interop.EXPORT_EPILOG)(interop.export)
app.command("serve", epilog=serve.EPILOG)(serve.serve)
app.command("demo", epilog=demo_command.EPILOG)(demo_command.demo)
cache_app.command("warm", epilog=cache.WARM_EPILOG)(cache.warm)
cache_app.command("info", epilog=cache.INFO_EPILOG)(cache.info)
cache_app.command("clear", epilog=cache.CLEAR_EPILOG)(cache.clear)


def main() -> None:
    """Entry point for ``python -m liploc``."""
    app()


if __name__ == "__main__":
    main()
