"""The worker's clean-up of /work between samples: no recursion, no link followed, nothing
left, whatever a sample made there; and a sample never sees what an earlier one left."""

from __future__ import annotations

import os
from pathlib import Path

from grader_sandbox import GraderPool
from grader_sandbox.isolation import empty_dir


def _deep(root: Path, depth: int) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):  # deeper than PATH_MAX allows as one path: walk by descriptor
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)


def test_empty_dir_removes_trees_of_any_depth_without_following_links(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    _deep(work, 3000)  # a recursive walk would hit Python's recursion limit
    (work / "link").symlink_to(outside)
    (work / "dirlink").symlink_to(outside, target_is_directory=True)
    locked = work / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0)
    for i in range(500):
        (work / f"f{i}").write_text("x")
    removed = empty_dir(str(work))
    assert os.listdir(work) == []
    assert removed >= 3000 + 500
    assert (outside / "keep.txt").read_text() == "mine"


def test_a_sample_never_sees_what_an_earlier_one_left_in_work(pool: GraderPool) -> None:
    plant = ("import os\ndef f(x):\n    open('/work/planted', 'w').write('x')\n"
             "    os.makedirs('/tmp/a/b', exist_ok=True)\n"
             "    os.chdir('/work')\n"
             "    for _ in range(1500):\n"
             "        os.mkdir('d'); os.chdir('d')\n"
             "    return x * 2\n")
    probe = "import os\ndef f(x):\n    return len(os.listdir('/work')) or x * 2\n"
    reqs = [{"id": str(i), "style": "call", "entry_point": "f", "code": code,
             "tests": [{"args": [2], "expected": 4}]}
            for i, code in enumerate([plant, probe] * (2 * pool.workers))]
    verdicts = pool.grade(reqs)
    assert [v.status for v in verdicts] == ["passed"] * len(reqs), [v.to_dict() for v in verdicts]
