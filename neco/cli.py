"""Entry-point helper for stage scripts: user errors end the run with one clear line.

A wrong key in ``params.yaml``, a failed download, missing weights or an invalid input file is
the user's to fix, not a bug: the stage prints ``error: <message>`` (which names the file, key or
URL) and exits with status 1 instead of a traceback. Set ``NECO_TRACEBACK=1`` to see the
traceback anyway. Anything else propagates unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


_USER_ERRORS = {
    "neco.config": ("ConfigError",),
    "neco.download.fetch": ("DownloadError",),
    "neco.models.registry": ("WeightsError",),
    "neco.method.manifest": ("ManifestError",),
    "neco.method.crops": ("CropSamplingError",),
    "neco.download.extract": ("ExtractError",),
    "neco.data.errors": ("DataError",),
    "neco.io": ("DiskFullError",),
}


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that report a problem with the user's inputs or environment.

    Only modules already imported are consulted: an exception class of a module that was never
    imported cannot have been raised, and importing it here would only slow the error path.
    """
    types: list[type[BaseException]] = [FileNotFoundError]
    for module, names in _USER_ERRORS.items():
        mod = sys.modules.get(module)
        if mod is not None:
            types += [getattr(mod, name) for name in names if hasattr(mod, name)]
    return tuple(types)


def one_line(message: str) -> str:
    """``message`` on one line: a line ending in ``:`` runs on with a space, others with ``; ``.

    Multi-line messages (a download error lists every URL tried) stay readable in a log that
    is grepped line by line.
    """
    out = ""
    for line in (part.strip() for part in str(message).splitlines()):
        if line:
            out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def run_stage(main: Callable[[], T]) -> T:
    """Call ``main()``; print user errors as one line and exit 1."""
    try:
        return main()
    except user_error_types() as err:
        if os.environ.get("NECO_TRACEBACK"):
            raise
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        raise SystemExit(1) from None
