"""The template process: every program child is forked from it.

The worker starts it as a separate, lean interpreter (``python -I``, a handful of modules), so
each fork copies as few pages as possible, and it only ever receives what a program may know:
the program, the test inputs, the limits. Never expected outputs or test code, so no program
child's memory (not even freed memory inherited from here) can hold an answer.

Protocol on the SOCK_SEQPACKET socket it inherits (its number is the last argument):
  worker -> template, once: {"uid", "drop_caps", "env", "preload"} + the BPF program (memfd)
  worker -> template, per sample: {"workdir"} + [spec memfd, fd0, fd1, fd2, fd3, fd4, fd5]
  template -> worker: {"pid"} after the fork; the child is the worker's (CLONE_PARENT), and
  the worker reaps it
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
from grader_sandbox.confine import (
    PR_SET_PDEATHSIG,
    BpfProgram,
    _prctl,
    arrange_fds,
    confine,
    prepare_template,
)

SETUP_FAILED = 71


_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
CLONE_PARENT = 0x00008000


def _make_fork() -> Any:
    """fork(2) as ``clone(CLONE_PARENT | SIGCHLD)``: the child becomes the *worker's* child, so
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
    args = [ctypes.c_long(v) for v in (nr, CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)]

    def fork() -> int:
        pid = syscall(*args)
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone failed")
        return int(pid)

    return fork


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
    msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 2)
    config = json.loads(msg)
    template_bpf, delta_bpf = (BpfProgram(os.pread(fd, os.fstat(fd).st_size, 0)) for fd in fds)
    for fd in fds:
        os.close(fd)
    uid, drop_caps = config["uid"], config["drop_caps"]
    _preload(config["preload"])
    _fork = _make_fork()
    prepare_template(config["env"])
    _warm_up()
    gc.collect()
    gc.freeze()  # children's collections then skip (and do not copy) what is here
    worker_pid = os.getppid()
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
        spec = json.loads(os.pread(fds[0], os.fstat(fds[0]).st_size, 0))
        pid = _fork()
        if pid == 0:
            try:
                arrange_fds(fds[1:])
                confine(workdir=header["workdir"], limits=spec["limits"], uid=uid,
                        drop_caps=drop_caps, seccomp_filter=delta_bpf, parent_pid=worker_pid)
            except BaseException:
                try:
                    traceback.print_exc()
                finally:
                    os._exit(SETUP_FAILED)
            child_mod.run_program(spec)
        for fd in fds:
            os.close(fd)
        sock.send(b'{"pid": %d}' % pid)


if __name__ == "__main__":
    main(int(sys.argv[1]))
