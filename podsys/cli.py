"""The `podsys` command line: a thin Typer layer. Each verb lives in podsys/commands/<verb>.py
and exposes `register(app)`; the work itself is done by the modules those call."""

from __future__ import annotations

import importlib

import typer

# One module per verb group; each module's register(app) adds its commands.
COMMAND_MODULES = [
    "podsys.commands.core",  # init, validate, render, compat
    "podsys.commands.provision",  # status, reinstall, discover, power, provision media add
    "podsys.commands.lab",  # lab up|down|status|ssh|stop|start
    "podsys.commands.deploy",  # deploy
    "podsys.commands.bundle",  # bundle build|verify|iso|serve
    "podsys.commands.check",  # check, check parse
]

app = typer.Typer(
    name="podsys",
    help=(
        "Deploy a GPU cluster from one manifest.\n\n"
        "Typical flow on the head node: `podsys init` (write cluster.yaml), edit it, "
        "`podsys validate`, `podsys render --diff`, `podsys deploy`, `podsys check`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

_registered = False


def build_app() -> typer.Typer:
    global _registered
    if not _registered:
        for name in COMMAND_MODULES:
            importlib.import_module(name).register(app)
        _registered = True
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
