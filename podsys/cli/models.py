"""`podsys models list`: the models layer's registered models and versions (MLflow registry)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from podsys.cli.common import console, guarded
from podsys.cli.deploy import find_manifest


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="The models add-on: MLflow's model registry on the head.", no_args_is_help=True)
    app.add_typer(models, name="models")

    @models.command("list", help="Registered models, each version with its run and the run's last metrics "
                                 "(read on the head through MLflow's REST API; no password is used or shown).")
    @guarded
    def models_list(
        manifest: Optional[Path] = typer.Argument(None, help="cluster manifest (default: ./cluster.yaml, else ./lab.yaml)"),
        as_json: bool = typer.Option(False, "--json", help="print the list as JSON"),
    ) -> None:
        from podsys.addons.models import format_metrics, list_models
        from podsys.cluster.load import load_cluster

        rows = list_models(load_cluster(find_manifest(manifest)))
        if as_json:
            print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
            return
        if not rows:
            console.print("no registered models", markup=False, highlight=False)
            return
        console.print("MODEL  VERSION  STATUS  CREATED (UTC)  RUN  USER  METRICS", markup=False, highlight=False)
        for r in rows:
            console.print(f"{r.name}  {r.version}  {r.status}  {r.created}  {r.run_name or '-'} ({r.run_id or '-'})  "
                          f"{r.user or '-'}  {format_metrics(r.metrics) or '-'}", markup=False, highlight=False)
