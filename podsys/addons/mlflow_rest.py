"""Collect the MLflow model registry through its REST API: every registered model, every
version of each and the run behind each version. Standard library only: `podsys models list`
sends this file to the head's python3 (the server listens on the head's loopback only) and
reads the JSON it prints, so the same code runs here in the tests against recorded answers.

Endpoints (MLflow REST API, https://mlflow.org/docs/latest/api_reference/rest-api.html):
GET /api/2.0/mlflow/registered-models/search (max_results, page_token -> next_page_token),
GET /api/2.0/mlflow/model-versions/search (filter=name='...'), GET /api/2.0/mlflow/runs/get.
An empty answer is `{}`: MLflow leaves out empty lists."""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from typing import Callable

Get = Callable[[str, dict], dict]
PAGE_SIZE = 100


def _pages(get: Get, path: str, params: dict, key: str, page_size: int) -> list[dict]:
    items: list[dict] = []
    token = None
    while True:
        page = get(path, {**params, "max_results": page_size, **({"page_token": token} if token else {})})
        items += page.get(key, [])
        token = page.get("next_page_token")
        if not token:
            return items


def quote_filter(name: str) -> str:
    """A model name as an MLflow search filter literal (single quotes; names cannot hold them
    unescaped, so escape by doubling as SQL does)."""
    return "'" + name.replace("'", "''") + "'"


def collect(get: Get, page_size: int = PAGE_SIZE) -> dict:
    """{"models": [registered model], "versions": {name: [version]}, "runs": {run id: run}}."""
    models = _pages(get, "/api/2.0/mlflow/registered-models/search", {}, "registered_models", page_size)
    versions = {m["name"]: _pages(get, "/api/2.0/mlflow/model-versions/search",
                                  {"filter": f"name={quote_filter(m['name'])}"}, "model_versions", page_size)
                for m in models}
    runs = {}
    for items in versions.values():
        for version in items:
            run_id = version.get("run_id")
            if run_id and run_id not in runs:
                runs[run_id] = get("/api/2.0/mlflow/runs/get", {"run_id": run_id}).get("run", {})
    return {"models": models, "versions": versions, "runs": runs}


def http_get(base: str) -> Get:
    def get(path: str, params: dict) -> dict:
        url = base.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as answer:
            return json.loads(answer.read().decode())
    return get


if __name__ == "__main__":
    json.dump(collect(http_get(sys.argv[1])), sys.stdout)
