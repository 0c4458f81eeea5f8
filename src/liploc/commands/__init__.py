"""The command-line commands, one module per command group; :mod:`liploc.cli` assembles them."""
