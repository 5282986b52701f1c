"""The template process: every program child is forked from it.

The worker starts it as a separate, lean interpreter (``python -I -S``, a handful of
modules), so each fork copies as few pages as possible, and it only ever receives what a
program may know: the limits and the descriptors of each child. The program and the test inputs travel in a
memfd that only the child reads, after the fork; expected outputs and test code never come
here. So no child's memory (not even freed memory inherited from here) holds anything of
another sample, let alone an answer.

Once set up, the template pivots into the samples' view (isolation.build_view): from then on
it and every child see only the standard library, the system libraries and a few devices.
Each child is forked into a new PID namespace, works in /work (which the worker
empties between samples), takes its own uid (as root: the next of the worker's block, chosen
by the worker; the judge the block's first) and confines itself (confine.py).

Protocol on the SOCK_SEQPACKET socket it inherits (its number is the last argument):
  worker -> template, once: {"uid_base", "drop_caps", "env", "preload", "view"}
                            + the two BPF programs (memfds)
  worker -> template, per program child: {"role": "program", "uid", "limits", "fail_setup",
                            "null"} + [spec memfd, the descriptors of fd0 .. fd5 but those
                            listed in "null" (each child opens /dev/null for those itself)]
  worker -> template, per judge: {"role": "judge", "null": [0, 1, 2]} + [empty memfd,
                            control socket]
  The template never reads the spec memfd: the child does, after the fork.
  template -> worker: {"pid"} after the fork; the child is the worker's (CLONE_PARENT), and
  the worker reaps it. Test code goes from the worker to the judge directly, never through
  the template.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any

from grader_sandbox import child as child_mod
from grader_sandbox import judge as judge_mod
from grader_sandbox.confine import (
    PR_SET_PDEATHSIG,
    WORKDIR,
    BpfProgram,
    _prctl,
    arrange_fds,
    confine,
    enter_view,
    prepare_template,
    vm_size_bytes,
)

SETUP_FAILED = 71
# The judge runs trusted test code, for many samples: no CPU limit of its own (each sample's
# wall clock bounds its job; the worker replaces a judge that was stopped mid-job).
_JUDGE_LIMITS = {"timeout_s": 3600.0, "memory_mb": 1024, "output_bytes": 1 << 16}


_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
CLONE_PARENT = 0x00008000
CLONE_NEWPID = 0x20000000
# Each child: the worker's child, alone in its own PID namespace (process 1, no other process
# to see or signal). Measured with two workers, a mount namespace per child (for a tmpfs of
# its own) cost 10% of throughput and an IPC namespace 5% (each mounts an mqueue): mounts
# serialise machine-wide. So the worker empties the shared /work instead, and SysV IPC and
# POSIX message queues are refused by seccomp (with no /dev/shm in the view, no IPC object
# can be shared at all).
CHILD_FLAGS = CLONE_PARENT | CLONE_NEWPID
M_ARENA_MAX = -8
# Threads share one malloc arena (each extra arena reserves 64 MiB of address space, which
# counts against the sample's memory limit) and get 4 MiB stacks: 64 threads fit in 512 MiB.
THREAD_STACK = 4 << 20


def _make_fork() -> Any:
    """fork(2) as ``clone(CHILD_FLAGS | SIGCHLD)``: the child becomes the *worker's* child, so
    the worker reaps it and reads its exit status and usage itself, and the template returns
    to waiting at once instead of touching (copy-on-write) pages while the child runs. It
    also skips CPython's at-fork bookkeeping (lock re-initialisation, at-fork hooks, reseeding
    ``random``), which would make every child copy ~150 pages; that is safe because the
    template is single-threaded and holds no locks when it forks."""
    nr = _SYS_CLONE.get(os.uname().machine)
    if nr is None:
        raise OSError(f"grader_sandbox supports x86_64 and aarch64, not {os.uname().machine}")
    if threading.active_count() != 1:
        raise RuntimeError("the template process must be single-threaded")
    syscall = ctypes.PyDLL(None, use_errno=True).syscall  # PyDLL keeps the GIL
    syscall.restype = ctypes.c_long
    args = [ctypes.c_long(v) for v in (nr, CHILD_FLAGS | signal.SIGCHLD, 0, 0, 0, 0)]

    def fork() -> int:
        pid = syscall(*args)
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone failed")
        return int(pid)

    return fork


def _site_builtins() -> None:
    """The names ``site`` adds to builtins (``exit``, ``quit``, ``help``, ``copyright``,
    ``credits``, ``license``), which programs may use as under ``python``. The template runs
    without ``site`` (``-S``): its start-up hooks (``.pth`` files, import finders of
    site-packages) left 2-3 MB in the heap that every fork mapped and tore down, and the
    samples' path never held site-packages anyway."""
    import site

    site.setquit()
    site.setcopyright()
    site.sethelper()


