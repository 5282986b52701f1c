"""The isolation layers: worker namespaces, and the confinement of every sandboxed child.

Layers, outermost first:

1. The worker process (started by the pool from a clean interpreter) moves itself into a new
   network namespace (no interfaces but a down loopback) and a new mount namespace in which
   every mount is read-only and a small private tmpfs is the only writable place. As root it
   does this directly; otherwise through a user namespace. Inside the grader container the
   container provides both (``--network none --read-only``) and the worker verifies that.
2. Every sample runs in a child forked from a pre-started template process (no interpreter
   start per sample). Before the program's first byte runs the child: starts a new session,
   closes every inherited descriptor but its own pipes, enters its private working directory,
   sets rlimits (CPU, address space relative to its own size, file size, open files, core 0,
   thread count where it has a dedicated uid), drops to an unprivileged uid and all
   capabilities, becomes non-dumpable, sets no_new_privs and loads a seccomp allow-list filter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import stat
import sys
from dataclasses import dataclass
from typing import Any

from grader_sandbox.confine import BpfProgram, check

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MNT_DETACH = 0x2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # same number on every architecture (added in Linux 5.12)

# A sandboxed child gets this uid (plus the worker index) when the worker runs as real root.
SANDBOX_UID_BASE = int(os.environ.get("GRADER_SANDBOX_UID_BASE", "61000"))
JUDGE_UID_OFFSET = 500
SCRATCH_TMPFS_OPTS = "size=256m,nr_inodes=65536,mode=0755"

_libc = ctypes.CDLL(None, use_errno=True)


class IsolationError(RuntimeError):
    """The sandbox cannot be set up here; the message says why and what to do."""


_check = check


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


@dataclass
class WorkerIsolation:
    """What the worker set up, reported to the pool at start."""

    mode: str  # "namespaces" (root), "userns" (unprivileged), "container"
    scratch: str
    sandbox_uid: int | None  # uid the children drop to, or None when they keep the worker's
    drop_caps: bool

    @property
    def judge_uid(self) -> int | None:
        """The judge's own uid: program children can neither signal nor inspect it."""
        return None if self.sandbox_uid is None else self.sandbox_uid + JUDGE_UID_OFFSET


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _needed_paths() -> list[str]:
    """Directories a sandboxed child must be able to read: the interpreter and its imports."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cands = {sys.prefix, sys.base_prefix, sys.exec_prefix, here}
    cands.update(p for p in sys.path if p and os.path.isabs(p))
    return sorted(os.path.realpath(p) for p in cands if os.path.isdir(p))


def _blocking_ancestor(path: str) -> str | None:
    """The highest directory on ``path`` that others may not search, if any."""
    cur = "/"
    for part in path.strip("/").split("/"):
        cur = os.path.join(cur, part)
        if not os.stat(cur).st_mode & stat.S_IXOTH:
            return cur
    return None


def _expose_python(scratch: str) -> None:
    """Let the sandbox uid read the Python installation even under a private home (pyenv in
    /root): cover each unsearchable ancestor with an empty tmpfs and bind back only the
    directories Python needs. The rest of that home stays hidden from the children."""
    groups: dict[str, list[str]] = {}
    for path in _needed_paths():
        top = _blocking_ancestor(path)
        if top is not None:
            groups.setdefault(top, []).append(path)
    if not groups:
        return
    staging = scratch.encode()
    _check(_libc.mount(b"staging", staging, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0700"),
           "mount staging tmpfs")
    held: list[tuple[str, str]] = []
    for top, paths in groups.items():
        keep = [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]
        for n, path in enumerate(keep):
            hold = os.path.join(scratch, f"{len(held)}-{n}")
            os.mkdir(hold)
            _check(_libc.mount(path.encode(), hold.encode(), None, MS_BIND | MS_REC, None),
                   f"bind {path}")
            held.append((path, hold))
        _check(_libc.mount(b"hidden", top.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                           b"mode=0755"), f"cover {top}")
    for path, hold in held:
        os.makedirs(path, exist_ok=True)
        _check(_libc.mount(hold.encode(), path.encode(), None, MS_BIND | MS_REC, None),
               f"rebind {path}")
    _check(_libc.umount2(staging, MNT_DETACH), "unmount staging")


def _make_everything_readonly() -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    ret = _libc.syscall(
        SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(ret, "mount_setattr(/, AT_RECURSIVE, MOUNT_ATTR_RDONLY)")


def _loopback_only() -> bool:
    """True when this process's network namespace has no interface but ``lo``. Read from
    /proc/self/net/dev (per namespace), so no socket is needed to ask."""
    try:
        with open("/proc/self/net/dev") as fh:
            lines = fh.read().splitlines()[2:]
    except OSError:
        return False
    return all(line.split(":", 1)[0].strip() == "lo" for line in lines if ":" in line)


def setup_worker(scratch: str, mode: str, worker_index: int) -> WorkerIsolation:
    """Enter the worker's namespaces; make ``scratch`` a private tmpfs, the only writable place.

    ``mode``: "auto" (namespaces as root, else a user namespace) or "container" (verify that
    the container already gives no network and a read-only root; ``scratch`` must be writable).
    """
    if mode == "container":
        if not _loopback_only():
            raise IsolationError(
                "container mode but the process sees network interfaces besides lo; "
                "run the container with --network none"
            )
        if not os.statvfs("/").f_flag & os.ST_RDONLY:
            raise IsolationError(
                "container mode but / is writable; run the container with --read-only"
            )
        if not os.access(scratch, os.W_OK):
            raise IsolationError(f"container mode but scratch {scratch} is not writable; "
                                 "mount a tmpfs there (--tmpfs /tmp)")
        return WorkerIsolation("container", scratch, None, drop_caps=False)
    if mode != "auto":
        raise IsolationError(f"unknown isolation mode {mode!r} (auto or container)")
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        flags = CLONE_NEWNS | CLONE_NEWNET
        if _libc.unshare(flags) != 0:
            err = ctypes.get_errno()
            raise IsolationError(
                f"cannot create network/mount namespaces as root ({os.strerror(err)}); "
                "inside a container run with GRADER_SANDBOX_ISOLATION=container"
            )
        sandbox_uid: int | None = SANDBOX_UID_BASE + worker_index
        mode_name = "namespaces"
        drop_caps = False
    else:
        if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise IsolationError(
                f"cannot create a user namespace as uid {uid} ({os.strerror(err)}); run the "
                "grader as root, enable unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1), or use the grader container"
            )
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
        sandbox_uid = None
        mode_name = "userns"
        drop_caps = True
    try:
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        if sandbox_uid is not None:
            _expose_python(scratch)
        _make_everything_readonly()
        opts = SCRATCH_TMPFS_OPTS.encode()
        _check(
            _libc.mount(b"grader-scratch", scratch.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts),
            f"mount tmpfs on {scratch}",
        )
    except OSError as exc:
        raise IsolationError(f"cannot set up the read-only mount namespace: {exc}") from None
    if not _loopback_only():
        raise IsolationError("the new network namespace still shows interfaces besides lo")
    return WorkerIsolation(mode_name, scratch, sandbox_uid, drop_caps)


# ---------------------------------------------------------------------------------------------
# seccomp

# Syscalls a CPython program (computation, files in its directory, threads, time) needs.
_ALLOW = ["read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "lseek", "close", "fstat", "newfstatat", "stat", "lstat", "statx", "fstatfs", "statfs", "open", "openat", "openat2", "access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "fcntl", "dup", "dup2", "dup3", "pipe", "pipe2", "ioctl", "mmap", "munmap", "mprotect", "mremap", "brk", "madvise", "mincore", "msync", "mlock", "munlock", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "rt_sigpending", "rt_sigtimedwait", "rt_sigsuspend", "rt_sigqueueinfo", "restart_syscall", "pause", "alarm", "getitimer", "setitimer", "futex", "futex_waitv", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "gettid", "getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "getpgrp", "getpgid", "getsid", "getrlimit", "getrusage", "getpriority", "sched_yield", "sched_getaffinity", "sched_getparam", "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min", "getcpu", "membarrier", "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "times", "getrandom", "uname", "sysinfo", "umask", "exit", "exit_group", "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime", "mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "rmdir", "ftruncate", "truncate", "fsync", "fdatasync", "fallocate", "fadvise64", "flock", "chmod", "fchmod", "fchmodat", "utime", "utimes", "utimensat", "futimesat", "symlink", "symlinkat", "sendfile", "copy_file_range", "splice", "tee", "memfd_create", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr", "close_range"]

# Syscalls whose use is an escape attempt: the child is killed (verdict "violation").
_KILL = ["fork", "vfork", "execve", "execveat", "socketpair", "connect", "bind", "listen", "accept", "accept4", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "getsockopt", "setsockopt", "shutdown", "getsockname", "getpeername", "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "pidfd_open", "pidfd_send_signal", "kcmp", "mount", "umount", "umount2", "unshare", "setns", "pivot_root", "chroot", "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree", "mount_setattr", "quotactl", "acct", "lookup_dcookie", "iopl", "ioperm"]

_seccomp: Any = None


def _load_seccomp_module() -> Any:
    global _seccomp
    if _seccomp is None:
        try:
            import pyseccomp
        except (ImportError, OSError) as exc:
            try:
                import seccomp as pyseccomp  # Debian's python3-seccomp
            except ImportError:
                raise IsolationError(
                    f"seccomp unavailable ({exc}); install libseccomp "
                    "(apt-get install libseccomp2) and `pip install pyseccomp`"
                ) from None
        _seccomp = pyseccomp
    return _seccomp


def _export(flt: Any) -> BpfProgram:
    """libseccomp's generated BPF for ``flt``, loadable cheaply in each child."""
    fd = os.memfd_create("seccomp-bpf")
    try:
        with os.fdopen(os.dup(fd), "wb") as fh:
            flt.export_bpf(fh)
        code = os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
    try:
        return BpfProgram(code, fallback=flt)
    except ValueError as exc:
        raise IsolationError(f"libseccomp exported a bad filter program: {exc}") from None


