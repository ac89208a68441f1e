"""jaxcnn's XLA:CPU switches: added to $XLA_FLAGS before JAX starts, never over the user's."""

from __future__ import annotations

import subprocess
import sys

from jaxcnn import xla_flags


def test_the_switches_are_added_and_the_users_own_flags_kept():
    assert xla_flags.with_cpu_flags("") == "--xla_cpu_prefer_vector_width=512"
    assert xla_flags.with_cpu_flags("--xla_dump_to=/tmp/d") == (
        "--xla_dump_to=/tmp/d --xla_cpu_prefer_vector_width=512"
    )
    assert xla_flags.with_cpu_flags(" --xla_cpu_prefer_vector_width=256 ") == (
        "--xla_cpu_prefer_vector_width=256"
    )
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    xla_flags.configure(environ)
    xla_flags.configure(environ)  # twice: nothing added twice
    assert environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        "--xla_cpu_prefer_vector_width=512",
    ]


def test_no_command_starts_jax_backend_on_import():
    # XLA reads $XLA_FLAGS when the first backend starts; each command sets it in main(),
    # which is only in time if importing the command computed nothing.
    commands = ["train", "evaluate", "predict", "grads", "explain", "visualize"]
    code = (
        f"import {', '.join(f'jaxcnn.{name}' for name in commands)}\n"
        "from jax._src import xla_bridge\n"
        "print(xla_bridge.backends_are_initialized())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
