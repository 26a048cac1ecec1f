"""Fuzz the daemon's control API from its own OpenAPI document (hypothesis strategies).

Run: .venv/bin/python -m bench.fuzz_control [--cases 100000] [--seed 1]

(hypothesis-jsonschema 0.23.1, the latest, does not work with this hypothesis
6.170: its object strategy calls an internal hypothesis API that is gone; the
document's schemas use a small set of keywords, turned into hypothesis
strategies by ``strategy_for``.)

A real ``handoffd`` process (unpaired, on a temporary home) is asked for
``GET /v1/openapi.json``; every operation in it (but the endless event stream)
is then called over the Unix socket with path parameters and bodies drawn from
the document's schemas by hypothesis, and with structure-aware
mutations of those (fields dropped or retyped, edge strings such as lone
surrogates and bidi overrides, raw bytes). Bodies that would make the daemon
reach out (a pairing server, unicast peers) are pointed at a closed loopback
port first.

Properties: no 5xx except the documented ones (502/503 for an unreachable or
misbehaving server, 507 for a full disk); every error matches the document's
``Error`` schema with a kebab-case code; every success matches the operation's
documented response schema; the daemon is still alive and answering at the end.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bench.fuzz_common import (
    INTERESTING_STRINGS,
    Report,
    dumps,
    main,
    mutate,
    mutate_json,
    random_bytes,
)
from tests.daemon.helpers import DaemonProcess

CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
DOCUMENTED_5XX = {
    502: {"server-bad-response", "server-fingerprint-mismatch"},
    503: {"server-unreachable", "server-offline"},
    507: {"store-full"},
}
CLOSED = "127.0.0.1:9"  # discard port, nothing listens: the daemon never leaves the machine
SKIP = {("/v1/events", "get")}  # an endless stream
PRINTABLE = st.characters(categories=("L", "N", "P", "S", "Zs"))
"""Free text as applications send it; the edge characters come from the mutations."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the daemon's Unix socket (keep-alive)."""

    def __init__(self, path: Path) -> None:
        super().__init__("handoff", timeout=30)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self._path)
        self.sock = sock


def inline(node: Any, doc: dict[str, Any]) -> Any:
    """The schema with every ``#/components/...`` reference replaced by its target."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target[part]
            return inline(target, doc)
        return {k: inline(v, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(v, doc) for v in node]
    return node


def _scalar(kind: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(
            PRINTABLE,
            min_size=schema.get("minLength", 0),
            max_size=min(schema.get("maxLength", 40), 300),
        )
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = strategy_for(schema.get("items", {}))
        return st.lists(
            items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 5), 5)
        )
    if kind == "object":
        return _object(schema)
    return st.none()


def _object(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    # Sorted everywhere: set order follows PYTHONHASHSEED, and the draws must not.
    branches = [set(b.get("required", [])) for b in schema.get("oneOf", [])] or [set()]
    alternatives = set().union(*branches)

    def build(branch: set[str]) -> st.SearchStrategy[dict[str, Any]]:
        must = {k: strategy_for(props.get(k, {})) for k in sorted(required | branch)}
        may = {
            k: strategy_for(v)
            for k, v in sorted(props.items())
            if k not in must and k not in alternatives
        }
        if not props and schema.get("additionalProperties", True) is not False:
            return st.dictionaries(
                st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3
            )
        return st.fixed_dictionaries(must, optional=may)

    return st.one_of([build(b) for b in branches])


def strategy_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for ``schema`` (the keywords the control API's document uses)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([strategy_for(alternative) for alternative in schema["anyOf"]])
    kind = schema.get("type")
    if kind is None:
        kind = "object" if "properties" in schema or "oneOf" in schema else None
    if kind is None:
        return (
            st.none()
            | st.integers()
            | st.text(max_size=10)
            | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)
        )
    kinds = kind if isinstance(kind, list) else [kind]
    return st.one_of([_scalar(k, schema) for k in kinds])


class Operation:
    """One method on one path of the document, with its schemas."""

    def __init__(
        self, path: str, method: str, op: dict[str, Any], params: list[Any], doc: dict[str, Any]
    ) -> None:
        self.path, self.method = path, method.upper()
        content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        self.body = inline(content["schema"], doc) if "schema" in content else None
        self.params = {
            p["name"]: inline(p.get("schema", {"type": "string"}), doc)
            for p in params
            if p.get("in") == "path"
        }
        responses = op.get("responses", {})
        ok = next((responses[s] for s in ("200", "201") if s in responses), None)
        schema = (ok or {}).get("content", {}).get("application/json", {}).get("schema")
        self.response = inline(schema, doc) if schema is not None else None
        self.error = inline({"$ref": "#/components/schemas/Error"}, doc)

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


def operations(doc: dict[str, Any]) -> list[Operation]:
    """Every operation of the document, but the skipped ones."""
    ops = []
    for path, item in doc["paths"].items():
        common = item.get("parameters", [])
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete") and (path, method) not in SKIP:
                ops.append(Operation(path, method, op, common + op.get("parameters", []), doc))
    return ops


def defuse(body: Any, op: Operation) -> Any:
    """Point anything that would make the daemon connect elsewhere at a closed loopback port."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if op.path == "/v1/pair":
        if (
            "server" in body
            or not isinstance(body.get("invite"), str)
            or "://" in body.get("invite", "")
        ):
            body["server"] = f"https://{CLOSED}"
        if isinstance(body.get("invite"), str) and (":" in body["invite"] or "@" in body["invite"]):
            body["invite"] = (
                f"handoff://pair?server=https%3A%2F%2F{CLOSED}&token="
                + urllib.parse.quote(body["invite"][-20:], errors="surrogatepass")
            )
    if "unicast_peers" in body:
        body["unicast_peers"] = ["127.0.0.1", "::1", "", "not an address"][
            : len(body["unicast_peers"]) if isinstance(body["unicast_peers"], list) else 1
        ]
    return body


