"""An artifact name is a label, never a path: hostile names are stored and read back verbatim, and write nowhere else."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_workbench.errors import ArtifactError, NotFound
from mlops_workbench.tracking import get_run, start_run

HOSTILE = [
    "../../etc/passwd",
    "/etc/passwd",
    "../../../../../../../../../../etc/passwd",
    "/tmp/mlwb-hostile-absolute.txt",
    "C:\\Windows\\system32\\passwd",
    "..",
    ".",
    "../",
    "a/../../b",
    "a\0b",
    "\0",
    "\\0",          # backslash-zero, not NUL: must not be confused with the escaped NUL
    "a\\\0b\\",
    "n" * 10_000,
    "line1\nline2\r\nline3",
    "tab\tand space ",
    " ",
    "ünïcödé ☃ 日本語 🚀",
    "\u202egnp.exe",  # right-to-left override
    "passwd",
    "~/.ssh/authorized_keys",
    "$HOME/x",
    "%s%n",
    "'; DROP TABLE mlwb_artifacts; --",
]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture
def watched(ws, tmp_path, monkeypatch):
    "The workspace, with the current folder in tmp_path and a snapshot of every file around it."
    monkeypatch.chdir(tmp_path)
    area = tmp_path.parent  # this session's temporary folders, the workspace among them
    before = files_under(area)
    etc_passwd = Path("/etc/passwd").read_bytes()
    keys = Path.home()/".ssh"/"authorized_keys"
    keys_before = keys.read_bytes() if keys.exists() else None
    absolute = Path("/tmp/mlwb-hostile-absolute.txt")
    assert not absolute.exists()
    yield ws
    created = files_under(area) - before
    outside = [p for p in created if not p.resolve().is_relative_to(ws.state_dir.resolve())]
    assert outside == []
    assert [p for p in created if p.name == "passwd"] == []
    assert [p for p in files_under(area) if p.name == "passwd"] == []
    assert Path("/etc/passwd").read_bytes() == etc_passwd
    assert not absolute.exists()
    assert (keys.read_bytes() if keys.exists() else None) == keys_before


def test_hostile_names_round_trip(watched):
    payloads = {name: f"payload {i}: {name[:50]}".encode("utf-8") for i, name in enumerate(HOSTILE)}
    with start_run("hostile") as run:
        for name, data in payloads.items():
            run.log_artifact(data, name=name)
        run.log_text("text under a hostile name", "../../etc/passwd.txt")
    got = get_run(run.id)
    assert list(got.artifacts["name"]) == [*HOSTILE, "../../etc/passwd.txt"]
    for name, data in payloads.items():
        assert got.load_artifact(name) == data, repr(name[:60])
        path = got.artifact_path(name)
        assert path.resolve().is_relative_to(watched.artifact_root) and path.read_bytes() == data
    assert got.load_artifact("../../etc/passwd.txt") == "text under a hostile name"
    # names that differ only in what an escape could blur stay apart
    assert got.load_artifact("a\0b") != got.load_artifact("\\0") != got.load_artifact("\0")
    with pytest.raises(NotFound):
        got.load_artifact("etc/passwd")
    with pytest.raises(NotFound):
        got.load_artifact("n" * 9_999)


@pytest.fixture
def sources(tmp_path):
    "A file and a folder to log, made before `watched` takes its snapshot."
    src = tmp_path/"src"
    (src/"sub").mkdir(parents=True)
    (src/"sub"/"f.txt").write_text("inside")
    (tmp_path/"one.txt").write_text("one")
    return tmp_path/"one.txt", src


def test_hostile_file_and_folder_names(sources, watched):
    "A file or folder logged under a hostile name: the name is kept, the file is copied into the blob store."
    one, src = sources
    with start_run("hostile") as run:
        run.log_artifact(one, name="/etc/passwd")
        run.log_artifact(src, name="../../..")
    got = get_run(run.id)
    assert list(got.artifacts["name"]) == ["/etc/passwd", "../../../sub/f.txt"]
    assert got.load_artifact("/etc/passwd") == b"one"
    assert got.load_artifact("../../../sub/f.txt") == b"inside"


def test_invalid_names_are_refused(watched):
    with start_run("hostile") as run:
        for bad in ("\udc80", "ok\ud800", ""):
            with pytest.raises(ArtifactError):
                run.log_artifact(b"x", name=bad)
            with pytest.raises(ArtifactError):
                run.log_text("x", bad)
        with pytest.raises(ArtifactError):
            run.log_artifact(b"x")  # bytes need a name
        with pytest.raises(ArtifactError):
            run.log_artifact(b"x", name=None)  # type: ignore[arg-type]
        with pytest.raises(ArtifactError):
            run.log_artifact("/no/such/file/anywhere")
        with pytest.raises(ArtifactError):
            run.load_artifact("\udc80")
    assert get_run(run.id).artifacts.empty
    blobs = watched.artifact_root/"blobs"
    assert not blobs.exists() or list(blobs.rglob("*")) == []


def test_same_bytes_are_one_blob(ws):
    data = os.urandom(4096)
    with start_run("dedup") as a:
        a.log_artifact(data, name="first")
        a.log_artifact(data, name="second")
    with start_run("dedup") as b:
        b.log_artifact(data, name="../elsewhere")
    blobs = [p for p in (ws.artifact_root/"blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1 and blobs[0].read_bytes() == data
    assert a.artifact_path("first") == a.artifact_path("second") == b.artifact_path("../elsewhere") == blobs[0]
    assert [p for p in (ws.artifact_root/"tmp").iterdir()] == []  # no leftovers from the copies
    assert set(a.artifacts["sha256"]) == set(b.artifacts["sha256"]) == {blobs[0].parent.name + blobs[0].name}


def test_missing_blob_is_an_artifact_error(sqlite_ws):
    with start_run("gone") as run:
        run.log_artifact(b"soon gone", name="x")
    path = run.artifact_path("x")
    path.chmod(0o644)
    path.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        run.load_artifact("x")


def test_arbitrary_names_round_trip(sqlite_ws):
    run = start_run("property")
    seen: dict[str, bytes] = {}

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(name=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1), data=st.binary(max_size=64))
    def check(name, data):
        run.log_artifact(data, name=name)
        seen[name] = data
        assert run.load_artifact(name) == data
        assert name in set(run.artifacts["name"])

    check()
    run.end()
    arts = get_run(run.id).artifacts
    assert sorted(arts["name"]) == sorted(seen)
    for name, data in seen.items():
        assert get_run(run.id).load_artifact(name) == data
