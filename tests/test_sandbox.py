"""Containment and verdict tests for eval/sandbox.py: every attack must be contained and the
pool must keep producing correct verdicts afterwards."""
import dataclasses
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid

import pytest

from eval import sandbox
from eval.sandbox import Limits, SandboxPool, SandboxUnavailableError

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bubblewrap (bwrap) not installed"),
]

LIMITS = Limits(cpu_seconds=0.5, wall_seconds=20.0, memory_bytes=512 << 20, nproc=32)
LEFTOVERS = "import os\n__sandbox_output__ = repr(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2, limits=LIMITS) as p:
        yield p


def assert_healthy(pool):
    """The pool still gives right verdicts and nothing but init, worker and child is alive."""
    assert pool.run("assert sum(range(10)) == 45").status == "passed"
    assert pool.run("assert sum(range(10)) == 46").status == "failed"
    for _ in range(pool.num_workers):
        verdict = pool.run(LEFTOVERS, want_output=True)
        assert verdict.passed, verdict
        assert len(eval(verdict.output)) == 3, verdict.output


@pytest.mark.parametrize("program,status,detail", [
    ("assert 1 + 1 == 2", "passed", ""),
    ("assert 1 + 1 == 3", "failed", "AssertionError"),
    ("def f():\n    return 1 / 0\nf()", "error", "ZeroDivisionError"),
    ("def f(:\n    pass", "error", "SyntaxError"),
    ("import sys\nsys.exit(0)\nassert False", "failed", "exited before the tests completed (SystemExit(0))"),
    ("raise SystemExit\nassert False", "failed", "exited before the tests completed (SystemExit(None))"),
    ("import os\nos._exit(0)\nassert False", "failed", "exited before the tests completed (status 0)"),
    ("while True:\n    pass", "timeout", "cpu time"),
    # RLIMIT_CPU backs up the ignored SIGPROF timer.
    ("import signal\nsignal.signal(signal.SIGPROF, signal.SIG_IGN)\nwhile True:\n    pass", "timeout", "cpu time"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "killed", "SIGSEGV"),
])
def test_verdicts(pool, program, status, detail):
    verdict = pool.run(program)
    assert (verdict.status, verdict.detail) == (status, detail)


def test_sleeping_program_hits_the_wall_clock(pool):
    verdict = pool.run("import time\ntime.sleep(60)", limits=Limits(cpu_seconds=1, wall_seconds=1))
    assert (verdict.status, verdict.detail) == ("timeout", "wall clock")
    assert verdict.wall_seconds < 30


def test_exit_inside_the_tested_function_fails(pool):
    program = textwrap.dedent("""
        import sys
        def candidate(x):
            sys.exit(0)
        def check(f):
            assert f(1) == 2
        check(candidate)
    """)
    assert not pool.run(program).passed
    assert_healthy(pool)


def test_output_channel_only_for_passing_programs(pool):
    ok = pool.run("__sandbox_output__ = repr({'a': (1, 2.5)})", want_output=True)
    assert ok.passed and eval(ok.output) == {"a": (1, 2.5)}
    bad = pool.run("__sandbox_output__ = 'x'\nassert False", want_output=True)
    assert bad.status == "failed" and bad.output is None


def test_network_is_unreachable(pool):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
        verdict = pool.run(program)
        assert verdict.status == "error" and verdict.detail in (
            "ConnectionRefusedError", "OSError", "TimeoutError"), verdict
        with pytest.raises(socket.timeout):
            server.accept()
    assert not pool.run("import socket\nsocket.getaddrinfo('pypi.org', 443)").passed
    assert_healthy(pool)


def test_cannot_write_outside(pool, tmp_path):
    targets = [REPO / f"sandbox-escape-{uuid.uuid4().hex}", pathlib.Path("/root") / f"escape-{uuid.uuid4().hex}",
               tmp_path / "escape"]
    for target in targets:
        verdict = pool.run(f"open({str(target)!r}, 'w').write('x')")
        assert verdict.status == "error", (target, verdict)
        assert not target.exists()
    assert pool.run("open('/usr/escape', 'w').write('x')").detail in ("OSError", "PermissionError")
    assert_healthy(pool)


