"""``python -m grader_sandbox {serve,grade,bench,check}``."""

import sys

from grader_sandbox.cli import main

sys.exit(main())
