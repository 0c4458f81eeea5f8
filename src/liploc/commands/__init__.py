"""The command-line commands, one module per command group; :mod:`liploc.cli` assembles them.

::

    info.py           liploc info (and the dataset description it prints)
    synth.py          liploc synth (the work: liploc.synth.command)
    train.py          liploc train
    evaluate.py       liploc evaluate
    maps.py           liploc map build
    localize.py       liploc localize
    interop.py        liploc import lip-loc, liploc export
    serve.py          liploc serve
    demo_command.py   liploc demo (its pipeline: demo.py)
    cache.py          liploc cache warm|info|clear
    options.py        argument checks and the options several commands share
    _common.py        the consoles and the one error handler, reported_errors

A command module holds the typer function with its options, help and examples, and imports its
library inside that function: importing every command module, as the CLI does on each start,
loads neither torch nor numpy, so that a mistyped argument is refused at once.
"""