def poison_strings(value: Any, rng: random.Random) -> Any:
    """Every string (keys of free-form objects too) gets an edge string added, half the time."""
    if isinstance(value, str):
        return value + rng.choice(INTERESTING_STRINGS) if rng.random() < 0.5 else value
    if isinstance(value, list):
        return [poison_strings(v, rng) for v in value]
    if isinstance(value, dict):
        return {k: poison_strings(v, rng) for k, v in value.items()}
    return value


class Target:
    """The daemon, its document and the checks."""

    def __init__(self, home: Path, report: Report) -> None:
        self.daemon = DaemonProcess(home).start()
        self.conn = UnixHTTPConnection(self.daemon.socket)
        self.report = report
        status, raw = self.request("GET", "/v1/openapi.json", None)
        if status != 200:
            raise RuntimeError(f"no OpenAPI document: {status}")
        self.doc = json.loads(raw)
        self.ops = operations(self.doc)

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One request on the keep-alive connection (reconnect once if the daemon closed it)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def check(self, op: Operation, path: str, body: bytes | None, status: int, raw: bytes) -> None:
        where = f"{op.method} {path} {(body or b'')[:150]!r} -> {status} {raw[:200]!r}"
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            self.report.finding(f"{op}-not-json", where)
            return
        if status >= 400:
            try:
                jsonschema.validate(data, op.error)
                code = str(data["error"]["code"])  # type: ignore[index]
            except (jsonschema.ValidationError, TypeError, KeyError):
                self.report.finding(f"{op}-error-shape", where)
                return
            self.report.count(f"{status}:{code}")
            if not CODE.fullmatch(code):
                self.report.finding(f"{op}-bad-code", where)
            if status >= 500 and code not in DOCUMENTED_5XX.get(status, set()):
                self.report.finding(f"{op}-{status}-{code}", where)
            return
        self.report.count(f"{status}")
        if op.response is not None:
            try:
                jsonschema.validate(data, op.response)
            except jsonschema.ValidationError as exc:
                self.report.finding(
                    f"{op}-response-not-as-documented", f"{where}: {exc.message[:200]}"
                )

    def case(self, op: Operation, params: dict[str, str], body: Any, mode: int, seed: int) -> None:
        rng = random.Random(seed)
        path = op.path
        for name, value in params.items():
            if mode == 5:
                value = rng.choice(INTERESTING_STRINGS)
            path = path.replace(
                "{" + name + "}", urllib.parse.quote(value, safe="", errors="surrogatepass")
            )
        raw: bytes | None = None
        if op.body is not None or mode == 4:
            value = defuse(body, op)
            if mode in (1, 2):
                value = defuse(mutate_json(value, rng), op)
            elif mode == 6:
                value = defuse(poison_strings(value, rng), op)
            raw = dumps(value)
            if mode == 3:
                raw = mutate(raw, rng)
            elif mode == 4:
                raw = random_bytes(rng, 200)
        status, data = self.request(op.method, path, raw)
        self.check(op, path, raw, status, data)

    def close(self) -> None:
        self.conn.close()
        self.daemon.stop()


def _fuzz_operation(target: Target, op: Operation, cases: int, seed: int) -> None:
    """``cases`` calls of ``op``; each draws its parameters, its body and a mutation mode."""
    params_s = st.fixed_dictionaries({k: strategy_for(v) for k, v in op.params.items()})
    body_s = strategy_for(op.body) if op.body is not None else st.none()

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        mode = data.draw(st.sampled_from((0, 0, 0, 1, 2, 3, 4, 5, 6, 6)))
        target.case(
            op,
            data.draw(params_s),
            data.draw(body_s),
            mode,
            data.draw(st.integers(0, 2**32)),
        )
        target.report.cases += 1

    one()


def run(cases: int, seed: int) -> Report:
    """``cases`` calls, shared out among the operations; each draws the operation's parameters
    and body, and a mutation mode."""
    report = Report("fuzz_control")
    with tempfile.TemporaryDirectory(prefix="hfuzz-") as tmp:
        target = Target(Path(tmp) / "home", report)
        started = time.monotonic()
        try:
            ops = target.ops
            # Every operation its share of the cases (a draw among them can leave one out).
            for i, op in enumerate(ops):
                share = cases // len(ops) + (1 if i < cases % len(ops) else 0)
                if share:
                    _fuzz_operation(target, op, share, seed)
            status, _ = target.request("GET", "/v1/status", None)
            if status != 200 or target.daemon.proc is None or target.daemon.proc.poll() is not None:
                report.finding("daemon-stopped-answering", f"status {status}")
        finally:
            report.seconds = time.monotonic() - started
            target.close()
    return report


if __name__ == "__main__":
    main("fuzz_control", run)
