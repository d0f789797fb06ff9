"""The error type of bad dataset files (datasets.md §8, §9).

:class:`DataError` is raised for an input file that exists but is wrong: an undecodable or
truncated image, a mask with the wrong mode, size or label values, a malformed split list,
``meta.json`` or id list, a checksum or count mismatch. The message names the file and what was
expected. It is a ``ValueError`` (callers that caught ``ValueError`` keep working), and the stage
entry point (``neco.cli``) prints it as one line instead of a traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """An input data file is corrupt or does not match the expected format; names the file."""
