"""The local Ray the CLI, the benchmark and these tests start (flows.runtime.ray_setup.init_ray): the
daemons a single machine does not use are not started, and only ray.init is affected."""

from __future__ import annotations

import os

from support.processes import command_line, process_tree


def descendant_command_lines(root: int) -> list[str]:
    lines = (command_line(pid) for pid in process_tree(root).keys() - {root})
    return [line for line in lines if line is not None]  # None: exited meanwhile


def test_a_local_ray_runs_without_the_autoscaler_monitor_and_the_log_monitor(ray_cluster: None) -> None:
    from ray._private import parameter

    command_lines = descendant_command_lines(os.getpid())
    assert any("gcs_server" in line for line in command_lines)
    assert any("/raylet " in line for line in command_lines)
    assert any("dashboard/agent.py" in line or "DashboardAgent" in line for line in command_lines)
    assert not [line for line in command_lines if "log_monitor.py" in line]
    assert not [line for line in command_lines if "autoscaler/_private/monitor.py" in line]
    # The defaults were Ray's own again once ray.init returned.
    assert parameter.RayParams().no_monitor is False
