"""JAX's persistent compilation cache: a second run of the same job compiles nothing.

Every jaxcnn command that compiles turns on JAX's own cache (``jax_compilation_cache_dir``,
see https://docs.jax.dev/en/latest/persistent_compilation_cache.html) in one folder:

- ``$JAXCNN_COMPILATION_CACHE`` if set: a folder, or ``off`` for no cache;
- else ``$XDG_CACHE_HOME/jaxcnn/xla``, that is ``~/.cache/jaxcnn/xla`` by default.

``python -m jaxcnn.train --no-compilation-cache`` turns it off for one run. Deleting the
folder is always safe: the next run compiles again and refills it. JAX keys each entry by
the computation, the jax/jaxlib version, the XLA flags and the device, so a changed
program or an upgrade never reads a stale entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from jaxcnn.errors import UsageError

CACHE_ENV = "JAXCNN_COMPILATION_CACHE"
#: The value of ``$JAXCNN_COMPILATION_CACHE`` that turns the cache off.
OFF = "off"
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """Return ``$XDG_CACHE_HOME/jaxcnn/xla``, or ``~/.cache/jaxcnn/xla`` without it."""
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxcnn" / "xla"


def chosen_cache_dir(environ: Mapping[str, str], turned_off: bool) -> Path | None:
    """Return the folder the cache should use, or None when it is turned off."""
    named = environ.get(CACHE_ENV, "").strip()
    if turned_off or named.lower() == OFF:
        return None
    return Path(named).expanduser() if named else default_cache_dir(environ)


def configure(turned_off: bool = False, environ: Mapping[str, str] | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on in its folder; return it (None: off).

    Every computation is cached, however quickly it compiled (JAX's default skips those
    under a second, which are most of a small CNN's). A default folder that cannot be
    created leaves the cache off with a note on stderr, as does ``turned_off``.

    Raises:
        UsageError: ``$JAXCNN_COMPILATION_CACHE`` names a folder that cannot be created.
    """
    environ = os.environ if environ is None else environ
    path = chosen_cache_dir(environ, turned_off)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(f"[Errno 13] Permission denied: '{path}'")
        except OSError as error:
            if environ.get(CACHE_ENV):
                raise UsageError(
                    f"${CACHE_ENV} {str(path)!r}: cannot use it as the compilation cache "
                    f"({error.strerror or error}); name a writable folder, or '{OFF}'"
                ) from None
            print(
                f"note: compilation cache off: cannot write {path} ({error.strerror or error}); "
                f"set ${CACHE_ENV} to a writable folder",
                file=sys.stderr,
            )
            path = None
    compilation_cache.reset_cache()  # a process's first compilation fixes JAX's choice
    jax.config.update("jax_enable_compilation_cache", path is not None)
    compilation_cache.set_cache_dir(None if path is None else str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


@dataclasses.dataclass
class CacheCount:
    """How many compilations looked in the cache (``requests``), and how many it answered."""

    requests: int = 0
    hits: int = 0

    def describe(self) -> str:
        """Say how many compilations were loaded from the cache, or that it is off."""
        if not jax.config.jax_enable_compilation_cache or not self.requests:
            return "compilation cache off"
        return f"{self.hits} of {self.requests} from the compilation cache"


@contextlib.contextmanager
def counting_cache_hits() -> Iterator[CacheCount]:
    """Count, through ``jax.monitoring``, the cache lookups and hits inside the block."""
    count = CacheCount()

    def listen(event: str, **kwargs: object) -> None:
        if event == _REQUEST_EVENT:
            count.requests += 1
        elif event == _HIT_EVENT:
            count.hits += 1

    jax.monitoring.register_event_listener(listen)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_listener(listen)
