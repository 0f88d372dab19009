"""The old name of `spin_runtime.steps.step_progress`, kept (as the same module object) only while
spin_runtime/local.py and steps/evaluate.py, edited elsewhere, still import it: delete it once they
import `step_progress`."""

import sys

from spin_runtime.steps import step_progress

sys.modules[__name__] = step_progress
