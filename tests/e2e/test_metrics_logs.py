"""Metrics (/metrics, exact deltas, a strict exposition parser) and structured logs (JSON, masking)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from typing import Dict, Tuple

import psycopg
import pytest
from psycopg import errors
from support import connect, wait_until

Series = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (-?[0-9.eE+-]+|\+Inf|-Inf|NaN)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> Series:
    """A strict reader of the Prometheus text format: fails on anything malformed."""
    assert text.endswith("\n"), "exposition must end with a newline"
    types: Dict[str, str] = {}
    series: Series = {}
    for number, line in enumerate(text.splitlines(), 1):
        assert line, f"line {number}: empty line"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and help_text, f"line {number}: bad HELP: {line!r}"
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), f"line {number}: {line!r}"
            assert name not in types, f"line {number}: TYPE of {name} declared twice"
            types[name] = kind
            continue
        assert not line.startswith("#"), f"line {number}: stray comment {line!r}"
        match = _SAMPLE.match(line)
        assert match, f"line {number}: malformed sample {line!r}"
        name, labels_text, value = match.groups()
        labels = tuple(_LABEL.findall(labels_text or ""))
        if labels_text:
            rebuilt = ",".join(f'{k}="{v}"' for k, v in labels)
            assert rebuilt == labels_text, f"line {number}: malformed labels {labels_text!r}"
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"line {number}: {name} has no TYPE"
        if types[family] == "counter":
            assert name.endswith("_total"), f"line {number}: counter {name} must end in _total"
        key = (name, labels)
        assert key not in series, f"line {number}: duplicate series {key}"
        series[key] = float(value)
    # Histograms: cumulative buckets ending in +Inf equal to _count.
    for family, kind in types.items():
        if kind != "histogram":
            continue
        buckets = [(dict(labels)["le"], v) for (n, labels), v in series.items() if n == family + "_bucket"]
        assert buckets and buckets[-1][0] == "+Inf", f"{family}: no +Inf bucket"
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{family}: buckets not cumulative"
        assert series[(family + "_count", ())] == counts[-1], f"{family}: _count differs from +Inf bucket"
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0) if labels else series.get((name, ()), 0.0)


def scrape(port: int) -> Series:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_exposition(response.read().decode())


def metrics_port(proxy) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = re.search(r"event=listening .*metrics_port=(\d+)", proxy.stderr_text())
        if match:
            return int(match.group(1))
        time.sleep(0.02)
    raise AssertionError("no listening line with metrics_port: " + proxy.stderr_text())


def test_metrics_count_exactly_what_a_session_did(pgwire_proxy_process_factory, pg_upstream):
    proxy = pgwire_proxy_process_factory(metrics_address="127.0.0.1:0", max_rows=5, max_connections=2,
                                         deny=["forbidden_probe"])
    port = metrics_port(proxy)
    before = scrape(port)
    with connect(proxy) as conn:
        conn.execute("select 1")
        conn.execute("select generate_series(1, 5)")              # 5 rows, at the limit
        with pytest.raises(errors.SyntaxError):
            conn.execute("selec 1")                                # an upstream error, class 42
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 6)")           # a row-limit breach, class 54
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select 'forbidden_probe'")               # denied, class 42

        def cancel_when_running():
            wait_until(lambda: pg_upstream.execute(
                "select 1 from pg_stat_activity where query like '%metrics_cancel_probe%' "
                "and state = 'active' and pid <> pg_backend_pid()"), "the query upstream")
            conn.cancel()

        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("select pg_sleep(30) /* metrics_cancel_probe */")  # class 57
        canceller.join()
        with connect(proxy):
            with pytest.raises(psycopg.OperationalError, match="too many connections"):
                connect(proxy)                                     # rejected: the limit is 2
    wait_until(lambda: value(scrape(port), "pgwire_proxy_client_connections_active") == 0, "sessions to close")
    after = scrape(port)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pgwire_proxy_client_connections_accepted_total") == 2
    assert delta("pgwire_proxy_client_connections_rejected_total", reason="too_many_connections") == 1
    assert delta("pgwire_proxy_queries_total", outcome="ok") == 2
    assert delta("pgwire_proxy_queries_total", outcome="error") == 1
    assert delta("pgwire_proxy_queries_total", outcome="limit_rows") == 1
    assert delta("pgwire_proxy_queries_total", outcome="denied") == 1
    assert delta("pgwire_proxy_queries_total", outcome="cancelled") == 1
    assert delta("pgwire_proxy_query_duration_seconds_count") == 6
    assert delta("pgwire_proxy_rows_sent_total") == 1 + 5 + 5  # the breach sent 5 rows before stopping
    assert delta("pgwire_proxy_errors_total", sqlstate_class="42") == 2
    assert delta("pgwire_proxy_errors_total", sqlstate_class="54") == 1
    assert delta("pgwire_proxy_errors_total", sqlstate_class="57") == 1
    assert delta("pgwire_proxy_errors_total", sqlstate_class="53") == 1
    assert delta("pgwire_proxy_cancel_requests_total", result="matched") == 1
    assert delta("pgwire_proxy_upstream_connect_duration_seconds_count") == 2
    assert value(after, "pgwire_proxy_build_info", version="0.1.0") == 1


def test_idle_and_unmatched_cancels_are_counted(pgwire_proxy_process_factory):
    proxy = pgwire_proxy_process_factory(metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)
    before = scrape(port)
    with connect(proxy) as conn:
        conn.cancel()  # nothing running
        key = conn.info.backend_pid
    import socket
    import struct
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(struct.pack("!iiii", 16, 80877102, key, 0))
        assert s.recv(1) == b""
    after = scrape(port)
    assert value(after, "pgwire_proxy_cancel_requests_total", result="idle") - \
        value(before, "pgwire_proxy_cancel_requests_total", result="idle") == 1
    assert value(after, "pgwire_proxy_cancel_requests_total", result="unmatched") - \
        value(before, "pgwire_proxy_cancel_requests_total", result="unmatched") == 1


def test_metrics_endpoint_only_serves_metrics(pgwire_proxy_process_factory):
    proxy = pgwire_proxy_process_factory(metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert excinfo.value.code == 404


def test_strict_parser_rejects_malformed_expositions():
    good = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n"
    parse_exposition(good)
    for bad in ["a_total 1\n", good + "a_total 2\n", good.replace("a_total 1", "a_total one"),
                "# HELP b B.\n# TYPE b counter\nb 1\n", good.rstrip("\n")]:
        with pytest.raises(AssertionError):
            parse_exposition(bad)


def test_json_logs_carry_the_fields(pgwire_proxy_process_factory, tmp_path):
    log_file = tmp_path / "proxy.log"
    proxy = pgwire_proxy_process_factory(log_format="json", log_file=str(log_file), log_queries=True, max_rows=2)
    with psycopg.connect(proxy.dsn_with(application_name="json-probe"), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("select 1")
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 3) /* json_probe */")

    def closed_line():
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        return [e for e in lines if e["event"] == "session_closed"]

    wait_until(closed_line, "the session_closed line")
    events = [json.loads(line) for line in log_file.read_text().splitlines()]  # every line is JSON
    for event in events:
        assert {"ts", "level", "event"} <= event.keys(), event
    closed = closed_line()[0]
    for field in ("session", "client", "user", "database", "application_name", "duration_seconds", "queries",
                  "rows", "bytes", "reason"):
        assert field in closed, (field, closed)
    assert closed["application_name"] == "json-probe" and closed["queries"] == 2 and closed["rows"] == 3
    failed = [e for e in events if e["event"] == "query_failed"]
    assert failed and failed[0]["sqlstate"] == "54000" and "json_probe" in failed[0]["query"]
    assert isinstance(failed[0]["query_seconds"], float) and failed[0]["message"]
    assert any(e["event"] == "query" and e["query"] == "select 1" for e in events)


def test_the_upstream_password_is_never_logged(pgwire_proxy_process_factory, pg_upstream):
    secret = "s3cret-pw-probe"
    proxy = pgwire_proxy_process_factory(pg_upstream.dsn_with(password=secret), log_level="debug",
                                         log_queries=True)
    with connect(proxy) as conn:
        conn.execute("select 1")
    uri = f"postgresql://postgres:{secret}@127.0.0.1:{pg_upstream.port}/postgres"
    proxy_uri = pgwire_proxy_process_factory(uri, log_level="debug")
    with connect(proxy_uri) as conn:
        conn.execute("select 1")
    for p in (proxy, proxy_uri):
        log = p.stderr_text()
        assert "event=listening" in log and "********" in log, log
        assert secret not in log, log
