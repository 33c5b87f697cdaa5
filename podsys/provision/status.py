"""Install status service on the head: receives installer callbacks, serves a status page and
each node's iPXE script.

  GET|POST /api/v1/callback?event=start|stage|finish|fail&stage=..&message=..[&host_keys=..]
      from the installers (curl / wget / iPXE). The node is the caller's address; a caller whose
      address is not a manifest node's provision IP gets 403 and nothing is recorded. host_keys
      (the deploy ramdisk's new SSH host keys, `<type> <base64>` a line) replaces the node's
      keys; a value that is not strictly that gets 400 and nothing is recorded.
  POST /api/v1/webhook   Subiquity's reporting webhook (JSON events) -> stages.
  GET  /api/v1/status    every node's record as JSON.
  GET  /api/v1/boot/<mac>.ipxe   the node's iPXE script for its boot state (install or local),
      made from the node table (podsys.provision.boot_scripts); nginx forwards the boot tree's
      ipxe/nodes/ here. A MAC that is not a PXE node of the manifest gets 404 and no script.
  GET  /                 read-only HTML table that refreshes itself.

Stdlib only (http.server): the provision role runs it on the head as
`python3 -m podsys.provision.status --nodes nodes.json --state-dir ...`."""

from __future__ import annotations

import argparse
import html
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from podsys.provision.boot_scripts import BootTable, load_boot_table
from podsys.provision.state import (
    EVENTS,
    StateError,
    StateStore,
    duration_seconds,
    format_duration,
    load_nodes_file,
    parse_host_keys,
)

COLUMNS = ("node", "boot", "state", "stage", "started", "finished", "duration", "message")
MAX_BODY = 64 * 1024
BOOT_PREFIX = "/api/v1/boot/"


def status_rows(store: StateStore) -> list[dict]:
    """One row per node, in manifest order: what the table, the page and --json show."""
    rows = []
    for name, rec in store.records().items():
        rows.append({
            "node": name,
            "ip": store.nodes[name].ip,
            "boot": rec["boot"],
            "state": rec["state"],
            "stage": rec.get("stage") or "",
            "started": rec.get("started") or "",
            "finished": rec.get("finished") or "",
            "duration": format_duration(duration_seconds(rec)),
            "message": rec.get("message") or "",
            "host_keys": list(rec.get("host_keys") or []),
        })
    return rows