# The judge talks to the worker over a socket it inherits; it may use, never create, sockets.
_JUDGE_SOCKET_IO = ("sendto", "recvfrom", "sendmsg", "recvmsg", "getsockopt", "getsockname")
# What the template process needs beyond a program's allow-list: its socket to the worker,
# forking and reaping, and the calls a new child makes while confining itself. The delta
# filter each program child adds takes exactly these away again.
_TEMPLATE_EXTRA_KILL = ("sendto", "recvfrom", "sendmsg", "recvmsg")
_TEMPLATE_EXTRA_EPERM = ("wait4", "waitid", "setsid", "setgroups", "setresgid", "setresuid",
                         "prctl", "capset", "seccomp")


@dataclass
class SeccompFilters:
    """The filters, as libseccomp-generated BPF programs.

    ``template``: loaded once by the template process (a program's allow-list plus
    _TEMPLATE_EXTRA_*, clone for processes and prlimit64 to set limits); ``program_delta``:
    loaded by each program child on top of it (default allow; takes the extras away), so a
    child's effective filter is exactly ``program``; ``judge``: the judge's filter;
    ``program``: the program filter as one program (for reference and tests). Stacking costs
    each child the load of a small filter instead of the kernel's preparation of a large one.
    """

    template: BpfProgram
    program_delta: BpfProgram
    program: BpfProgram
    judge: BpfProgram