def _preload(names: list[str]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            continue


def _warm_up() -> None:
    """Run the child's hot paths here first. CPython 3.11 rewrites bytecode in place as it
    warms up (quickening, inline caches); done once here, it is not redone, page by page
    copy-on-write, in every child."""
    import builtins

    from grader_sandbox.codec import from_plain, pack, to_plain

    code = "from typing import List\nimport math\ndef f(xs: List[int]) -> int:\n" \
           "    return sum(math.isqrt(x) for x in xs)\nK = 3\n"
    for _ in range(64):
        ns = child_mod._fresh_namespace("solution")
        exec(child_mod._compile(code), ns)
        exports = child_mod._exports(ns)
        args = from_plain(to_plain([[1, 4, 9], (2, "a"), {"k": 1.5}]))
        value = ns["f"](args[0])
        frame = pack({"i": 0, "value": to_plain(value), "exports": exports})
        json.loads(frame[4:])
        child_mod._exc_name(ValueError())
        builtins.isinstance(value, int)


def main(sock_fd: int) -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    sock = socket.socket(fileno=sock_fd)
    msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 3)
    config = json.loads(msg)
    template_bpf, delta_bpf, judge_bpf = (BpfProgram(os.pread(fd, os.fstat(fd).st_size, 0))
                                          for fd in fds)
    for fd in fds:
        os.close(fd)
    base, drop_caps = config["uid_base"], config["drop_caps"]
    judge_uid = base
    ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
    threading.stack_size(THREAD_STACK)
    _site_builtins()
    _preload(config["preload"])
    _fork = _make_fork()
    prepare_template(config["env"])
    _warm_up()
    gc.collect()
    gc.freeze()  # children's collections then skip (and do not copy) what is here
    # What set-up freed goes back to the system, so no fork maps (and tears down) it.
    ctypes.CDLL(None).malloc_trim(0)
    worker_pidfd = os.pidfd_open(os.getppid())
    os.set_inheritable(worker_pidfd, False)
    base_vm = vm_size_bytes()
    enter_view(config["view"])
    # Only the standard library is importable from here on: no path that could resolve into
    # the samples' writable /work (a module planted there must never load in the judge).
    import sysconfig

    std = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p).startswith(tuple(std))
                   and "-packages" not in p]
    sys.path_importer_cache.clear()
    # From here on the template itself runs under the program filter plus what forking and
    # confining a child need; each child then adds the delta filter that removes those.
    template_bpf.load()
    sock.send(b'{"ready": true}')
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 8)
        except OSError:
            return
        if not msg:
            return
        header = json.loads(msg)
        judge = header.get("role") == "judge"
        uid = judge_uid if judge else header.get("uid")  # the worker picks programs' uids
        pid = _fork()
        if pid == 0:
            if header.get("fail_setup"):  # worker.INJECT_ENV (testing)
                os._exit(SETUP_FAILED)
            try:
                # The child reads its own program and inputs: the template never holds a
                # sample's data, so no later child can find it in memory inherited from here.
                spec = None if judge else json.loads(
                    os.pread(fds[0], os.fstat(fds[0]).st_size, 0))
                null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
                given = iter(fds[1:])
                nulls = set(header["null"])
                layout = [null if i in nulls else next(given)
                          for i in range(len(fds) - 1 + len(nulls))]
                arrange_fds([*layout, worker_pidfd])  # the worker's pidfd: len(layout)
                limits = _JUDGE_LIMITS if judge else header["limits"]
                confine(workdir=WORKDIR, limits=limits, uid=uid, drop_caps=drop_caps,
                        seccomp_filter=judge_bpf if judge else delta_bpf,
                        parent_fd=len(layout), base_vm=base_vm, cpu_limit=not judge)
            except BaseException:
                try:
                    traceback.print_exc()
                finally:
                    os._exit(SETUP_FAILED)
            if judge:
                child_mod.quiet_stdio()
                judge_mod.run_judge_server(3)
            child_mod.run_program(spec)  # type: ignore[arg-type]
        for fd in fds:
            os.close(fd)
        sock.send(b'{"pid": %d}' % pid)


if __name__ == "__main__":
    main(int(sys.argv[1]))
