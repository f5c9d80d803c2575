"""Fork server that runs inside the sandbox (see eval/sandbox.py); standard library only.

It reads length-prefixed JSON requests on stdin and answers on stdout. Per request it forks one
child that drops to the sandbox uid (when started as root), sets resource limits, execs the program
and, only if the whole program returned normally, writes a per-run random nonce followed by "P"
on a pipe created for that run. Exit codes, `sys.exit(0)` and `os._exit(0)` therefore cannot pass a
test: success means the code *after* the program ran. (Code in the same process could in principle
dig the nonce out of memory; the channel defends against programs that stop early, not against a
program written to attack this harness, which the sandbox around it contains instead.)
After each run the whole process group is killed and so is every other process left in the
sandbox's pid namespace.
"""
import builtins
import ctypes
import gc
import importlib
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time

OUTPUT_NAME = "__sandbox_output__"
_HEADER = struct.Struct("<I")
_NONCE_BYTES = 16
_MAX_REPORT = 256 << 20
_PR_SET_DUMPABLE = 4
# Imported once here so that forked children find them loaded: `from typing import List` alone
# costs a few milliseconds per program otherwise, more than fork and exit together.
PRELOAD = ("typing", "math", "cmath", "re", "collections", "itertools", "functools", "heapq",
           "bisect", "string", "copy", "base64", "pickle", "hashlib", "random", "statistics",
           "fractions", "decimal", "datetime", "operator", "array", "numbers", "dataclasses")


def _read_exact(fd, n):
    data = bytearray()
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def read_message(fd):
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0])
    if body is None:
        return None
    return json.loads(body)


def write_message(fd, obj):
    body = json.dumps(obj).encode()
    data = memoryview(_HEADER.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def _set_limits(cpu_seconds, memory_bytes, nproc, file_bytes, nofile):
    hard_cpu = int(cpu_seconds) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (hard_cpu - 1, hard_cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    # SIGPROF's default action terminates: a precise CPU-time limit; RLIMIT_CPU backs it up
    # should the program ignore SIGPROF.
    signal.setitimer(signal.ITIMER_PROF, cpu_seconds)


def _child(req, nonce, report_fd, uid, scratch):
    """Runs in the forked child; never returns."""
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 1 << 16)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        os.chdir(scratch)
        _set_limits(req["cpu_seconds"], req["memory_bytes"], req["nproc"],
                    req["file_bytes"], req["nofile"])
    except BaseException as e:  # a broken setup must not look like the program's fault
        os.write(report_fd, nonce + b"S" + repr(e).encode()[:1000])
        os._exit(0)
    namespace = {"__name__": "__sandbox__", "__builtins__": builtins}
    try:
        exec(compile(req["program"], "<program>", "exec"), namespace)
    except BaseException as e:
        kind = b"F" if isinstance(e, AssertionError) else b"E"
        if isinstance(e, SystemExit):
            detail = f"SystemExit({e.code!r})"
        else:
            detail = type(e).__name__
        message = nonce + kind + detail.encode()[:1000]
    else:
        output = namespace.get(OUTPUT_NAME) if req["want_output"] else None
        message = nonce + b"P" + (output.encode() if isinstance(output, str) else b"")
    view = memoryview(message)
    while view:
        view = view[os.write(report_fd, view):]
    os._exit(0)


def _living_others():
    """Pids in this pid namespace other than us and its init (bwrap), zombies excluded."""
    me = os.getpid()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z":
            pids.append(int(name))
    return pids


def _kill_leftovers(pgid, in_own_pid_namespace):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if not in_own_pid_namespace:
        return
    for _ in range(1000):  # a fork bomb can still be forking while we kill
        pids = _living_others()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.001)


