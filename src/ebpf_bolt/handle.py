"""One base for what holds kernel or OS resources until close(): BPF
objects and links, perf events, the process recorded, output files."""


class Handle:
    """A context manager whose exit calls close(). Subclasses define
    close(), which may be called more than once, and refuse use after it
    with a Python error (not a crash on a freed pointer or fd)."""

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
