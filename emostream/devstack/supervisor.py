"""Keeps a few long-running programs alive on one machine: the local stack's supervisor.

``bin/run`` runs the Procfile with it and ``bin/ingest-pool`` its ingest instances. Each program
runs in a session of its own, so a Ctrl-C in the terminal reaches only the supervisor, which
then asks every program to stop with SIGTERM, waits for their own clean shutdowns (ingest
flushes its buffer, the processor stops its query) and exits 0. A program that exits on its own
is started again after a backoff that doubles up to a limit and resets once the program has
stayed up for a while; one service dying never takes the stack down. A second Ctrl-C kills
what is still running.

    python -m emostream.devstack.supervisor Procfile [NAME ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from emostream.processes import parent_death_signal

log = logging.getLogger("emostream.supervisor")

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 60.0  # up this long, a program's next restart waits the first backoff again
STOP_TIMEOUT_SECONDS = 60.0


@dataclass
class Program:
    """One command to keep running, under ``name``."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF_SECONDS
    restart_at: float | None = None
    restarts: int = 0


def read_procfile(path: Path, names: Iterable[str] = ()) -> list[Program]:
    """``name: command`` lines (comments and blank lines skipped); only ``names`` when given."""
    programs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        if not colon or not name.strip() or not command.strip():
            raise ValueError(f"{path}:{number}: expected 'name: command', got {line!r}")
        programs.append(Program(name.strip(), shlex.split(command)))
    wanted = list(names)
    unknown = set(wanted) - {p.name for p in programs}
    if unknown:
        raise ValueError(f"not in {path}: {', '.join(sorted(unknown))} (it has {', '.join(p.name for p in programs)})")
    return [p for p in programs if not wanted or p.name in wanted]


class Supervisor:
    """Starts ``programs``, restarts those that exit, stops them all on SIGINT or SIGTERM.

    With ``prefix`` each output line of a program is written to ``out`` behind its name, as a
    Procfile runner does; without it programs share the supervisor's own output.
    """

    def __init__(
        self,
        programs: Sequence[Program],
        cwd: Path | None = None,
        prefix: bool = True,
        out: IO[str] | None = None,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
    ):
        if not programs:
            raise ValueError("nothing to run")
        self.programs = list(programs)
        self.cwd = cwd
        self.prefix = prefix
        self.out = out or sys.stdout
        self.stop_timeout = stop_timeout
        self._stop = threading.Event()
        self._kill = threading.Event()
        self._write_lock = threading.Lock()
        self._width = max(len(p.name) for p in self.programs)
        self._preexec = parent_death_signal()

    # ------------------------------------------------------------------ running

    def request_stop(self, signum: int | None = None, _frame: object = None) -> None:
        if self._stop.is_set():
            self._kill.set()  # a second Ctrl-C: no more waiting
            return
        if signum is not None:
            log.info("%s: stopping %d programs", signal.Signals(signum).name, len(self.programs))
        self._stop.set()

    def run(self) -> int:
        """Supervise until asked to stop; 0 when every program then stopped by itself."""
        for program in self.programs:
            self._start(program)
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for program in self.programs:
                self._check(program, now)
        return self._stop_all()

    def _start(self, program: Program) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(program.env or {})}
        output = subprocess.PIPE if self.prefix else None
        try:
            process = subprocess.Popen(
                list(program.argv),
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if self.prefix else None,
                start_new_session=True,  # the terminal's Ctrl-C reaches the supervisor, not the program
                preexec_fn=self._preexec,
            )
        except OSError as error:
            log.error("%s: cannot start %s: %s", program.name, shlex.join(program.argv), error)
            self._schedule_restart(program, time.monotonic())
            return
        program.process = process
        program.started_at = time.monotonic()
        program.restart_at = None
        log.info("%s: started (pid %d)", program.name, process.pid)
        if self.prefix:
            threading.Thread(target=self._copy_output, args=(program, process), daemon=True).start()

    def _check(self, program: Program, now: float) -> None:
        if program.process is not None:
            code = program.process.poll()
            if code is None:
                return
            up_for = now - program.started_at
            program.process = None
            if up_for >= STABLE_SECONDS:
                program.backoff = FIRST_BACKOFF_SECONDS
            self._schedule_restart(program, now, code, up_for)
        elif program.restart_at is not None and now >= program.restart_at:
            program.restarts += 1
            self._start(program)

    def _schedule_restart(self, program: Program, now: float, code: int | None = None, up_for: float = 0.0) -> None:
        if code is not None:
            log.warning(
                "%s: exited with %s after %.1f s; starting it again in %.0f s",
                program.name,
                _describe_exit(code),
                up_for,
                program.backoff,
            )
        program.restart_at = now + program.backoff
        program.backoff = min(program.backoff * 2, MAX_BACKOFF_SECONDS)

    def _stop_all(self) -> int:
        running = [p for p in self.programs if p.process is not None and p.process.poll() is None]
        for program in running:
            program.process.send_signal(signal.SIGTERM)  # the program's own shutdown, not its group's
        deadline = time.monotonic() + self.stop_timeout
        status = 0
        for program in running:
            process = program.process
            while process.poll() is None and time.monotonic() < deadline and not self._kill.is_set():
                time.sleep(0.1)
            if process.poll() is None:
                log.error("%s: still running; killing it", program.name)
                _kill_group(process.pid)
                process.wait(10)
                status = 1
            elif process.returncode not in (0, -signal.SIGTERM):
                log.warning("%s: stopped with %s", program.name, _describe_exit(process.returncode))
        log.info("stopped")
        return status

    # ------------------------------------------------------------------ output

    def _copy_output(self, program: Program, process: subprocess.Popen) -> None:
        label = f"{program.name:<{self._width}} | "
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self._write_lock:
                self.out.write(label + line + "\n")
                self.out.flush()
        process.stdout.close()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the program and whatever it started (a JVM, workers)
    except ProcessLookupError:
        pass


def take_terminal() -> Callable[[], None]:
    """Make this process the terminal's foreground process group, alone; returns the undo.

    A Ctrl-C goes to every process of the foreground group: without this, ``make run`` and the
    shell script around the supervisor would get it too, and make reports an interrupted
    recipe (exit 130) even when everything stopped cleanly. Job-control shells do the same for
    each job. Without a terminal there is nothing to take.
    """
    try:
        terminal = os.open("/dev/tty", os.O_RDWR)
        previous = os.tcgetpgrp(terminal)
    except OSError:
        return lambda: None
    if previous != os.getpgrp():  # started in the background: leave the terminal alone
        os.close(terminal)
        return lambda: None
    os.setpgid(0, 0)
    # A background group that sets the foreground gets SIGTTOU unless it ignores it.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(terminal, os.getpgrp())

    def give_back() -> None:
        try:
            os.tcsetpgrp(terminal, previous)
        except OSError:
            pass
        os.close(terminal)

    return give_back


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Procfile's programs; restart any that exits.")
    parser.add_argument("procfile", type=Path)
    parser.add_argument("names", nargs="*", help="only these entries (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        programs = read_procfile(args.procfile, args.names)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    supervisor = Supervisor(programs, cwd=args.procfile.resolve().parent)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    give_back = take_terminal()
    try:
        return supervisor.run()
    finally:
        give_back()


if __name__ == "__main__":
    raise SystemExit(main())
