"""The one exception type that command-line tools turn into a single clear line."""


class MarcoError(Exception):
    """A user-facing error: bad path, bad checkpoint, unsupported feature.

    Scripts print ``error: <message>`` and exit non-zero instead of a traceback,
    so the message must name the offending input.
    """