def test_cannot_read_outside(pool):
    for path in ["/etc/shadow", "/root/.bashrc", str(REPO / "tests" / "test_sandbox.py"),
                 str(REPO / "eval" / "sandbox.py")]:
        verdict = pool.run(f"print(open({path!r}).read())")
        assert verdict.status == "error" and verdict.detail in (
            "FileNotFoundError", "PermissionError"), (path, verdict)
    assert pool.run("import os\nassert os.listdir('/root') == ['.pyenv'] or "
                    "not os.path.exists('/root/.bashrc')").passed
    assert_healthy(pool)


def test_fork_bomb_is_contained(pool):
    verdict = pool.run("import os\nwhile True:\n    os.fork()")
    assert verdict.status in ("error", "timeout", "killed"), verdict
    assert_healthy(pool)


@pytest.mark.parametrize("program", [
    "x = bytearray(1 << 40)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))",
])
def test_memory_bomb_is_contained(pool, program):
    # CPU time to spare: zero-filling 512 MB must run into the memory limit, not the CPU one, even
    # on a loaded machine (0.5 s of CPU was seen to run out first).
    verdict = pool.run(program, limits=dataclasses.replace(LIMITS, cpu_seconds=10.0))
    assert verdict.status == "killed" and "memory" in verdict.detail, verdict
    assert_healthy(pool)


def test_leftover_grandchildren_are_killed(pool):
    marker = f"{1000 + uuid.uuid4().int % 1000}.{os.getpid()}"
    program = textwrap.dedent(f"""
        import os, subprocess
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "{marker}"])
            os._exit(0)
        os.wait()
    """)
    assert pool.run(program).passed
    assert_healthy(pool)
    host_sleepers = [p for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()
                     and marker.encode() in _read_or_empty(p / "cmdline")]
    assert host_sleepers == []


def _read_or_empty(path):
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_killing_the_worker_is_contained(pool):
    verdict = pool.run("import os\nos.kill(os.getppid(), 9)\nos.kill(1, 9)")
    assert not verdict.passed
    assert_healthy(pool)


def test_run_many_keeps_order(pool):
    programs = [f"assert {i} % 3 != 0" for i in range(30)]
    verdicts = list(pool.run_many(programs))
    assert [v.passed for v in verdicts] == [i % 3 != 0 for i in range(30)]


# What a program sees and may touch, as JSON: {BIND} is a read-only bind that lives under /tmp.
SCRATCH_PROBE = """
import json, os, tempfile
scratch = os.getcwd()
seen = {"scratch": scratch, "listing": sorted(os.listdir(scratch)),
        "home_tmpdir": [os.environ.get("HOME"), os.environ.get("TMPDIR")],
        "mounts_inside": [line.split()[4] for line in open("/proc/self/mountinfo")
                          if line.split()[4].startswith(scratch.rstrip("/") + "/")]}
open("mine.txt", "w").write("x")
os.makedirs("deep/er")
seen["tempfile"] = tempfile.mkstemp()[1]
writes = {}
for path in ["/x", "/tmp/x", "/var/x", "/usr/x", "/dev/x", "/dev/shm/x", {BIND!r} + "/x",
             {BIND!r} + "/../x"]:
    try:
        open(path, "w").write("x")
        writes[path] = "written"
    except OSError as e:
        writes[path] = type(e).__name__
for name, change in [("unlink", lambda: os.unlink({BIND!r} + "/marker.py")),
                     ("rename", lambda: os.rename({BIND!r}, {BIND!r} + "-moved")),
                     ("rmdir", lambda: os.rmdir(os.path.dirname({BIND!r})))]:
    try:
        change()
        writes[name] = "done"
    except OSError as e:
        writes[name] = type(e).__name__
seen["writes"] = writes
open("/dev/null", "w").write("x")
seen["marker"] = open({BIND!r} + "/marker.py").read()
__sandbox_output__ = json.dumps(seen)
"""


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            for p in sorted(root.rglob("*"))}


