"""MLflow tracking for the podsys training template: parameters, metrics and the final model of
a run, when the `models` layer is on (training.env then sets MLFLOW_TRACKING_URI and the
site certificate in MLFLOW_TRACKING_SERVER_CERT_PATH, and the job runs the node's MLflow
client python). Without MLFLOW_TRACKING_URI, or without the mlflow package, every call does
nothing: the template trains the same with or without the layer.

A requeued job continues the same MLflow run: its id is kept next to the checkpoints.
The final model is the trained state_dict (model/model.pt) registered as a version of
`model_name` (MLflow client API: mlflow.start_run, log_params, log_metrics, log_artifact,
MlflowClient.create_model_version; https://mlflow.org/docs/latest/python_api/mlflow.html)."""

from __future__ import annotations

import os
from pathlib import Path

RUN_ID_FILE = "mlflow-run-id"


class Tracker:
    def __init__(self, state_dir: Path, run_name: str, params: dict) -> None:
        self.mlflow = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        try:
            import mlflow
        except ImportError:
            print("MLFLOW_TRACKING_URI is set but mlflow is not installed: not tracking", flush=True)
            return
        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "podsys-training"))
        id_file = state_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        if run_id is None:
            id_file.write_text(self.run.info.run_id + "\n")
            mlflow.log_params(params)
        print(f"mlflow run {self.run.info.run_id} at {os.environ['MLFLOW_TRACKING_URI']}", flush=True)

    def metrics(self, step: int, values: dict) -> None:
        if self.mlflow is not None:
            self.mlflow.log_metrics(values, step=step)

    def finish(self, model_file: Path, model_name: str) -> None:
        if self.mlflow is None:
            return
        self.mlflow.log_artifact(str(model_file), artifact_path="model")
        # The registry's own calls: mlflow.register_model in MLflow 3 wants a LoggedModel
        # (mlflow.<flavor>.log_model) under the run, while a plain state_dict is what the
        # template writes and what a resumed job reloads.
        client = self.mlflow.MlflowClient()
        if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
            client.create_registered_model(model_name)
        version = client.create_model_version(model_name, source=self.mlflow.get_artifact_uri("model"),
                                              run_id=self.run.info.run_id)
        print(f"registered model {model_name} version {version.version} run {self.run.info.run_id}", flush=True)
        self.mlflow.end_run()
