"""Fault injection for the crash tests: `VLM_CRASH_AT=<point>` SIGKILLs the process at that point.

Points: `<stage>:step<N>` (a training stage, right after its step N) and `write:<path>` (a stage
output complete in its temporary folder, before it replaces `<path>`). Unset, nothing happens.
"""

from __future__ import annotations

import os
import signal

ENV = "VLM_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        print(f"{ENV}={name}: killing this process with SIGKILL", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