def _check_scratch_probes(outputs: list[str], bind: str) -> None:
    """Every run started in an empty scratch directory that no bind overlaps, wrote there only,
    and changed nothing of the bind."""
    assert len(outputs) >= 2
    for output in outputs:
        seen = json.loads(output)
        scratch = seen["scratch"]
        assert not (bind == scratch or bind.startswith(scratch.rstrip("/") + "/")), seen
        assert seen["listing"] == [] and seen["mounts_inside"] == [], seen
        assert seen["home_tmpdir"] == [scratch, scratch]
        assert seen["tempfile"].startswith(scratch + "/")
        assert "written" not in seen["writes"].values() and "done" not in seen["writes"].values(), seen
        assert seen["marker"] == "VALUE = 42\n"


def _bind_under_tmp() -> pathlib.Path:
    """A small stand-in for a venv under /tmp: a folder, a module and a subfolder."""
    bind = pathlib.Path(tempfile.mkdtemp(prefix="editseq-bind-", dir="/tmp")) / "venv"
    (bind / "lib").mkdir(parents=True)
    (bind / "marker.py").write_text("VALUE = 42\n")
    (bind / "lib" / "data.txt").write_text("data\n")
    return bind


@pytest.mark.parametrize("user_namespace", [False, True])
def test_scratch_is_apart_from_binds_under_tmp(monkeypatch, user_namespace):
    """A read-only bind under /tmp (where a CI clone keeps its venv) must not lie in the scratch
    directory that is emptied after every program: emptying it walked the whole venv before."""
    if user_namespace:
        monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    bind = _bind_under_tmp()
    before = _tree(bind.parent)
    roots = sandbox._python_roots()
    monkeypatch.setattr(sandbox, "_python_roots", lambda: [*roots, str(bind)])
    try:
        with SandboxPool(1, limits=LIMITS) as pool:
            verdicts = list(pool.run_many([SCRATCH_PROBE.replace("{BIND!r}", repr(str(bind)))] * 3,
                                          want_output=True))
            assert all(v.passed for v in verdicts), verdicts
            _check_scratch_probes([v.output for v in verdicts], str(bind))
            assert_healthy(pool)
        assert _tree(bind.parent) == before
    finally:
        shutil.rmtree(bind.parent)


@pytest.mark.parametrize("mounts,expected", [
    (["/usr", "/root/.pyenv/versions/3.11.7", "/work/main/.venv"], "/tmp"),
    (["/usr", "/tmp/ci/venv"], "/var/tmp"),
    (["/usr", "/tmp"], "/var/tmp"),
    (["/tmp/a", "/var/tmp/b"], "/scratch"),
    (["/var"], "/tmp"),
    (["/tmpfoo"], "/tmp"),
])
def test_scratch_dir_avoids_every_bind(mounts, expected):
    assert sandbox.scratch_dir(mounts) == expected


def test_scratch_dir_refuses_when_every_candidate_is_taken():
    with pytest.raises(SandboxUnavailableError, match="no scratch directory"):
        sandbox.scratch_dir(["/tmp", "/var", "/scratch"])


def test_interpreter_in_a_venv_under_tmp():
    """The pool run by a real venv's Python that lives under /tmp: programs run, import from the
    venv, write only to their scratch directory, and leave the venv as it was."""
    from eval.perf import bench_execute
    home = pathlib.Path(tempfile.mkdtemp(prefix="editseq-venv-", dir="/tmp"))
    try:
        python = bench_execute.make_venv(home / "venv", pip=False)
        site = next((home / "venv" / "lib").glob("python3*/site-packages"))
        (site / "marker.py").write_text("VALUE = 42\n")
        before = _tree(home)
        probe = SCRATCH_PROBE.replace("{BIND!r}", repr(str(site)))
        programs = [probe, "import marker\nassert marker.VALUE == 42", probe,
                    "assert sum(range(10)) == 46"]
        result = bench_execute.run_pool_with(python, programs, workers=2)
        assert result["executable"] == python
        assert [status for status, _ in result["verdicts"]] == ["passed", "passed", "passed", "failed"]
        _check_scratch_probes([result["verdicts"][0][1], result["verdicts"][2][1]], str(site))
        assert _tree(home) == before
    finally:
        shutil.rmtree(home)


