"""The isolation layers: worker namespaces, the samples' filesystem view, and seccomp.

Layers, outermost first (grader_sandbox/README.md, "Isolation", says what each one stops):

1. The worker process (started by the pool from a clean interpreter) moves itself into new
   network and mount namespaces: no interface but a down loopback, every mount read-only, a
   small private tmpfs the only writable place. As root directly; otherwise (an unprivileged
   user, or the grader container) through a user namespace. In the container the worker also
   verifies what the container promises (``--network none --read-only``).
2. The samples' *view*: a tmpfs root built once per worker holding read-only bind mounts of
   only what the interpreter needs (the standard library without site-packages, the system
   libraries, ``/etc/ld.so.cache``, five device nodes) and an empty ``/work`` (``/tmp`` is a
   link to it). No ``/proc``, no ``/sys``, no shared ``/tmp``, no home, no datasets, no
   request files. The template process pivots into it; every program child and judge lives
   in it.
3. Every sample runs in a child forked from the template into its own PID namespace (it is
   process 1 and sees no other process), works in ``/work`` (a small tmpfs, its only writable
   place, which the worker empties after it), takes a fresh uid as root (from a block of
   uids locked for this worker on this machine, so it matches no other process) and the
   confinement of confine.py, seccomp last.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import socket
import sysconfig
from dataclasses import dataclass
from typing import Any

from grader_sandbox.confine import BpfProgram, check

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
SYS_MOUNT_SETATTR = 442  # same number on every architecture (added in Linux 5.12)

# As root, each worker locks a block of UID_BLOCK_SIZE uids for its lifetime (a lock file per
# block in UID_LOCK_DIR, shared by every pool on the machine): the judge gets the block's first
# uid, program children the others in turn, so no sandboxed process shares a uid with any
# process outside its own sample.
UID_BLOCK_BASE = 0x20000000
UID_BLOCK_SIZE = 1 << 16
UID_BLOCKS = 4096
UID_LOCK_DIR = os.environ.get("GRADER_SANDBOX_UID_LOCK_DIR", "/run/grader-sandbox")
SCRATCH_TMPFS_OPTS = "size=16m,nr_inodes=4096,mode=0755"
# The samples' /work: one tmpfs per worker, bounded in bytes and in files; the worker empties
# it after each sample (`empty_dir`), before the next sample's clock starts.
WORK_TMPFS_OPTS = "size=64m,nr_inodes=4096,mode=0700"
DEVICES = ("null", "zero", "full", "random", "urandom")

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
    view: str  # root of the samples' filesystem view (a path in the worker's mount namespace)
    uid_base: int | None  # root: this worker's uid block (judge = base, programs after it)
    uid_count: int
    drop_caps: bool

def layers(iso: WorkerIsolation) -> dict[str, str]:
    """Which isolation layers are active for this worker, in words (``check`` prints them)."""
    base = {"namespaces": "root: network and mount namespaces",
            "userns": "a user namespace (unprivileged), with network and mount namespaces",
            "container": "the container (--network none, --read-only), then a user namespace "
                         "with network and mount namespaces"}[iso.mode]
    uid = (f"a fresh uid per sample from the locked block {iso.uid_base}.."
           f"{iso.uid_base + iso.uid_count - 1}" if iso.uid_base is not None else
           "the invoking user's uid outside the namespaces, every capability dropped")
    return {
        "worker": base,
        "network": "no interface but a down loopback",
        "filesystem": "a read-only view: the standard library (no site-packages), system "
                      "libraries, ld.so.cache, /dev/{" + ",".join(DEVICES) + "}, /tmp a link to "
                      "/work; no /proc, /sys, shared /tmp, home or datasets",
        "processes": "each child process 1 of its own PID namespace",
        "files": "/work: a tmpfs of 64 MiB and 4096 files, emptied by the worker after each "
                 "sample (no recursion), before the next sample's clock",
        "uid": uid,
        "limits": "rlimits (CPU, address space, file size, 64 files, no core), no_new_privs, "
                  "not dumpable, parent-death signal",
        "seccomp": "an allow-list filter per child (fork, exec, sockets, ptrace, mount ... "
                   "kill the sample)",
    }


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _uid_lock_dir() -> str:
    """The first usable directory for the uid locks: root's own, not writable by others."""
    tried = []
    for path in (UID_LOCK_DIR, "/tmp/grader-sandbox-uids"):
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
            st = os.lstat(path)
        except OSError as exc:
            tried.append(f"{path}: {exc.strerror}")
            continue
        if st.st_uid == 0 and not st.st_mode & 0o022 and os.path.isdir(path) \
                and not os.path.islink(path):
            return path
        tried.append(f"{path}: not a root-owned directory closed to others")
    raise IsolationError("no directory for the sandbox uid locks (" + "; ".join(tried) +
                         "); set GRADER_SANDBOX_UID_LOCK_DIR to a directory root owns")