def _clean_scratch(uid, scratch):
    """Empty the scratch directory as the sandbox uid (its files are not ours to delete)."""
    if not os.listdir(scratch):
        return
    pid = os.fork()
    if pid == 0:
        try:
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            for name in os.listdir(scratch):
                path = os.path.join(scratch, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _wait(pid, report_fd, wall_seconds):
    """Collects the report until the child exits or the wall clock runs out."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(report_fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    report = bytearray()
    deadline = time.monotonic() + wall_seconds
    exited = False
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(remaining * 1000):
            if fd == pidfd:
                exited = True
            else:
                chunk = os.read(report_fd, 1 << 20)
                if not chunk:
                    poller.unregister(report_fd)
                elif len(report) < _MAX_REPORT:
                    report += chunk
    os.close(pidfd)
    return report, exited


def _drain(report_fd, report):
    os.set_blocking(report_fd, False)
    while len(report) < _MAX_REPORT:
        try:
            chunk = os.read(report_fd, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        report += chunk


def _verdict(report, nonce, wait_status, rusage, cpu_limit, timed_out_wall):
    cpu = rusage.ru_utime + rusage.ru_stime
    if report[:_NONCE_BYTES] == nonce and len(report) > _NONCE_BYTES:
        kind, body = chr(report[_NONCE_BYTES]), bytes(report[_NONCE_BYTES + 1:])
        if kind == "P":
            return {"status": "passed", "detail": "", "output": body.decode(), "cpu": cpu}
        detail = body.decode(errors="replace")
        if kind == "F":
            return {"status": "failed", "detail": detail, "cpu": cpu}
        if kind == "S":
            return {"status": "sandbox_error", "detail": detail, "cpu": cpu}
        if detail.startswith("SystemExit"):
            return {"status": "failed", "detail": f"exited before the tests completed ({detail})",
                    "cpu": cpu}
        if detail == "MemoryError":
            return {"status": "killed", "detail": "memory limit (MemoryError)", "cpu": cpu}
        return {"status": "error", "detail": detail, "cpu": cpu}
    if timed_out_wall:
        return {"status": "timeout", "detail": "wall clock", "cpu": cpu}
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig in (signal.SIGPROF, signal.SIGXCPU) or (sig == signal.SIGKILL and cpu >= cpu_limit):
            return {"status": "timeout", "detail": "cpu time", "cpu": cpu}
        return {"status": "killed", "detail": signal.Signals(sig).name, "cpu": cpu}
    code = os.WEXITSTATUS(wait_status)
    detail = "exited before the tests completed" + (f" (status {code})" if report == b"" else
                                                     " (invalid report)")
    return {"status": "failed", "detail": detail, "cpu": cpu}


def run_one(req, uid, in_own_pid_namespace, scratch):
    nonce = os.urandom(_NONCE_BYTES)
    report_r, report_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        _child(req, nonce, report_w, uid, scratch)
    os.close(report_w)
    report, exited = _wait(pid, report_r, req["wall_seconds"])
    # Before reaping: the child's pid (its process group id) cannot be reused yet, and once this
    # returns nothing but zombies is left that could fork again.
    _kill_leftovers(pid, in_own_pid_namespace)
    _, wait_status, rusage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    _drain(report_r, report)
    os.close(report_r)
    _clean_scratch(uid, scratch)
    verdict = _verdict(report, nonce, wait_status, rusage, req["cpu_seconds"], not exited)
    verdict["wall"] = wall
    return verdict


def main():
    config = json.loads(sys.argv[1])
    uid = config["uid"]
    in_own_pid_namespace = config["pid_namespace"]
    scratch = config["scratch"]
    if in_own_pid_namespace:
        # Not dumpable: a same-uid program cannot open our pipes through /proc/<pid>/fd.
        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    if uid is not None:
        os.chmod(scratch, 0o1777)
    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()  # children's garbage collections then leave the shared pages alone
    requests, replies = 0, 1
    write_message(replies, {"ready": True, "pid": os.getpid(), "euid": os.geteuid()})
    while True:
        req = read_message(requests)
        if req is None:
            return
        write_message(replies, run_one(req, uid, in_own_pid_namespace, scratch))


if __name__ == "__main__":
    main()
