"""The local stack's supervisor: restarts what dies, stops everything cleanly on request."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emostream.devstack import supervisor as sv
from emostream.devstack.supervisor import Program, Supervisor, read_procfile


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def run_in_thread(supervisor: Supervisor) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(supervisor.run()), daemon=True)
    thread.start()
    return thread, result


def test_a_program_that_exits_is_started_again_with_a_log_line_and_the_others_keep_running(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(sv, "FIRST_BACKOFF_SECONDS", 0.1)
    starts = tmp_path / "starts"
    flaky = Program("flaky", python(f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"))
    steady = Program("steady", python("import time; time.sleep(600)"))
    supervisor = Supervisor([flaky, steady], prefix=False)
    caplog.set_level(logging.INFO, logger="emostream.supervisor")
    thread, result = run_in_thread(supervisor)

    wait_for(lambda: starts.exists() and len(starts.read_text()) >= 3)
    steady_pid = steady.process.pid
    supervisor.request_stop()
    thread.join(30)

    assert result == [0]
    assert flaky.restarts >= 2
    assert steady.restarts == 0 and steady_pid > 0
    assert "flaky: exited with code 3" in caplog.text
    assert "starting it again in" in caplog.text


def test_the_backoff_doubles_up_to_its_limit(monkeypatch):
    monkeypatch.setattr(sv, "MAX_BACKOFF_SECONDS", 4.0)
    program = Program("p", ["true"])
    supervisor = Supervisor([program], prefix=False)
    waits = []
    for _ in range(5):
        supervisor._schedule_restart(program, now=0.0, code=1)
        waits.append(program.restart_at)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_stop_request_ends_every_program_with_sigterm_and_returns_0(tmp_path):
    marker = tmp_path / "stopped"
    code = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').write('clean'), sys.exit(0)))\n"
        "time.sleep(600)\n"
    )
    program = Program("service", python(code))
    supervisor = Supervisor([program], prefix=False)
    thread, result = run_in_thread(supervisor)
    wait_for(lambda: program.process is not None)
    time.sleep(0.5)  # the program installs its handler

    supervisor.request_stop()
    thread.join(30)

    assert result == [0]
    assert marker.read_text() == "clean"
    assert program.process.returncode == 0


def test_a_program_that_ignores_sigterm_is_killed_after_the_timeout_and_the_status_says_so():
    program = Program(
        "stubborn", python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
    )
    supervisor = Supervisor([program], prefix=False, stop_timeout=1.0)
    thread, result = run_in_thread(supervisor)
    wait_for(lambda: program.process is not None)
    time.sleep(0.5)

    supervisor.request_stop()
    thread.join(30)

    assert result == [1]
    assert program.process.returncode == -signal.SIGKILL


def test_output_lines_are_prefixed_with_the_program_name():
    out = io.StringIO()
    program = Program("ingest", python("print('one'); print('two', flush=True); import time; time.sleep(600)"))
    supervisor = Supervisor([program, Program("processor", python("import time; time.sleep(600)"))], out=out)
    thread, _ = run_in_thread(supervisor)
    wait_for(lambda: "two" in out.getvalue())
    supervisor.request_stop()
    thread.join(30)

    assert out.getvalue().splitlines()[:2] == ["ingest    | one", "ingest    | two"]


def test_programs_run_in_sessions_of_their_own_so_a_terminals_ctrl_c_reaches_only_the_supervisor():
    program = Program("service", python("import time; time.sleep(600)"))
    supervisor = Supervisor([program], prefix=False)
    thread, _ = run_in_thread(supervisor)
    wait_for(lambda: program.process is not None)
    try:
        assert os.getsid(program.process.pid) == program.process.pid != os.getsid(0)
    finally:
        supervisor.request_stop()
        thread.join(30)


def test_the_supervisor_as_a_command_exits_0_on_sigint(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"# the stack\nsleeper: {sys.executable} -c 'import time; time.sleep(600)'\n\n")
    command = subprocess.Popen(
        [sys.executable, "-m", "emostream.devstack.supervisor", str(procfile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in command.stdout:
        lines.append(line)
        if "sleeper: started" in line:
            break
    command.send_signal(signal.SIGINT)
    rest, _ = command.communicate(timeout=60)
    output = "".join(lines) + rest

    assert command.returncode == 0, output
    assert "SIGINT: stopping 1 programs" in output
    assert "Traceback" not in output


def test_a_procfile_is_read_by_name_and_mistakes_are_named(tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("ingest: python3 app.py --dev\ncrowd: python3 client_simulator.py --rate 200\n")

    assert [(p.name, list(p.argv)) for p in read_procfile(procfile, ["crowd"])] == [
        ("crowd", ["python3", "client_simulator.py", "--rate", "200"])
    ]
    assert [p.name for p in read_procfile(procfile)] == ["ingest", "crowd"]
    with pytest.raises(ValueError, match="not in .*: nope"):
        read_procfile(procfile, ["nope"])
    broken = tmp_path / "Broken"
    broken.write_text("just a command\n")
    with pytest.raises(ValueError, match="Broken:1: expected 'name: command'"):
        read_procfile(broken)


def test_nothing_to_run_is_refused():
    with pytest.raises(ValueError, match="nothing to run"):
        Supervisor([])


def test_an_unstartable_program_is_retried_not_fatal(monkeypatch, caplog):
    monkeypatch.setattr(sv, "FIRST_BACKOFF_SECONDS", 0.1)
    missing = Program("missing", [str(Path("/nonexistent/program"))])
    supervisor = Supervisor([missing], prefix=False)
    caplog.set_level(logging.INFO, logger="emostream.supervisor")
    thread, result = run_in_thread(supervisor)
    wait_for(lambda: missing.restarts >= 2)
    supervisor.request_stop()
    thread.join(30)

    assert result == [0]
    assert "missing: cannot start" in caplog.text


def test_ctrl_c_in_a_terminal_stops_the_stack_and_the_make_around_it_exits_0(tmp_path):
    """The terminal's Ctrl-C reaches the supervisor alone: make does not report an interrupted recipe."""
    import pty
    import select

    procfile = tmp_path / "Procfile"
    procfile.write_text(f"sleeper: {sys.executable} -c 'import time; print(\"up\", flush=True); time.sleep(600)'\n")
    (tmp_path / "Makefile").write_text(f"run:\n\t{sys.executable} -m emostream.devstack.supervisor {procfile}\n")
    pid, terminal = pty.fork()
    if pid == 0:  # an interactive shell with job control, as in a terminal
        os.chdir(tmp_path)
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-ic", "make --no-print-directory run; echo make-exit=$?"])
    output = b""

    def read_until(needle: bytes, timeout: float) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while needle not in output and time.monotonic() < deadline:
            if select.select([terminal], [], [], 0.1)[0]:
                try:
                    output += os.read(terminal, 4096)
                except OSError:
                    return

    read_until(b"sleeper | up", 60)
    assert b"sleeper | up" in output, output.decode(errors="replace")
    os.write(terminal, b"\x03")
    read_until(b"make-exit=", 60)
    os.waitpid(pid, 0)
    text = output.decode(errors="replace")

    assert "make-exit=0" in text, text
    assert "SIGINT: stopping 1 programs" in text
    assert "Interrupt" not in text and "Error" not in text
