"""The one exception type users see: a one-line message naming the field or file at fault."""


class PrunelensError(Exception):
    """A user-facing error (bad config, missing file, corrupted checkpoint...). The CLI prints it on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
