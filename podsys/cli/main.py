"""The `podsys` command line: a thin Typer layer. Each verb group lives in podsys/cli/<group>.py
and exposes `register(app)`; the work itself is done by the sub-packages those call."""

from __future__ import annotations

import typer

from podsys.cli import bundle, check, core, deploy, health, image, lab, layers, models, provision, upgrade

# One module per verb group, in the order `podsys --help` lists them.
COMMAND_GROUPS = (
    core,  # init, validate, render, compat
    provision,  # status, reinstall, discover, power, provision media add
    image,  # image build|list|show|rm
    lab,  # lab up|down|status|ssh|stop|start
    deploy,  # deploy
    upgrade,  # upgrade --stack NEW: rolling, gated by the acceptance checks
    bundle,  # bundle build|verify|iso|serve
    check,  # check, check parse
    health,  # health (passive node checks)
    layers,  # layers
    models,  # models list (layer models: the MLflow registry)
)

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

for group in COMMAND_GROUPS:
    group.register(app)


def build_app() -> typer.Typer:
    return app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
