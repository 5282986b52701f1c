"""The grader container, run with the documented flags (needs a Docker engine).

The engine, the local base and the image come from the session fixture `docker_images`
(tests/conftest.py: containers/engine.sh, local-base.sh, build-local.sh); skipped, with the
reason, only where no engine can be started.
"""

from __future__ import annotations

import errno
import json
import platform
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
RUN_FLAGS = [
    "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=512m",
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
    "--security-opt", f"seccomp={ROOT / 'containers/grader/seccomp.json'}",
    "--pids-limit", "512", "--memory", "2g", "--memory-swap", "2g",
]

pytestmark = pytest.mark.slow


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image(docker_images: dict[str, str]) -> str:
    """The grader image built by containers/build-local.sh (tests/conftest.py)."""
    return docker_images["grader"]


def test_container_sandbox_starts_with_the_documented_flags(image: str) -> None:
    out = _docker("run", *RUN_FLAGS, image, "check", timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (got["isolation"], got["benign"], got["fork"]) == ("container", "passed", "violation")
    # the same layers as outside a container: a user namespace, the view, PID namespaces
    assert "user namespace" in got["layers"]["worker"]
    assert "no /proc" in got["layers"]["filesystem"]
    assert "PID namespace" in got["layers"]["processes"]


def test_container_refuses_to_start_under_dockers_default_seccomp_profile(image: str) -> None:
    at = RUN_FLAGS.index(f"seccomp={ROOT / 'containers/grader/seccomp.json'}")
    flags = RUN_FLAGS[:at - 1] + RUN_FLAGS[at + 1:]  # without --security-opt seccomp=...
    out = _docker("run", *flags, image, "check", timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "seccomp=containers/grader/seccomp.json" in out.stderr


def test_container_refuses_to_start_without_a_read_only_root(image: str) -> None:
    flags = [f for f in RUN_FLAGS if f != "--read-only"]
    out = _docker("run", *flags, image, "check", timeout=120)
    assert out.returncode == 2
    assert "--read-only" in out.stderr


def _probe_syscalls(image: str, profile: str) -> dict[str, int]:
    flags = list(RUN_FLAGS)
    flags[flags.index(f"seccomp={ROOT / 'containers/grader/seccomp.json'}")] = profile
    out = _docker("run", *flags, "-v", f"{FIXTURES}:/probe:ro", "--entrypoint", "python3",
                  image, "/probe/seccomp_probe.py", timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe's syscall numbers")
def test_container_profile_refuses_what_the_sandbox_does_not_need(image: str) -> None:
    # Outside any sample, in the container itself: the profile, not the per-sample filter.
    got = _probe_syscalls(image, f"seccomp={ROOT / 'containers/grader/seccomp.json'}")
    assert got.pop("clone3") == errno.ENOSYS  # so that libc falls back to clone
    assert {k: v for k, v in got.items() if v != errno.EPERM} == {}
    # The probe can tell: without the profile none of these fails with EPERM.
    loose = _probe_syscalls(image, "seccomp=unconfined")
    assert [k for k, v in loose.items() if v == errno.EPERM] == []
