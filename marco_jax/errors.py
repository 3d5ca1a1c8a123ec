"""The one exception type that command-line tools turn into a single clear line."""

from typing import Iterable


class MarcoError(Exception):
    """A user-facing error: bad path, bad checkpoint, unsupported feature.

    Scripts print ``error: <message>`` and exit non-zero instead of a traceback,
    so the message must name the offending input.
    """


def require(checks: Iterable[tuple[bool, str]], prefix: str = "") -> None:
    """Raise the message of the first failed check, so a setting is refused where it is given."""
    for ok, message in checks:
        if not ok:
            raise MarcoError(prefix + message)
