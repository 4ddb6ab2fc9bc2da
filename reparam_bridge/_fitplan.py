"""Where the chunks of a :func:`~reparam_bridge.fit` run end: by time, so that the progress
bar moves about four times a second, and where the loop may stop early."""

import math

_CHUNK_SECONDS = 0.25  # bar updates about four times a second


class Plan:
    """Where each chunk stops. ``chunk_size`` if given; else by time: with no timing for
    this loop yet, a first chunk of a twentieth of the steps (it also compiles), a second
    as long (timed), then chunks of about ``_CHUNK_SECONDS``; without a bar, one chunk.
    ``compiled``: the loop has run at this length before, so its first chunk is timed too.
    ``stopped``: where the last run of this loop stopped early (its tolerance met), a chunk end
    for this one (a repeated fit converges where it did before, and a chunk sized by time would
    run past it)."""

    def __init__(
        self,
        steps: int,
        chunk_size: int | None,
        progress_bar: bool,
        per_step: float | None,
        compiled: bool = False,
        stopped: int | None = None,
    ):
        self.steps, self.chunk_size, self.bar, self.per_step = steps, chunk_size, progress_bar, per_step
        self.timed_chunks = int(compiled)
        self.stopped = stopped

    def next_stop(self, start: int) -> int:
        left = self.steps - start
        if self.chunk_size is not None:
            n = int(self.chunk_size)
        elif not self.bar or left <= 100:
            n = left
        elif self.per_step is None:
            n = max(50, math.ceil(self.steps / 20))
        else:
            n = max(1, int(_CHUNK_SECONDS / max(self.per_step, 1e-9)))
            if left - n < n // 2:  # no short last chunk
                n = left
        if self.chunk_size is None and self.stopped is not None and start < self.stopped:
            n = min(n, self.stopped - start)
        return start + min(n, left)

    def short(self) -> bool:
        """One chunk, known to take under ``_CHUNK_SECONDS``: a bar would only flash (tqdm's
        ``delay=`` idea), and drawing it costs a tenth of a 3,000-step fit of a small model."""
        return self.chunk_size is None and self.per_step is not None and self.steps * self.per_step < _CHUNK_SECONDS

    def record(self, start: int, stop: int, seconds: float) -> None:
        self.timed_chunks += 1
        if self.timed_chunks > 1 or self.per_step is not None:  # the first may have compiled
            self.per_step = seconds / (stop - start)
