"""JAX's persistent compilation cache: a second run of the same job compiles nothing.

Every jaxcnn command that compiles turns on JAX's own cache (``jax_compilation_cache_dir``,
see https://docs.jax.dev/en/latest/persistent_compilation_cache.html) in one folder:

- ``$JAXCNN_COMPILATION_CACHE`` if set: a folder, or ``off`` for no cache;
- else ``$XDG_CACHE_HOME/jaxcnn/xla``, that is ``~/.cache/jaxcnn/xla`` by default.

``python -m jaxcnn.train --no-compilation-cache`` turns it off for one run. Deleting the
folder is always safe: the next run compiles again and refills it. JAX keys each entry by
the computation, the jax/jaxlib version, the XLA flags and the device, so a changed
program or an upgrade never reads a stale entry.

An entry cut short (a full disk while JAX wrote it, or a process killed then) is one JAX
would warn about at every later run and never rewrite, since it keeps an entry that
exists. :func:`configure` therefore also turns JAX's two warnings about the cache into one
line each and removes the damaged entry, so that it is compiled and written again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from jaxcnn.errors import UsageError

CACHE_ENV = "JAXCNN_COMPILATION_CACHE"
#: The value of ``$JAXCNN_COMPILATION_CACHE`` that turns the cache off.
OFF = "off"
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
#: JAX's warning when it cannot read or write an entry (``jax/_src/compiler.py``):
#: the action, the compilation's name (or its cache key) and the error.
_CACHE_WARNING = re.compile(
    r"Error (reading|writing) persistent compilation cache entry for '([^']+)': \w+: (.*)",
    re.DOTALL,
)
#: The first bytes of a zstd frame; JAX compresses an entry with zstd where Python has it,
#: else with zlib.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


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
    _note_cache_warnings(path)
    compilation_cache.reset_cache()  # a process's first compilation fixes JAX's choice
    jax.config.update("jax_enable_compilation_cache", path is not None)
    compilation_cache.set_cache_dir(None if path is None else str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def entry_is_whole(entry: bytes) -> bool:
    """Return whether a cache entry's bytes decompress to their end.

    JAX compresses each entry with zstd (``compression.zstd`` from Python 3.14, else the
    ``zstandard`` package, where installed) or else zlib. An entry in zstd that no module
    here can read is taken as whole: it cannot have been written here either. JAX's own
    ``decompress_executable`` is not called because it is private (``jax._src``).
    """
    try:
        if entry.startswith(_ZSTD_MAGIC):
            return _zstd_decompresses(entry)
        inflater = zlib.decompressobj()
        inflater.decompress(entry)
        return inflater.eof
    except Exception:  # each decompressor has its own error for a cut stream
        return False


def _zstd_decompresses(entry: bytes) -> bool:
    """Decompress a zstd ``entry`` with what Python has; True if it has nothing for zstd."""
    try:
        from compression import zstd  # Python 3.14

        zstd.decompress(entry)
    except ImportError:
        try:
            import zstandard
        except ImportError:
            return True
        zstandard.ZstdDecompressor().decompress(entry)
    return True


def remove_damaged_entries(folder: Path, name: str) -> list[Path]:
    """Remove the entries of compilation ``name`` in ``folder`` that are cut short.

    ``name`` is JAX's name for a compilation (``jit_train_step``) or its whole cache key;
    entries are named ``<name>-<hash>-cache``. Returns the entries removed.
    """
    removed = []
    for entry in sorted(folder.glob(f"{glob.escape(name)}*-cache")):
        with contextlib.suppress(OSError):  # gone meanwhile, or unreadable: not ours to fix
            if not entry_is_whole(entry.read_bytes()):
                entry.unlink()
                removed.append(entry)
    return removed


ShowWarning = Callable[..., None]


@dataclasses.dataclass(frozen=True)
class _CacheWarningNotes:
    """``warnings.showwarning`` for JAX's warnings about an entry of the cache in ``folder``.

    JAX warns (in two lines, with its own source path) when it cannot read an entry and
    when it cannot write one, and goes on compiling. Each such warning becomes one line
    on stderr, and the entry it left cut short is removed: for a read, before JAX
    compiles and writes it again in the same call. Every other warning goes to
    ``passed_on``, the ``showwarning`` that was there before.
    """

    folder: Path
    passed_on: ShowWarning

    def __call__(
        self, message: Warning | str, category: type[Warning], *where: object, **more: object
    ) -> None:
        """Show one warning: ``showwarning(message, category, filename, lineno, ...)``."""
        found = _CACHE_WARNING.match(str(message))
        if found is None:
            self.passed_on(message, category, *where, **more)
            return
        action, name, error = found.groups()
        removed = remove_damaged_entries(self.folder, name)
        error = re.sub(r"^\[Errno \d+\] ", "", error.strip().splitlines()[0])
        if action == "reading":
            note = (
                f"note: compilation cache: {name}'s entry in {self.folder} was damaged "
                f"({error}), perhaps by a full disk or a killed run"
                + ("; removed, it is compiled and written again" if removed else "")
            )
        else:
            note = (
                f"note: compilation cache: could not write {name}'s entry in {self.folder} "
                f"({error}); this run goes on, and the next one compiles it again"
                + (" (the part written was removed)" if removed else "")
            )
        print(note, file=sys.stderr, flush=True)


def _note_cache_warnings(folder: Path | None) -> None:
    """Show JAX's warnings about the cache in ``folder`` as :class:`_CacheWarningNotes`.

    ``warnings.showwarning`` is Python's documented hook for how warnings are shown. A
    second call replaces the first one's notes rather than stacking them; with no
    folder (the cache off) the hook that was there before is put back.
    """
    shown = warnings.showwarning
    before = shown.passed_on if isinstance(shown, _CacheWarningNotes) else shown
    warnings.showwarning = before if folder is None else _CacheWarningNotes(folder, before)


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
