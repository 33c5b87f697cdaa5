"""The `podsys` command line: a thin Typer layer over the other sub-packages."""