def summary(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


def render_html(cluster: str, rows: list[dict], refresh_s: int = 10) -> str:
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary(rows).items()))
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join(
        f'<tr class="{html.escape(r["state"])}">' + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in COLUMNS) + "</tr>"
        for r in rows
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"refresh\" content=\"{refresh_s}\">"
        f"<title>podsys install status: {html.escape(cluster)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        ".installed{background:#dfd}.failed{background:#fdd}.installing{background:#ffd}</style>"
        f"</head><body><h1>Install status: {html.escape(cluster)}</h1><p>{html.escape(counts)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )


def webhook_event(payload: dict) -> tuple[str, str, str]:
    """Subiquity/curtin reporting event -> (event, stage, message). Only the installer's own
    failure handling (error-commands) marks a node failed; a FAIL event is recorded as a message."""
    name = str(payload.get("name", ""))[:120]
    description = str(payload.get("description", ""))[:200]
    result = str(payload.get("result", ""))
    message = f"{result}: {description}" if result == "FAIL" else description
    return "stage", name, message


def form_fields(text: str) -> dict[str, str]:
    """A query string or form body -> {field: its last value}. Blank values are kept: an empty
    `host_keys=` is a malformed report to refuse, not a report without keys."""
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


class StatusHandler(BaseHTTPRequestHandler):
    server: "StatusServer"
    server_version = "podsys-status"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        if not self.server.quiet:
            sys.stderr.write(f"{self.client_address[0]} {format % args}\n")

    def _send(self, code: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _caller(self) -> str | None:
        return self.server.store.node_for_address(self.client_address[0])

    def _record(self, event: str, stage: str, message: str, host_keys: str | None = None) -> None:
        node = self._caller()
        if node is None:
            self._send(403, f"refused: {self.client_address[0]} is not a node of this cluster\n")
            return
        if event not in EVENTS:
            self._send(400, f"unknown event {event!r}; expected one of {', '.join(EVENTS)}\n")
            return
        try:
            keys = None if host_keys is None else parse_host_keys(host_keys)
        except ValueError as exc:
            self._send(400, f"{exc}\n")
            return
        try:
            rec = self.server.store.record_event(node, event, stage, message, host_keys=keys)
        except StateError as exc:
            self._send(500, f"{exc}\n")
            return
        self._send(200, f"ok {node} {rec['state']} {rec['stage']}\n")

    def _callback(self, query: dict[str, str]) -> None:
        self._record(query.get("event", ""), query.get("stage", ""), query.get("message", ""), query.get("host_keys"))

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, MAX_BODY)) if length > 0 else b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if url.path == "/api/v1/callback":
            self._callback(form_fields(url.query))
        elif url.path == "/api/v1/status":
            rows = status_rows(self.server.store)
            self._send(200, json.dumps({"cluster": self.server.cluster, "nodes": rows}, indent=2) + "\n",
                       "application/json")
        elif url.path.startswith(BOOT_PREFIX):
            self._boot_script(url.path[len(BOOT_PREFIX):])
        elif url.path in ("/", "/index.html"):
            self._send(200, render_html(self.server.cluster, status_rows(self.server.store), self.server.refresh_s),
                       "text/html; charset=utf-8")
        else:
            self._send(404, "not found\n")

    def _boot_script(self, file_name: str) -> None:
        table = self.server.boot_table
        name = table.node_for_mac(file_name[:-len(".ipxe")]) if table and file_name.endswith(".ipxe") else None
        if name is None or name not in self.server.store.nodes:
            self._send(404, f"no boot script: {file_name} is not a PXE node of this cluster\n")
            return
        try:
            script = table.script(name, self.server.store.boot_state(name))
        except (StateError, ValueError) as exc:
            self._send(500, f"{exc}\n")
            return
        self._send(200, script)

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        body = self._body()
        if url.path == "/api/v1/callback":
            self._callback({**form_fields(url.query), **form_fields(body.decode(errors="replace"))})
        elif url.path == "/api/v1/webhook":
            if self._caller() is None:
                self._send(403, f"refused: {self.client_address[0]} is not a node of this cluster\n")
                return
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                self._send(400, "body is not JSON\n")
                return
            if not isinstance(payload, dict):
                self._send(400, "expected a JSON object\n")
                return
            self._record(*webhook_event(payload))
        else:
            self._send(404, "not found\n")

    def _read_only(self) -> None:
        self._send(405, "method not allowed\n")

    do_PUT = do_DELETE = do_PATCH = _read_only  # noqa: N815


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: StateStore, cluster: str,
                 refresh_s: int = 10, quiet: bool = False, boot_table: BootTable | None = None):
        self.store = store
        self.boot_table = boot_table  # None: no boot scripts served (every MAC gets 404)
        self.cluster = cluster
        self.refresh_s = refresh_s
        self.quiet = quiet
        super().__init__(address, StatusHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podsys-provision-status", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", required=True, type=Path, help="rendered provision/nodes.json")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        nodes, default = load_nodes_file(args.nodes)
        cluster = json.loads(args.nodes.read_text()).get("cluster", "")
        boot_table = load_boot_table(args.nodes)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.nodes}: {exc}", file=sys.stderr)
        return 2
    store = StateStore(args.state_dir, None, nodes, default)
    server = StatusServer((args.listen, args.port), store, cluster, quiet=args.quiet, boot_table=boot_table)
    print(f"podsys status service for {cluster} on http://{args.listen}:{args.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