def test_refuses_without_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with pytest.raises(SandboxUnavailableError, match="--unsafe_no_sandbox"):
        SandboxPool(1)


def test_unsafe_mode_warns_and_runs(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with SandboxPool(1, limits=LIMITS, unsafe_no_sandbox=True) as pool:
        assert pool.run("assert True").passed
        assert pool.run("import os\nos._exit(0)\nassert False").status == "failed"
        assert pool.run("while True:\n    pass").status == "timeout"
    assert "WITHOUT a sandbox" in capsys.readouterr().err


def test_bad_limits():
    with pytest.raises(ValueError, match="cpu_seconds"):
        Limits(cpu_seconds=0)


def _user_mode_checks(fork_bomb):
    checks = textwrap.dedent("""
        from eval.sandbox import SandboxPool, Limits
        with SandboxPool(1, limits=Limits(cpu_seconds=1, wall_seconds=20, nproc=16)) as pool:
            assert pool.run("assert True").passed
            assert pool.run("import os\\nos._exit(0)").status == "failed"
            if FORK_BOMB:
                assert not pool.run("import os\\nwhile True:\\n    os.fork()").passed
            assert pool.run("import os\\nos.kill(os.getppid(), 9)").status == "killed"
            assert not pool.run("open('/etc/shadow').read()").passed
            assert pool.run("assert True").passed
    """)
    return checks.replace("FORK_BOMB", str(fork_bomb))


def test_user_namespace_mode(monkeypatch):
    """The code path of an ordinary user (unprivileged user namespace, no uid switch), exercised
    as root: there a program can kill its own worker, which the pool must replace. (Root keeps
    its exemption from RLIMIT_NPROC inside such a namespace, hence no fork bomb here.)"""
    as_root = os.geteuid() == 0
    if as_root:
        monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    exec(_user_mode_checks(fork_bomb=not as_root), {})


def _reachable_by_anyone(path: str) -> bool:
    """Whether every directory above `path` lets other users through (e.g. not under /root)."""
    parent = pathlib.Path(os.path.realpath(path)).parent
    return all(p.stat().st_mode & 0o001 for p in (parent, *parent.parents))


def _interpreter_for_anyone() -> str | None:
    """This interpreter if any user can run it, else the system's Python 3 (>= 3.10) if present."""
    if _reachable_by_anyone(sys.executable):
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _reachable_by_anyone(candidate):
            version = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                                     capture_output=True, text=True).stdout.strip()
            if version == "True":
                return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to switch to an unprivileged user")
def test_works_as_an_ordinary_user():
    """The whole pool run by `nobody` (uid 65534): bwrap in an unprivileged user namespace, no
    capabilities. The sandbox modules (standard library only) are copied where that user can
    read them, and run with an interpreter that user can reach (the system's Python when this one
    lives under /root)."""
    python = _interpreter_for_anyone()
    if python is None:
        pytest.skip("no Python interpreter that an unprivileged user can run")
    root = pathlib.Path(tempfile.mkdtemp(prefix="editseq-anyone-"))
    try:
        _run_as_nobody(python, root)
    finally:
        shutil.rmtree(root)


def _run_as_nobody(python: str, root: pathlib.Path) -> None:
    package = root / "eval"
    package.mkdir()
    for name in ("__init__.py", "sandbox.py", "sandbox_worker.py"):
        shutil.copy(REPO / "eval" / name, package / name)
        (package / name).chmod(0o644)
    for directory in (root, package):
        directory.chmod(0o755)
    script = ("import os\nassert os.geteuid() == 65534\n"
              "from eval.sandbox import SandboxPool, SandboxUnavailableError\n"
              "try:\n    SandboxPool(1).close()\n"
              "except SandboxUnavailableError as e:\n    print(e)\n    raise SystemExit(3)\n"
              + _user_mode_checks(fork_bomb=True) + "print('ok')\n")
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    result = subprocess.run(user + [python, "-s", "-c", script], cwd=root,
                            capture_output=True, text=True, env={"PATH": os.environ["PATH"]},
                            timeout=120)
    if result.returncode == 3:
        pytest.skip(f"no sandbox for an unprivileged user here: {result.stdout.strip()}")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
