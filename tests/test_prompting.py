"""Prompts for instruct models through the chat template, one per test style, recordable with
the results; base models see the task's own prompt."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.policy import (
    chat_messages,
    completion_code,
    prompt_record,
    prompt_records,
    render_prompt,
)
from harness.policy.prompting import (
    COMPLETE_INSTRUCTION,
    PROGRAM_INSTRUCTION,
    SYSTEM_PROMPT,
    user_message,
)
from harness.policy.tokenizer import build_char_tokenizer
from harness.spec.schema import TasksSpec
from harness.tasks import load_selection, synthetic

FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}"
             "<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>")


@pytest.fixture(autouse=True, scope="module")
def _datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    import datasets

    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("hf-datasets")
    yield
    datasets.config.HF_DATASETS_CACHE = old


def _tasks(source: str, file: str, **kw):
    sel = load_selection(TasksSpec(source=source, train=kw.pop("train", 1), eval=1, test=1,
                                   options={"data_files": str(FIX / file), **kw}))
    return {t.task_id: t for split in sel.splits.values() for t in split}


def _policy(template: str | None):
    tok = build_char_tokenizer()
    tok.chat_template = template
    return SimpleNamespace(tokenizer=tok, use_chat_template=template is not None)


def test_function_style_names_the_function_and_shows_the_starter_code():
    apps = _tasks("apps", "apps/test.jsonl", train=3, max_test_bytes=4096)
    leet = next(t for t in apps.values() if t.fn_name == "runningSum")
    msg = user_message(leet)
    assert msg.startswith(leet.statement)
    assert "Use this starter code:\n```python\nclass Solution:" in msg
    assert "Implement the method `runningSum` of the class `Solution`" in msg
    cw = next(t for t in apps.values() if t.fn_name == "sum_of_intervals")
    assert "Write a Python function named `sum_of_intervals`" in user_message(cw)


def test_stdio_style_asks_for_a_program_reading_stdin():
    cc = _tasks("code_contests", "code_contests/test.jsonl")
    msg = user_message(next(iter(cc.values())))
    assert msg.endswith(PROGRAM_INSTRUCTION) and "standard input" in msg


def test_assert_style_mbpp_shows_its_tests_and_humaneval_is_code_to_complete():
    mbpp = next(iter(_tasks("mbpp", "mbpp/full.jsonl").values()))
    msg = user_message(mbpp)
    assert "Your code should pass these tests" in msg and f"`{mbpp.entry_point}`" in msg
    he = next(iter(_tasks("humaneval", "humaneval/humaneval.jsonl").values()))
    msg = user_message(he)
    assert msg.startswith(COMPLETE_INSTRUCTION) and he.prompt in msg
    assert f"named `{he.entry_point}`" in msg


def test_chat_template_renders_system_and_user_turns():
    task = synthetic.split_tasks("eval", 1, 0)[0]
    text = render_prompt(_policy(TEMPLATE), task)
    assert text == f"<system>{SYSTEM_PROMPT}\n<user>{user_message(task)}\n<assistant>"
    assert [m["role"] for m in chat_messages(task)] == ["system", "user"]


def test_template_without_a_system_role_gets_it_in_the_user_turn():
    task = synthetic.split_tasks("eval", 1, 0)[0]
    text = render_prompt(_policy(NO_SYSTEM), task)
    assert text.startswith(f"<user>{SYSTEM_PROMPT}\n\n{user_message(task)}")


def test_base_models_see_the_task_prompt_and_the_record_says_so():
    task = synthetic.split_tasks("eval", 1, 0)[0]
    assert render_prompt(_policy(None), task) == task.prompt
    rec = prompt_record(_policy(None), task)
    assert rec == {"task_id": task.task_id, "style": task.style, "mode": "completion",
                   "text": task.prompt}
    chat = prompt_record(_policy(TEMPLATE), task)
    assert chat["mode"] == "chat" and chat["messages"] == chat_messages(task)
    assert chat["text"] == render_prompt(_policy(TEMPLATE), task)
    recs = prompt_records(_policy(None), {"eval": [task], "test": [task]})
    assert list(recs) == [task.task_id]


def test_completion_code_per_mode():
    he = next(iter(_tasks("humaneval", "humaneval/humaneval.jsonl").values()))
    assert completion_code(he, "    return 1\n\ndef junk():\n", chat=False) == "    return 1\n"
    reply = "Here you go:\n```python\ndef f():\n    return 1\n```\nDone."
    assert completion_code(he, reply, chat=True) == "def f():\n    return 1\n"
    syn = synthetic.split_tasks("eval", 1, 0)[0]
    assert completion_code(syn, "    x += 1\n\ndef g():\n", chat=False) == \
        "    x += 1\n\ndef g():\n"  # no stop sequences: as generated
