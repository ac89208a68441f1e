"""The XLA:CPU switches jaxcnn turns on, each chosen on measurements.

XLA reads ``$XLA_FLAGS`` once, when JAX starts its first backend, so every command calls
:func:`configure` before it computes anything. A flag already in ``$XLA_FLAGS`` is left
as the user set it, so ``XLA_FLAGS=--xla_cpu_prefer_vector_width=256`` undoes the choice.

``--xla_cpu_prefer_vector_width=512``: XLA:CPU generates 256-bit vector code by default,
even where the CPU has AVX-512. With 512-bit vectors, on this project's AVX-512 machines,
a test pass over the 10,000 test images took 4–20% less time (medians of three runs of
``experiments/xla_cpu_flags.py``: 559 → 505, 611 → 587 and 635 → 510 ms) and the
training step was within the machine's drift (8.88 → 9.44, 9.18 → 8.96 and
9.36 → 9.01 ms), with the same ``params_sha256`` after 100 steps. A CPU without AVX-512
cannot use such vectors, and XLA generates the same code there as without the flag.
XLA's oneDNN switch (``--xla_cpu_experimental_onednn_custom_call=true``) was measured
too and is not used: it made neither faster here.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: The flags jaxcnn adds to ``$XLA_FLAGS``, with their values.
CPU_FLAGS = {"--xla_cpu_prefer_vector_width": "512"}


def with_cpu_flags(xla_flags: str) -> str:
    """Return ``xla_flags`` with each of :data:`CPU_FLAGS` it does not set already added."""
    present = {word.split("=", 1)[0] for word in xla_flags.split()}
    added = [f"{name}={value}" for name, value in CPU_FLAGS.items() if name not in present]
    return " ".join([*xla_flags.split(), *added])


def configure(environ: MutableMapping[str, str] | None = None) -> None:
    """Add :data:`CPU_FLAGS` to ``$XLA_FLAGS``; effective only before JAX's backend starts."""
    environ = os.environ if environ is None else environ
    environ["XLA_FLAGS"] = with_cpu_flags(environ.get("XLA_FLAGS", ""))
