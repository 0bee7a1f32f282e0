"""The `prism` command end to end, in process, on the embedded SQLite default."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from prism.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRISM_CONFIG", raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def run_with_stdin(capsys: pytest.CaptureFixture[str], text: str, *args: str) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(text))
        return run(capsys, *args)


def test_kv_round_trip_on_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "kv", "put", "demo", "user:1", "name", "Ada", "lang", "en")[0] == 0
    assert (tmp_path / "prism-data" / "prism.db").is_file()
    status, out, _ = run(capsys, "kv", "get", "demo", "user:1")
    assert status == 0
    assert out.splitlines() == ["lang\ten", "name\tAda"]
    status, out, _ = run(capsys, "kv", "get", "demo", "user:1", "name")
    assert out.splitlines() == ["name\tAda"]
    run(capsys, "kv", "put", "demo", "user:2", "x", "y")
    status, out, _ = run(capsys, "kv", "scan", "demo")
    assert out.splitlines() == ["user:1", "user:2"]
    assert run(capsys, "kv", "delete", "demo", "user:1", "lang")[0] == 0
    _, out, _ = run(capsys, "kv", "get", "demo", "user:1")
    assert out.splitlines() == ["name\tAda"]


def test_kv_ranges_pages_and_encodings(capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "kv", "put", "--encoding", "hex", "bin", "r", "00", "aa", "ff", "bb", "0000", "cc")
    _, out, _ = run(capsys, "kv", "get", "--encoding", "hex", "bin", "r", "--start", "00", "--end", "ff")
    assert out.splitlines() == ["00\taa", "0000\tcc"]
    status, out, err = run(capsys, "kv", "get", "--encoding", "hex", "bin", "r", "--limit", "1")
    assert out.splitlines() == ["00\taa"]
    assert "--page-token" in err
    _, out, _ = run(capsys, "kv", "get", "--encoding", "hex", "bin", "r", "--limit", "1", "--all-pages")
    assert len(out.splitlines()) == 3
    status, _, err = run(capsys, "kv", "put", "--encoding", "hex", "bin", "r", "zz", "00")
    assert status == 2
    assert "not valid hex" in err


def test_kv_errors_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "kv", "put", "demo", "r", "k" * 5000, "v")
    assert status == 1
    assert "max_key_bytes" in err
    assert "Traceback" not in err
    status, _, err = run(capsys, "kv", "put", "Bad-Name", "r", "k", "v")
    assert status == 1
    assert "namespace name 'Bad-Name' is invalid" in err
    status, _, err = run(capsys, "kv", "get", "demo", "r", "--page-token", "forged.token")
    assert status == 1
    assert "page token refused" in err


def test_plan_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prism.yaml").write_text(
        "backends:\n"
        "  local: {plugin: sqlite, path: data/p.db}\n"
        "  cache: {plugin: memory}\n"
        "namespaces:\n"
        "  users: {abstraction: keyvalue, needs: {durability: durable}}\n"
        "  sessions: {abstraction: keyvalue, needs: {ttl: 30m}, backend: cache}\n"
    )
    status, out, _ = run(capsys, "plan")
    assert status == 0
    assert "users      keyvalue     local" in out
    assert "sessions   keyvalue     cache    pinned" in out
    (tmp_path / "bad.yaml").write_text("namespaces:\n  users: {abstraction: keyvalue, needs: {ttl: soon}}\n")
    status, _, err = run(capsys, "plan", "--config", "bad.yaml")
    assert status == 2
    assert "namespaces.users.needs.ttl: expected a duration like 30d" in err
    status, _, err = run(capsys, "kv", "get", "nosuch", "r")
    assert status == 1
    assert "namespace 'nosuch' is not configured" in err
    assert "sessions, users" in err


def test_plan_refusal_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prism.yaml").write_text(
        "backends: {cache: {plugin: memory}}\nnamespaces:\n  users: {abstraction: keyvalue, needs: {durability: durable}}\n"
    )
    status, out, err = run(capsys, "plan")
    assert status == 1
    assert "REFUSED" in out
    assert "cache: needs durability durable, backend is ephemeral" in err


def test_plugins_lists_builtin_and_sqlite(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "plugins")
    assert status == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert "prism-core" in rows["memory"]
    assert "prism-plugin-sqlite" in rows["sqlite"]
    assert "kv.scan" in rows["sqlite"]


def test_queue_publish_consume_ack_on_embedded_default(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "queue", "publish", "jobs", "emails", "first", "second", "--header", "h=v")
    assert status == 0, err
    ids = out.splitlines()
    assert len(ids) == 2
    assert "published 2 message(s) to jobs/emails" in err

    # Without --ack the deliveries stay leased, and the user is told how to ack.
    status, out, err = run(capsys, "queue", "consume", "jobs", "emails", "workers", "--max", "10")
    assert status == 0, err
    assert out.splitlines() == [f"{ids[0]}\t1\t\tfirst", f"{ids[1]}\t1\t\tsecond"]
    assert "prism queue ack jobs emails workers ID..." in err
    # Leased: another consume of the same group gets nothing.
    _, out, err = run(capsys, "queue", "consume", "jobs", "emails", "workers")
    assert out == ""
    assert "no messages for group 'workers'" in err
    assert run(capsys, "queue", "ack", "jobs", "emails", "workers", *ids)[0] == 0
    assert run(capsys, "queue", "ack", "jobs", "emails", "workers", *ids)[0] == 0, "acking twice is fine"

    # Another group sees every message; --ack --json acknowledges what it printed.
    status, out, err = run(capsys, "queue", "consume", "--json", "jobs", "emails", "audit", "--ack")
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["payload"], r["attempt"], r["headers"]) for r in records] == [
        (ids[0], "first", 1, {"h": "v"}),
        (ids[1], "second", 1, {"h": "v"}),
    ]
    assert "consumed and acknowledged 2 message(s)" in err
    _, out, _ = run(capsys, "queue", "consume", "jobs", "emails", "audit", "--wait", "0.2s")
    assert out == ""


def test_queue_nack_and_dead_letter(capsys: pytest.CaptureFixture[str]) -> None:
    (message_id,) = run(capsys, "queue", "publish", "jobs", "t", "poison")[1].splitlines()
    _, out, _ = run(capsys, "queue", "consume", "jobs", "t", "g")
    assert out.startswith(f"{message_id}\t1\t")
    assert run(capsys, "queue", "nack", "jobs", "t", "g", message_id)[0] == 0
    _, out, _ = run(capsys, "queue", "consume", "jobs", "t", "g")
    assert out.startswith(f"{message_id}\t2\t"), "a requeued message comes back with attempt 2"
    status, _, err = run(capsys, "queue", "nack", "--dead-letter", "jobs", "t", "g", message_id)
    assert status == 0
    assert "moved to t.dlq" in err
    _, out, _ = run(capsys, "queue", "consume", "--json", "jobs", "t.dlq", "ops", "--ack")
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["payload"] == "poison"
    assert record["headers"]["prism-dead-letter-reason"] == "nack"


def test_queue_errors_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "queue", "publish", "jobs", "t")
    assert status == 2
    assert "nothing to publish" in err
    status, _, err = run(capsys, "queue", "ack", "jobs", "t", "g", "no-such-id")
    assert status == 1
    assert "unknown delivery ids 'no-such-id'" in err
    status, _, err = run(capsys, "queue", "publish", "jobs", "bad topic!", "x")
    assert status == 1
    assert "topic name 'bad topic!' is invalid" in err
    status, _, err = run(capsys, "queue", "consume", "jobs", "t", "g", "--follow")
    assert status == 2
    assert "--follow needs --ack" in err
    status, _, err = run(capsys, "queue", "publish", "jobs", "t", "x", "--header", "novalue")
    assert status == 2
    assert "NAME=VALUE" in err
    for line in err.splitlines():
        assert "Traceback" not in line


def test_ts_write_and_read_on_embedded_default(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys, "ts", "write", "metrics", "cpu", "0.5", "--time=-2m", "--id", "a", "--tag", "host=h1"
    )
    assert status == 0, err
    assert out.splitlines()[0].endswith("\ta")
    assert "wrote 1 event(s) to metrics/cpu" in err
    status, _, err = run(capsys, "ts", "write", "metrics", "cpu", "0.7", "0.9", "--time=-1m")
    assert status == 0, err
    lines = '{"time": "-30s", "id": "j1", "payload": "1.0", "tags": {"host": "h2"}}\n'
    status, _, err = run_with_stdin(capsys, lines, "ts", "write", "metrics", "cpu", "--stdin")
    assert status == 0, err

    _, out, err = run(capsys, "ts", "read", "metrics", "cpu", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["payload"] == "0.5"
    assert records[0]["tags"] == {"host": "h1"}
    assert [r["id"] for r in records][-1] == "j1"
    assert "# 4 event(s)" in err

    # Pages: one event a page, newest first, followed to the end with --all.
    _, out, err = run(capsys, "ts", "read", "metrics", "cpu", "--order", "desc", "--limit", "1")
    assert len(out.splitlines()) == 1
    assert "--page-token" in err
    _, out, _ = run(capsys, "ts", "read", "metrics", "cpu", "--order", "desc", "--limit", "1", "--all")
    assert out.splitlines()[0].split("\t")[1] == "j1"
    assert len(out.splitlines()) == 4


def test_ts_errors_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "ts", "write", "metrics", "cpu")
    assert status == 2
    assert "nothing to write" in err
    status, _, err = run(capsys, "ts", "write", "metrics", "cpu", "x", "--time", "yesterday")
    assert status == 2
    assert "is not a time" in err
    status, _, err = run(capsys, "ts", "write", "metrics", "cpu", "x", "--time", "+1h")
    assert status == 1
    assert "timeseries.max_future_skew" in err
    status, _, err = run_with_stdin(capsys, "not json\n", "ts", "write", "metrics", "cpu", "--stdin")
    assert status == 2
    assert "--stdin line 1 is not an event" in err


def test_counter_add_get_clear_and_exact_retries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "counter", "add", "views", "home")[1] == "1\n"
    assert run(capsys, "counter", "add", "views", "home", "-5")[1] == "-4\n"
    assert run(capsys, "counter", "get", "views", "home")[1] == "-4\n"
    assert run(capsys, "counter", "clear", "views", "home")[0] == 0
    assert run(capsys, "counter", "get", "views", "home")[1] == "0\n"

    config = tmp_path / "exact.yaml"
    config.write_text(
        "backends: {local: {plugin: sqlite, path: ./exact.db}}\n"
        "namespaces: {likes: {abstraction: counter, counter: {mode: exact}}}\n"
    )
    status, out, err = run(capsys, "counter", "add", "--config", str(config), "likes", "post1", "3")
    assert (status, out) == (0, "3\n"), err
    token = err.split("# token ", 1)[1].split()[0]
    # Retrying with the printed token applies the add once.
    status, out, err = run(
        capsys, "counter", "add", "--config", str(config), "likes", "post1", "3", "--token", token
    )
    assert (status, out) == (0, "3\n"), err
    status, _, err = run(
        capsys, "counter", "add", "--config", str(config), "likes", "post1", "--token", "nope"
    )
    assert status == 2
    assert "GENERATION_MICROS:NONCE" in err
