"""`podsys models list`: the registered models and their versions on the cluster's MLflow.

The admin's SSH access to the head is the credential: the collector
(podsys/addons/mlflow_rest.py) runs on the head against MLflow's loopback listener
(127.0.0.1:MLFLOW_PORT), so no web password or token is read, sent or printed here; the
users' web logins (nginx basic auth on MODELS_HTTPS_PORT) stay for browsers and off-cluster
clients."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from podsys.addons import mlflow_rest
from podsys.cluster.model import Cluster
from podsys.deploy.head_exec import run_on_head
from podsys.errors import InputError, PodsysError, Problem
from podsys.layout import MLFLOW_PORT


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    status: str
    stage: str
    run_id: str
    run_name: str
    user: str
    created: str  # UTC, minutes
    metrics: dict[str, float]


def _utc(millis) -> str:
    if millis in (None, ""):
        return ""
    return datetime.fromtimestamp(int(millis) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def model_versions(collected: dict) -> list[ModelVersion]:
    """Rows from the collector's JSON, by model name then version."""
    rows = []
    runs = collected.get("runs", {})
    for name, items in collected.get("versions", {}).items():
        for item in items:
            run = runs.get(item.get("run_id") or "", {})
            info, data = run.get("info", {}), run.get("data", {})
            rows.append(ModelVersion(
                name=name, version=int(item["version"]), status=item.get("status", ""),
                stage=item.get("current_stage", ""), run_id=item.get("run_id", ""),
                run_name=info.get("run_name", ""), user=info.get("user_id", ""),
                created=_utc(item.get("creation_timestamp")),
                metrics={m["key"]: float(m["value"]) for m in data.get("metrics", [])}))
    for model in collected.get("models", []):
        if not collected.get("versions", {}).get(model["name"]):
            rows.append(ModelVersion(model["name"], 0, "no versions", "", "", "", "", _utc(model.get("creation_timestamp")), {}))
    return sorted(rows, key=lambda r: (r.name, r.version))


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{key}={value:.6g}" for key, value in sorted(metrics.items()))


def collect_on_head(cluster: Cluster) -> dict:
    if "models" not in cluster.manifest.layers:
        raise InputError(Problem(str(cluster.manifest_path), None, "layers", "layer 'models' is not enabled"))
    source = Path(mlflow_rest.__file__).read_bytes()
    out = run_on_head(cluster, f"python3 - http://127.0.0.1:{MLFLOW_PORT}", stdin=io.BytesIO(source), timeout=120)
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise PodsysError(f"the MLflow server on the head gave no registry listing: {out[:200]!r}") from None


def list_models(cluster: Cluster) -> list[ModelVersion]:
    return model_versions(collect_on_head(cluster))
