"""`builder build` wiring, its offline failure, and the example CI workflow (no VM boots here)."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import pytest
import yaml

from builder.cli import build_parser, main
from builder.summary import StageResult, exit_code

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "verify.yml"
# Plain system commands a workflow step may use besides the project's own scripts and builder.
SYSTEM_COMMANDS = {"echo", "tee", "sudo", "test", "mkdir", "ls", "cat", "udevadm", "chmod"}


def test_build_loads_the_model_once_and_renders_once(
    write_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One build context for every stage: the model is loaded and the seed rendered exactly once."""
    import builder.pipeline as pipeline

    calls = {"load": 0, "render": 0}
    real_load, real_render = pipeline.load_model_with_warnings, pipeline.render_host

    def counting_load(*a, **k):  # type: ignore[no-untyped-def]
        calls["load"] += 1
        return real_load(*a, **k)

    def counting_render(*a, **k):  # type: ignore[no-untyped-def]
        calls["render"] += 1
        return real_render(*a, **k)

    monkeypatch.setattr(pipeline, "load_model_with_warnings", counting_load)
    monkeypatch.setattr(pipeline, "render_host", counting_render)
    monkeypatch.setenv("BUILDER_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "not-an-iso.iso"
    base.write_bytes(b"x" * 4096)
    out = tmp_path / "out"
    rc = main(["build", "--out", str(out), "--base", str(base), "--no-pin-check", "--skip", "packer",
               "--skip", "verify"])
    assert rc == 2  # the iso stage refuses a file that is no ISO, after validate and render ran
    assert calls == {"load": 1, "render": 1}
    table = capsys.readouterr().out.split("Stages:")[1]
    assert " validate  ok" in table and " render    ok" in table and " iso       failed" in table
    assert (out / "prometheus" / "first-boot" / "user-data").is_file()
    assert (out / "prometheus" / "build-summary.json").is_file()


def test_build_with_a_read_only_out_still_prints_the_stage_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    if os.geteuid() == 0:
        # root ignores directory permissions: make --out a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("")
        out = blocker / "out"
    else:
        out = tmp_path / "ro"
        out.mkdir(mode=0o555)
    rc = main(["build", "--out", str(out), "--skip", "pxe", "--skip", "packer", "--skip", "verify"])
    captured = capsys.readouterr()
    assert rc == 2
    table = captured.out.split("Stages:")[1]
    assert " validate  ok" in table and " render    failed" in table and " iso       not run" in table
    assert "Traceback" not in captured.err + captured.out


def test_summary_table_collapses_big_folders_but_json_keeps_every_file() -> None:
    from builder.summary import Artifact, summary_text, table_rows

    arts = [Artifact("h/h.iso", 10, "a" * 64)] + [Artifact(f"h/pxe/mods/m{i:02}.mod", 1, f"{i:064}")
                                                 for i in range(30)]
    rows = table_rows(arts)
    assert [r.path for r in rows] == ["h/h.iso", "h/pxe/mods/ (30 files)"]
    assert rows[1].size == 30 and len(rows[1].sha256) == 64
    text = summary_text([StageResult("iso", "ok", 1.0)], arts)
    assert "Artifacts (SHA-256; 31 files, each listed in build-summary.json):" in text.splitlines()
    assert "a" * 64 + "  h/h.iso" in text


def test_exit_code_is_the_first_failure() -> None:
    ok = StageResult("validate", "ok")
    assert exit_code([ok, StageResult("verify", "skipped")]) == 0
    assert exit_code([ok, StageResult("verify", "failed", detail="3 check(s) failed", code=1)]) == 1
    assert exit_code([ok, StageResult("packer", "failed", detail="packer build failed", code=3),
                      StageResult("verify", "failed", code=1)]) == 3
    assert exit_code([ok, StageResult("iso", "failed", detail="cannot download", code=2)]) == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_build_offline_without_base_stops_at_iso_naming_base(
    write_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import default_model_data

    data = default_model_data()
    url = f"http://127.0.0.1:{_closed_port()}/ubuntu"  # nothing listens: same as being offline
    data["os"]["iso"]["url"] = f"{url}/{data['os']['iso']['name']}"
    data["os"]["iso"]["sha256sums_url"] = f"{url}/SHA256SUMS"
    model = write_model(data)
    monkeypatch.setenv("BUILDER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["build", "--host", str(model), "--out", str(out)]) == 2
    text = capsys.readouterr().out
    assert "not reachable (offline?)" in text
    assert "--base" in text and "--allow-standin" in text
    table = text.split("Stages:")[1]
    assert " iso       failed" in table
    for later in ("pxe", "packer", "verify"):
        assert f" {later:<9} not run" in table
    assert not (out / "prometheus" / "prometheus-autoinstall.iso").exists()
    assert (out / "prometheus" / "build-summary.json").is_file()


def _commands(script: str) -> list[list[str]]:
    """Simple commands of a `run:` script (split on newlines, &&, ||, ;, |), env assignments removed."""
    script = script.replace("\\\n", " ")
    cmds = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for tok in [*lexer, ";"]:
            if tok in ("&&", "||", ";", "|", ">>", ">", "<"):
                if current:
                    cmds.append(current)
                current = [] if tok in ("&&", "||", ";", "|") else ["<redirect>"]
            elif current == ["<redirect>"]:
                current = []
            else:
                current.append(tok)
    return [c for c in cmds if c and c != ["<redirect>"]]


def _check_command(cmd: list[str], parser) -> None:  # noqa: ANN001
    while cmd and "=" in cmd[0] and not cmd[0].startswith(("-", ".", "/")):
        cmd = cmd[1:]  # VAR=value prefix
    if cmd and cmd[0] == "sudo":
        cmd = [c for c in cmd[1:] if not c.startswith("-")]
    assert cmd, "empty command"
    prog = cmd[0]
    if prog == ".venv/bin/builder":
        parser.parse_args(cmd[1:])  # unknown subcommand or option: SystemExit fails the test
    elif prog == ".venv/bin/python":
        assert cmd[1] == "-c", cmd
        if "from builder" in cmd[2]:
            module = cmd[2].split("from ", 1)[1].split()[0]
            __import__(module)
    elif prog.startswith("./"):
        path = REPO / prog
        assert path.is_file(), f"{prog} does not exist in the project"
        assert path.stat().st_mode & 0o111, f"{prog} is not executable"
    else:
        assert prog in SYSTEM_COMMANDS, f"unexpected command in the workflow: {prog}"


def test_example_workflow_is_valid_and_calls_only_existing_commands() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert doc["name"] and doc["jobs"]
    triggers = doc.get("on", doc.get(True))  # PyYAML (YAML 1.1) reads the key `on` as True
    assert "workflow_dispatch" in triggers
    parser = build_parser()
    seen_builder = set()
    uses = []
    for job in doc["jobs"].values():
        assert job["runs-on"]
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), step
            if "uses" in step:
                uses.append(step["uses"].split("@")[0])
                continue
            for cmd in _commands(step["run"]):
                _check_command(cmd, parser)
                if cmd[0] == ".venv/bin/builder":
                    seen_builder.add(cmd[1])
    assert {"validate", "render", "iso", "verify"} <= seen_builder
    assert "actions/cache" in uses and "actions/checkout" in uses
    assert "./scripts/install-deps" in WORKFLOW.read_text()


def test_workflow_checker_catches_unknown_commands() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        _check_command([".venv/bin/builder", "frobnicate"], parser)
    with pytest.raises(SystemExit):
        _check_command([".venv/bin/builder", "iso", "--no-such-flag"], parser)
    with pytest.raises(AssertionError):
        _check_command(["./scripts/no-such-script"], parser)
    with pytest.raises(AssertionError):
        _check_command(["make", "all"], parser)
    assert _commands('A=1 ./x && echo "a b" >> "$F" | tee y') == [["A=1", "./x"], ["echo", "a b"], ["tee", "y"]]
