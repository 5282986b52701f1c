"""The limits on what a spec can ask for (docs/specs.md, "Limits").

A spec is a few kilobytes of YAML stating a grid and its settings. These limits keep a
mistyped or hostile spec from exhausting the machine before anything runs (a 50 MB file, a
YAML alias bomb, a mapping nested a thousand levels deep, five million seeds, `steps: 1e38`):
each is checked before the work it bounds, and each ends in one error line naming the limit.
They are generous: every registered spec is far within them (the largest GPU grids ask for
10 campaigns of 20 steps, 240 eval problems, 1,024 new tokens, 6 seeds, 30 cells).
"""

from __future__ import annotations

# The spec file (and every file it extends) is read only when it is at most this large.
MAX_SPEC_BYTES = 1 << 20  # 1 MiB
# Mappings and lists nested inside one another, the file's top-level mapping being level 1.
MAX_DEPTH = 500
# Nodes of the document with every YAML alias expanded (what the alias bomb multiplies).
MAX_NODES = 100_000
# Free-form values (`tasks.options`, a method's or a controller's `params`) nest at most this
# deep below the key that holds them.
MAX_VALUE_DEPTH = 32
# Cells of the grid: models x methods x controllers x seeds, before `exclude`.
MAX_CELLS = 10_000
# Entries of one grid axis (models, methods, controllers), of `seeds`, `exclude` and
# `comparisons`.
MAX_AXIS = 1_000
# Seeds, split and warm-start seeds: what every random generator the harness seeds accepts.
MAX_SEED = 2**32 - 1

# Sizes of the work a spec asks for, by field.
MAX_CAMPAIGNS = 1_000
MAX_STEPS = 100_000
MAX_PROBLEMS = 1_000_000  # per split: tasks.train, tasks.eval, tasks.test
MAX_SAMPLES = 1_024  # eval.samples_per_task, rollout.group_size
MAX_PROMPTS = 65_536  # rollout.prompts_per_step, optim.micro_batch_size
MAX_NEW_TOKENS = 1_048_576
MAX_WARMUP_STEPS = 1_000_000
MAX_FISHER_BATCHES = 10_000
MAX_GRADER_TIMEOUT_S = 3_600.0
MAX_GRADER_MEMORY_MB = 1_048_576  # 1 TiB
MAX_GRADER_OUTPUT_BYTES = 1 << 30  # 1 GiB
MAX_GRADER_WORKERS = 1_024
MAX_RESOURCES = 1_024  # resources.gpus_per_cell, resources.cpus_per_cell
# The tiny policy's recipe (it is built on the CPU, on first use).
MAX_TINY_WIDTH = 65_536  # hidden_size, intermediate_size
MAX_TINY_LAYERS = 256  # num_layers, num_heads
MAX_TINY_WARM = 10_000_000  # warm_steps, warm_tasks
MAX_TINY_BATCH = 65_536  # warm_batch

# Where the limits are documented (every limit error names it).
DOC = "docs/specs.md, Limits"


def value_depth(value: object) -> int:
    """How deep mappings and lists nest in `value` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = list(v.values())
        elif isinstance(v, list | tuple):
            children = list(v)
        else:
            continue
        deepest = max(deepest, d + 1)
        if d + 1 > MAX_VALUE_DEPTH + 1:
            break
        stack.extend((c, d + 1) for c in children)
    return deepest
