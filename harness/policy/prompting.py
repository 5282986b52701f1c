"""Prompts for a task, and the code graded from a model's reply.

Base models (no chat template) see `task.prompt`, code they continue, and their completion is
graded after `task.code_prefix` as generated.

Instruct models see the tokenizer's chat template applied to two turns, a system prompt and a
user message built from the task's test style:

    SYSTEM_PROMPT
    user, a function to write (`call` and `assert` styles: APPS/TACO call-based, LiveCodeBench
    LeetCode, MBPP):
        <statement>
        [Use this starter code: ```python <starter_code>```]
        FUNCTION_INSTRUCTION (function `<fn>`, or method `<fn>` of class `Solution` when the
        starter code declares that class)
    user, a program (`stdio` style: APPS/TACO standard input, CodeContests, LiveCodeBench
    AtCoder / Codeforces):
        <statement>
        PROGRAM_INSTRUCTION
    user, code to complete (no statement: HumanEval, the synthetic family):
        COMPLETE_INSTRUCTION ```python <starter_code or prompt>```  + the function / program
        sentence of its style

A template that rejects a system turn (some Gemma versions) gets the system prompt as the
first paragraph of the user message. The code graded is the first fenced python block of the
reply (one that defines the function preferred), else the reply with prose cut away, placed
after `task.chat_prefix` (`harness.tasks.program`). `prompt_record` returns the exact text
the model saw, to store with the results.
"""

from __future__ import annotations

from typing import Any

from harness.policy.extract import extract_code, truncate_at_stops
from harness.tasks.base import Task

SYSTEM_PROMPT = (
    "You are an expert Python programmer. Solve the problem with correct, efficient Python 3 "
    "code. Reply with the complete code in a single ```python code block.")
FUNCTION_INSTRUCTION = (
    "Write a Python function named `{fn}` that solves the problem. It is called directly with "
    "the arguments: do not read input or print the answer. Give the complete code (imports "
    "and helper functions included) in one ```python code block.")
METHOD_INSTRUCTION = (
    "Implement the method `{fn}` of the class `Solution` in the starter code. It is called "
    "directly with the arguments: do not read input or print the answer. Give the complete "
    "class (imports and helper functions included) in one ```python code block.")
PROGRAM_INSTRUCTION = (
    "Write a complete Python 3 program that reads the input from standard input and writes "
    "the answer to standard output, printing nothing else. Give the whole program in one "
    "```python code block.")
COMPLETE_INSTRUCTION = "Complete the following Python code."
STARTER_INTRO = "Use this starter code:"


def _fenced(code: str) -> str:
    return f"```python\n{code if code.endswith(chr(10)) else code + chr(10)}```"


def _style_sentence(task: Task) -> str:
    fn = task.function_name
    if fn is None:
        return PROGRAM_INSTRUCTION
    if "class Solution" in task.starter_code:
        return METHOD_INSTRUCTION.format(fn=fn)
    return FUNCTION_INSTRUCTION.format(fn=fn)


def user_message(task: Task) -> str:
    """The user turn an instruct model gets for `task` (see the module docstring)."""
    if not task.statement.strip():
        code = task.starter_code or task.prompt
        return f"{COMPLETE_INSTRUCTION}\n\n{_fenced(code)}\n\n{_style_sentence(task)}"
    parts = [task.statement.strip()]
    if task.starter_code.strip():
        parts.append(f"{STARTER_INTRO}\n{_fenced(task.starter_code)}")
    parts.append(_style_sentence(task))
    return "\n\n".join(parts)


def chat_messages(task: Task, system: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """[system, user] turns for `task` (user only when `system` is None)."""
    user = {"role": "user", "content": user_message(task)}
    return [{"role": "system", "content": system}, user] if system else [user]


def apply_chat_template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The template's text with the generation prompt; a template that rejects the system
    turn gets it merged into the first user message."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    except Exception:
        if not messages or messages[0]["role"] != "system":
            raise
        merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n"
                   f"{messages[1]['content']}"}, *messages[2:]]
        return tokenizer.apply_chat_template(merged, tokenize=False,
                                             add_generation_prompt=True)


def render_prompt(policy: Any, task: Task) -> str:
    """The exact text given to `policy` for `task`: `task.prompt` for a base model, the chat
    template over `chat_messages(task)` for a policy that uses one."""
    if not getattr(policy, "use_chat_template", False):
        return task.prompt
    return apply_chat_template(policy.tokenizer, chat_messages(task))


def prompt_record(policy: Any, task: Task) -> dict[str, Any]:
    """What to store with the results about the prompt of `task`: mode (`chat` or
    `completion`), the messages (chat), and the rendered text."""
    chat = bool(getattr(policy, "use_chat_template", False))
    rec: dict[str, Any] = {"task_id": task.task_id, "style": task.style,
                           "mode": "chat" if chat else "completion"}
    if chat:
        rec["messages"] = chat_messages(task)
    rec["text"] = render_prompt(policy, task)
    return rec


def prompt_records(policy: Any, splits: dict[str, list[Task]]) -> dict[str, dict[str, Any]]:
    """{task_id: prompt_record} over every task of the splits (each task once)."""
    return {t.task_id: prompt_record(policy, t) for tasks in splits.values() for t in tasks}


def completion_code(task: Task, text: str, chat: bool) -> str:
    """The code to grade from a model's output: extracted from a chat reply, or a base
    model's completion cut at the task's stop sequences (`meta["stop"]`, if any). Grade it
    with `grader_request(task, code, limits, id, chat=chat)`."""
    if chat:
        return extract_code(text, entry_point=task.function_name)
    stops = task.meta.get("stop") or ()
    return truncate_at_stops(text, stops) if stops else text