def build_seccomp_filters() -> SeccompFilters:
    return SeccompFilters(
        template=_export(_build_libseccomp_filter(template=True)),
        program_delta=_export(_build_delta_filter()),
        program=_export(_build_libseccomp_filter()),
        judge=_export(_build_libseccomp_filter(_JUDGE_SOCKET_IO)),
    )


def build_seccomp_filter(judge: bool = False) -> BpfProgram:
    """The program children's filter, or (``judge=True``) the judge's: the same plus I/O on
    already-open sockets."""
    return _export(_build_libseccomp_filter(_JUDGE_SOCKET_IO if judge else ()))


def _build_delta_filter() -> Any:
    sc = _load_seccomp_module()
    flt = sc.SyscallFilter(sc.ALLOW)
    with contextlib.suppress(ValueError, RuntimeError, OSError):
        for name in _TEMPLATE_EXTRA_KILL:
            flt.add_rule(sc.KILL_PROCESS, name)
        for name in _TEMPLATE_EXTRA_EPERM:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        flt.add_rule(sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        flt.add_rule(sc.ERRNO(errno.EPERM), "prlimit64", sc.Arg(2, sc.NE, 0))
    return flt


def _build_libseccomp_filter(extra_allow: tuple[str, ...] = (), template: bool = False) -> Any:
    """The allow-list filter (libseccomp): allowed, killed, or failing with EPERM (default)."""
    if template:
        extra_allow = (*extra_allow, *_TEMPLATE_EXTRA_KILL, *_TEMPLATE_EXTRA_EPERM)
    sc = _load_seccomp_module()
    flt = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    # A binary search over syscall numbers instead of a linear chain: cheaper to load (the
    # kernel pre-evaluates the filter for every syscall) and to run.
    with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
        flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)

    def rule(action: Any, name: str, *args: Any) -> None:
        with contextlib.suppress(ValueError, RuntimeError, OSError):  # not on this architecture
            flt.add_rule(action, name, *args)

    for name in (*_ALLOW, *extra_allow):
        rule(sc.ALLOW, name)
    for name in _KILL:
        if name not in extra_allow:
            rule(sc.KILL_PROCESS, name)
    if template:
        rule(sc.ALLOW, "clone")
        rule(sc.ALLOW, "prlimit64")
    else:
        # Threads yes, processes no: clone must carry CLONE_THREAD.
        rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
        rule(sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    # clone3 takes its flags through a pointer a filter cannot read: make glibc fall back.
    rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # Local (AF_UNIX) sockets fail quietly (glibc's NSS probes nscd); any other family kills.
    rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.EQ, socket.AF_UNIX))
    rule(sc.KILL_PROCESS, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    # Signals only to its own process group (the new session holds just this child).
    rule(sc.ALLOW, "kill", sc.Arg(0, sc.EQ, 0))
    rule(sc.ERRNO(errno.EPERM), "kill", sc.Arg(0, sc.NE, 0))
    if not template:
        # Reading rlimits is fine; changing them is not.
        rule(sc.ALLOW, "prlimit64", sc.Arg(2, sc.EQ, 0))
        rule(sc.ERRNO(errno.EPERM), "prlimit64", sc.Arg(2, sc.NE, 0))
    return flt


# ---------------------------------------------------------------------------------------------
# child confinement


def describe_signal(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def safe_rmtree(path: str) -> None:
    """Remove a sample directory without following links the sample may have planted."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        # Something the sample made unremovable for root (a read-only dir of its own): chmod.
        for root, dirs, _files in os.walk(path):
            for d in dirs:
                sub = os.path.join(root, d)
                if not os.path.islink(sub):
                    with contextlib.suppress(OSError):
                        os.chmod(sub, 0o700)
        shutil.rmtree(path, ignore_errors=True)


def python_info() -> str:
    return f"{sys.implementation.name} {sys.version.split()[0]}"
