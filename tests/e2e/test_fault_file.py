"""The binary's fault rules: --faults FILE, re-read on SIGHUP (also run against the sanitizer builds)."""

from __future__ import annotations

import re
import signal

import psycopg
import pytest
from psycopg import errors

import wire
from support import wait_until


def test_faults_file_and_sighup_reload(pgwire_proxy_process_factory, tmp_path):
    rules = tmp_path / "faults.rules"
    # 'file_probe' has no count: it fires on every match, so only a reload can make it stop.
    rules.write_text("# retry testing\n"
                     "match=^select 'file_probe'; action=error; sqlstate=40001; message=from the file\n"
                     "match=^select 'once_probe'; nth=1; action=error; sqlstate=40001; message=once from the file\n")
    proxy = pgwire_proxy_process_factory(faults=str(rules))
    with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        for _ in range(3):  # still firing on every match before the reload
            with pytest.raises(errors.SerializationFailure, match="from the file"):
                conn.execute("select 'file_probe'")
        with pytest.raises(errors.SerializationFailure, match="once from the file"):
            conn.execute("select 'once_probe'")
        assert conn.execute("select 'once_probe'").fetchone() == ("once_probe",)  # nth=1: once only
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        # The new file drops 'file_probe', adds a notice rule and keeps the nth=1 rule, whose count
        # starts over with the reload.
        rules.write_text("match=reloaded_probe; action=notice; message=reloaded rule\n"
                         "match=^select 'once_probe'; nth=1; action=error; sqlstate=40001; message=once again\n")
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: conn.execute("select 'reloaded_probe'") and notices, what="the reloaded rule")
        assert notices[0] == "reloaded rule"
        # The every-match rule is gone: nothing but the reload can explain that it no longer fires.
        for _ in range(3):
            assert conn.execute("select 'file_probe'").fetchone() == ("file_probe",)
        with pytest.raises(errors.SerializationFailure, match="once again"):
            conn.execute("select 'once_probe'")
        assert conn.execute("select 'once_probe'").fetchone() == ("once_probe",)


def test_a_bad_faults_file_is_refused_at_start(pgwire_proxy_process_factory, tmp_path):
    rules = tmp_path / "bad.rules"
    rules.write_text("match=x; action=error\n")
    with pytest.raises(RuntimeError, match=r"bad.rules:1: fault: an error needs a message"):
        pgwire_proxy_process_factory(faults=str(rules))


def test_every_action_through_the_binary(pgwire_proxy_process_factory, tmp_path):
    # The same session paths as test_fault_injection.py, here through the binary so that the
    # sanitizer runs (scripts/sanitize.sh) cover them.
    rules = tmp_path / "all.rules"
    rules.write_text(
        "match=drop_rows_probe; action=drop; when=after_rows; rows=3\n"
        "match=mid_probe; action=drop; when=mid_message\n"
        "match=fatal_after_probe; action=error; when=after; severity=FATAL; sqlstate=57P01; message=bye\n"
        "match=hold_probe; action=delay; when=first_row; delay=200ms\n"
        "match=hold_query_probe; action=delay; delay=200ms\n"
        "match=block_probe; action=error; sqlstate=40001; message=serialization (file)\n")
    proxy = pgwire_proxy_process_factory(faults=str(rules))
    with wire.RawConnection(proxy.host, proxy.port, timeout=20) as conn:
        conn.startup({"user": "postgres", "database": "postgres"})
        conn.send(wire.query("select g, 'drop_rows_probe' from generate_series(1, 50000) g"))
        assert wire.kinds(conn.read_until_eof()) == "TDDD"
    with wire.RawConnection(proxy.host, proxy.port, timeout=20) as conn:
        conn.startup({"user": "postgres", "database": "postgres"})
        conn.send(wire.query("select 'mid_probe' as a_long_enough_column_name"))
        with pytest.raises(wire.ProtocolError, match="EOF inside message"):
            conn.read_until_eof()
    with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.execute("select 'hold_probe'").fetchone() == ("hold_probe",)
        assert conn.execute("select 'hold_query_probe'").fetchone() == ("hold_query_probe",)
        conn.execute("begin")
        with pytest.raises(errors.SerializationFailure):
            conn.execute("select 'block_probe'")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.execute("rollback")
        with pytest.raises(psycopg.OperationalError, match="bye"):
            conn.execute("select 'fatal_after_probe'")
    with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_sighup_reports_faults_only_when_the_file_changed(pgwire_proxy_process_factory, tmp_path):
    rules = tmp_path / "faults.rules"
    rules.write_text("match=^select 'kept_probe'; nth=1; action=error; sqlstate=40001; message=once\n")
    proxy = pgwire_proxy_process_factory(faults=str(rules))

    def reloads():
        return re.findall(r"event=reloaded .*", proxy.stderr_text())

    with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(errors.SerializationFailure, match="once"):
            conn.execute("select 'kept_probe'")
        # The same file: nothing changed, so nothing is reported and the rule keeps its count (nth=1
        # has fired; replacing the rules would arm it again).
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: len(reloads()) == 1, what="the first reload")
        assert "changed=none" in reloads()[0], reloads()
        assert conn.execute("select 'kept_probe'").fetchone() == ("kept_probe",)
        # A changed file is reported and replaces the rules.
        rules.write_text("match=^select 'kept_probe'; nth=1; action=error; sqlstate=40001; message=new\n")
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: len(reloads()) == 2, what="the second reload")
        assert "changed=faults" in reloads()[1], reloads()
        with pytest.raises(errors.SerializationFailure, match="new"):
            conn.execute("select 'kept_probe'")
