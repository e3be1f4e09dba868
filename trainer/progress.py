"""The training progress bar in a log file (no torch here: the CLI's tests use it too)."""


class LineStream:
    """tqdm's redraws as lines of their own, for a log file (not a terminal): `tail`, `less` and
    `muon-ablations status` then read "... 340/1000 [01:02<02:00, 5.40step/s, ...]" lines, not one line
    of carriage returns."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)
