"""The `prism` command end to end, in process, on the embedded SQLite default."""

from __future__ import annotations

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