def claim_uid_block() -> tuple[int, int]:
    """Lock a free block of uids for this worker: (first uid, the lock's descriptor)."""
    lock_dir = _uid_lock_dir()
    start = int.from_bytes(os.urandom(2), "little") % UID_BLOCKS
    for k in range(UID_BLOCKS):
        n = (start + k) % UID_BLOCKS
        fd = os.open(os.path.join(lock_dir, f"uids-{n}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return UID_BLOCK_BASE + n * UID_BLOCK_SIZE, fd
    raise IsolationError(f"all {UID_BLOCKS} sandbox uid blocks are in use on this machine")


def _library_dirs() -> set[str]:
    """Directories the dynamic loader needs: the multiarch and 64-bit library directories,
    and the directory of every shared object this process has mapped. Not all of /usr/lib:
    other software keeps whole Python installations (and their packages) there."""
    dirs = set()
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in ("/lib64", "/usr/lib64", f"/lib/{arch}", f"/usr/lib/{arch}"):
        if arch or not d.endswith("/"):
            dirs.add(d)
    with contextlib.suppress(OSError), open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith("/") and ".so" in os.path.basename(path):
                dirs.add(os.path.dirname(path))
    return {os.path.realpath(d) for d in dirs if os.path.isdir(d)}


def _view_sources() -> tuple[list[str], list[str]]:
    """(paths bound read-only into the samples' view at the same place, paths hidden there)."""
    paths = sysconfig.get_paths()
    binds = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib")} | _library_dirs()
    if os.path.isfile("/etc/ld.so.cache"):
        binds.add("/etc/ld.so.cache")
    # Keep only the outermost of nested paths.
    outer = sorted(p for p in binds if not any(p != q and p.startswith(q + "/") for q in binds))
    hidden = {os.path.realpath(paths[k]) for k in ("purelib", "platlib")}
    import site

    with contextlib.suppress(AttributeError):
        hidden.update(os.path.realpath(p) for p in site.getsitepackages())
    for root in outer:  # any package directory below a bound one, a few levels deep
        if not os.path.isdir(root):
            continue
        base = root.count(os.sep)
        for here, subdirs, _files in os.walk(root):
            if here.count(os.sep) - base >= 6:
                subdirs[:] = []
            for d in subdirs:
                if d in ("site-packages", "dist-packages"):
                    hidden.add(os.path.realpath(os.path.join(here, d)))
            subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages")
                          and not os.path.islink(os.path.join(here, d))]
    shown = [h for h in sorted(hidden) if os.path.isdir(h)
             and any(h == r or h.startswith(r + "/") for r in outer)]
    return outer, shown


def build_view(scratch: str) -> str:
    """The samples' filesystem: a read-only tmpfs root with read-only binds of what the
    interpreter needs and nothing else (see the module docstring). Returns its path."""
    view = os.path.join(scratch, "view")
    os.mkdir(view, 0o755)
    _check(_libc.mount(b"grader-view", view.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                       b"size=1m,nr_inodes=4096,mode=0755"), "mount the view's tmpfs")
    binds, hidden = _view_sources()
    for src in binds:
        dst = view + src
        if os.path.isdir(src):
            os.makedirs(dst, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
            open(dst, "w").close()
        _check(_libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None),
               f"bind {src} into the view")
    for lib in ("/lib", "/lib64", "/lib32"):  # merged /usr: the same links as on the host
        if os.path.islink(lib) and not os.path.lexists(view + lib):
            os.symlink(os.readlink(lib), view + lib)
    for path in hidden:
        _check(_libc.mount(b"hidden", (view + path).encode(), b"tmpfs",
                           MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,nr_inodes=2,mode=0555"),
               f"hide {path} in the view")
    os.makedirs(view + "/dev", mode=0o755)
    for dev in DEVICES:
        if os.path.exists(f"/dev/{dev}"):
            open(f"{view}/dev/{dev}", "w").close()
            _check(_libc.mount(f"/dev/{dev}".encode(), f"{view}/dev/{dev}".encode(), None,
                               MS_BIND, None), f"bind /dev/{dev} into the view")
    os.mkdir(view + "/work", 0o755)
    os.symlink("/work", view + "/tmp")
    _make_readonly(view)
    # the samples' only writable place, mounted after the rest was made read-only
    _check(_libc.mount(b"grader-work", (view + "/work").encode(), b"tmpfs",
                       MS_NOSUID | MS_NODEV, WORK_TMPFS_OPTS.encode()), "mount the work tmpfs")
    return view


_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602


def clear_dir_marks(path: str) -> None:
    """Reset what a sample can leave on a directory it owns besides its entries, mode and
    times: extended attributes (tmpfs keeps user.*) and inode flags (FS_IOC_SETFLAGS: nodump,
    noatime, ...). Raises OSError when one cannot be cleared (the caller must not reuse the
    directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in os.listxattr(fd):
            os.removexattr(fd, name)
        try:
            flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(4)), "little")
        except OSError as exc:  # a filesystem without inode flags: nothing to reset
            if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            flags = 0
        if flags:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, bytes(4))
        if os.listxattr(fd):
            raise OSError(errno.EPERM, f"extended attributes of {path} cannot be removed")
    finally:
        os.close(fd)


def empty_dir(path: str) -> int:
    """Remove everything under ``path`` (kept itself), without recursion and without
    following links: non-empty directories are flattened (their entries renamed up into
    ``path``) until nothing is left, so a tree of any depth costs one rename or unlink per
    entry. Returns the number of entries removed."""
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    removed = moved = 0
    tag = os.urandom(4).hex()
    try:
        while True:
            names = os.listdir(top)
            if not names:
                return removed
            for name in names:
                try:
                    os.unlink(name, dir_fd=top)
                    removed += 1
                    continue
                except IsADirectoryError:
                    pass
                except FileNotFoundError:
                    continue
                try:
                    os.rmdir(name, dir_fd=top)
                    removed += 1
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY:
                        raise
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=top)
                try:
                    os.fchmod(sub, 0o700)  # a directory the sample made unreadable
                    for child in os.listdir(sub):
                        moved += 1
                        os.rename(child, f".{tag}-{moved}", src_dir_fd=sub, dst_dir_fd=top)
                finally:
                    os.close(sub)
    finally:
        os.close(top)


def _make_readonly(path: str) -> None:
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    ret = _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE,
                        ctypes.byref(attr), ctypes.sizeof(attr))
    _check(ret, f"mount_setattr({path}, AT_RECURSIVE, MOUNT_ATTR_RDONLY)")


def _loopback_only() -> bool:
    """True when this process's network namespace has no interface but ``lo``. Read from
    /proc/self/net/dev (per namespace), so no socket is needed to ask."""
    try:
        with open("/proc/self/net/dev") as fh:
            lines = fh.read().splitlines()[2:]
    except OSError:
        return False
    return all(line.split(":", 1)[0].strip() == "lo" for line in lines if ":" in line)


def _enter_user_namespace(container: bool) -> None:
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        fix = ("run the container with --security-opt seccomp=containers/grader/seccomp.json "
               "(it allows the namespaces the sandbox needs) on a kernel with unprivileged "
               "user namespaces" if container else
               "run the grader as root, enable unprivileged user namespaces "
               "(sysctl kernel.unprivileged_userns_clone=1), or use the grader container")
        raise IsolationError(f"cannot create a user namespace as uid {uid} "
                             f"({os.strerror(err)}); {fix}")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")


def setup_worker(scratch: str, mode: str, worker_index: int) -> tuple[WorkerIsolation, int]:
    """Enter the worker's namespaces, make ``scratch`` a private tmpfs and build the samples'
    view in it. Returns the isolation and the descriptor holding the uid block's lock (-1
    without one), which the worker keeps open for its lifetime.

    ``mode``: "auto" (namespaces as root, else a user namespace) or "container" (verify that
    the container gives no network and a read-only root, then a user namespace).
    """
    del worker_index  # uid blocks are claimed, not derived from the index
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
    elif mode != "auto":
        raise IsolationError(f"unknown isolation mode {mode!r} (auto or container)")
    lock_fd = -1
    uid_base: int | None = None
    if mode == "auto" and os.getuid() == 0:
        uid_base, lock_fd = claim_uid_block()
        if _libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise IsolationError(
                f"cannot create network/mount namespaces as root ({os.strerror(err)}); "
                "inside a container run with GRADER_SANDBOX_ISOLATION=container"
            )
        mode_name, drop_caps = "namespaces", False
    else:
        _enter_user_namespace(container=mode == "container")
        mode_name, drop_caps = ("container" if mode == "container" else "userns"), True
    try:
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        _make_readonly("/")
        opts = SCRATCH_TMPFS_OPTS.encode()
        _check(
            _libc.mount(b"grader-scratch", scratch.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts),
            f"mount tmpfs on {scratch}",
        )
        view = build_view(scratch)
    except OSError as exc:
        raise IsolationError(f"cannot set up the read-only mount namespace: {exc}") from None
    if not _loopback_only():
        raise IsolationError("the new network namespace still shows interfaces besides lo")
    iso = WorkerIsolation(mode_name, scratch, view, uid_base,
                          UID_BLOCK_SIZE if uid_base is not None else 0, drop_caps)
    return iso, lock_fd


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


# What the template process needs beyond a program's allow-list: its socket to the worker,
# forking and reaping, and the calls a new child makes while confining itself (changing uid,
# dropping capabilities). The delta filter each child adds takes
# exactly these away again.
_SOCKET_IO = ("sendto", "recvfrom", "sendmsg", "recvmsg", "getsockopt", "getsockname")
_TEMPLATE_EXTRA_KILL = _SOCKET_IO
_TEMPLATE_EXTRA_EPERM = ("wait4", "waitid", "setsid", "setgroups", "setresgid", "setresuid",
                         "prctl", "capset", "seccomp")


@dataclass
class SeccompFilters:
    """The filters, as libseccomp-generated BPF programs.

    ``template``: loaded once by the template process (a program's allow-list plus
    _TEMPLATE_EXTRA_*, clone for processes and prlimit64 to set limits); ``program_delta``:
    loaded by each program child on top of it (default allow; takes the extras away), so a
    child's effective filter is exactly ``program``; ``judge_delta``: the judge's, which keeps
    I/O on the socket it inherits (it creates none: ``socket`` stays refused); ``program``: the program
    filter as one program (for reference and tests). Stacking costs each child the load of a
    small filter instead of the kernel's preparation of a large one.
    """

    template: BpfProgram
    program_delta: BpfProgram
    judge_delta: BpfProgram
    program: BpfProgram


def build_seccomp_filters() -> SeccompFilters:
    return SeccompFilters(
        template=_export(_build_libseccomp_filter(template=True)),
        program_delta=_export(_build_delta_filter()),
        judge_delta=_export(_build_delta_filter(judge=True)),
        program=_export(_build_libseccomp_filter()),
    )


def _build_delta_filter(judge: bool = False) -> Any:
    sc = _load_seccomp_module()
    flt = sc.SyscallFilter(sc.ALLOW)
    with contextlib.suppress(ValueError, RuntimeError, OSError):
        for name in _TEMPLATE_EXTRA_KILL:
            if judge and name in _SOCKET_IO:
                continue
            flt.add_rule(sc.KILL_PROCESS, name)
        for name in _TEMPLATE_EXTRA_EPERM:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        flt.add_rule(sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        flt.add_rule(sc.ERRNO(errno.EPERM), "prlimit64", sc.Arg(2, sc.NE, 0))
    return flt


def _build_libseccomp_filter(template: bool = False) -> Any:
    """The allow-list filter (libseccomp): allowed, killed, or failing with EPERM (default)."""
    extra_allow = (*_TEMPLATE_EXTRA_KILL, *_TEMPLATE_EXTRA_EPERM) if template else ()
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
