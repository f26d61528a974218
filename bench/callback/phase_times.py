# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback of bench/fleet_role.py: when each task started and in which task file, written as JSON at the end."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: phase_times
type: aggregate
short_description: the start time and task file of every task, for bench/fleet_role.py
description:
  - Writes [[seconds, task file], ...] to the file named by the environment variable HOSTCPU_BENCH_PHASES.
requirements:
  - enabled in callbacks_enabled
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "phase_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.marks = []

    def mark(self, where: str) -> None:
        self.marks.append([time.perf_counter(), where])

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self.mark((task.get_path() or "").rsplit(":", 1)[0])

    def v2_playbook_on_stats(self, stats) -> None:
        self.mark("end")
        with open(os.environ["HOSTCPU_BENCH_PHASES"], "w", encoding="utf-8") as handle:
            json.dump(self.marks, handle)
