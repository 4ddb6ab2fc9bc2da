"""The progress bar of the bridge's sampling loop, advanced from inside the compiled loop by a
host callback, and (chains in sequence) Ctrl-C, which stops the run at the bar's next tick."""

import logging
import os
import signal
import threading

# JAX logs a failing callback's traceback; the tick's KeyboardInterrupt is not a failure
_JAX_CALLBACKS = logging.getLogger("jax._src.debugging")


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    return not (record.exc_info and record.exc_info[0] is KeyboardInterrupt)


class LoopProgress:
    """The tqdm bar of a running sample in the bridge's loop, advanced by ``tick`` from the compiled
    loop (a host callback: on every device that runs it, hence the high-water mark).

    With the chains in sequence (one device, one process) it also makes Ctrl-C stop the run.
    The main thread waits inside XLA, where Python runs no signal handler (so no
    ``KeyboardInterrupt``) until the whole run ends; but the C-level handler writes the signal
    to ``signal.set_wakeup_fd``'s pipe at once. The next tick (a callback thread) reads it there
    and raises, which stops the compiled computation, and leaving the bar raises
    ``KeyboardInterrupt``. Not across devices: a device that stops leaves the others waiting in
    a collective (XLA then aborts the process). Only where SIGINT has Python's default handler
    and no wakeup fd is set (asyncio's): others' signal handling is left alone."""

    current: "LoopProgress | None" = None

    def __init__(self, total: int, sequential: bool = False):
        self.total, self.done, self.bar, self.lock = total, 0, None, threading.Lock()
        self.desc = "rb.sample (chains in sequence)" if sequential else "rb.sample (sharded)"
        self.sequential, self.interrupted, self.signals = sequential, False, None

    def __enter__(self) -> "LoopProgress":
        if self.total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, leave=True)
            if self.sequential:
                self._catch_interrupts()
        LoopProgress.current = self
        return self

    def _catch_interrupts(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # only it may set handlers
            return
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return
        read, write = os.pipe()
        try:
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except Exception:  # e.g. a platform without non-blocking pipes as wakeup fds
            os.close(read)
            os.close(write)
            return
        if wakeup != -1:  # someone else's (an event loop's): theirs, untouched
            signal.set_wakeup_fd(wakeup)
            os.close(read)
            os.close(write)
            return
        signal.signal(signal.SIGINT, self._interrupt)
        self.signals = (read, write)
        _JAX_CALLBACKS.addFilter(_not_an_interrupt)

    def _interrupt(self, signum, frame) -> None:  # (runs only once the main thread is back)
        self.interrupted = True

    def _pending_interrupt(self) -> bool:
        if self.signals is not None:
            try:
                self.interrupted |= signal.SIGINT in os.read(self.signals[0], 512)
            except OSError:  # nothing written (BlockingIOError), or closed
                pass
        return self.interrupted

    def __exit__(self, *exc) -> None:
        LoopProgress.current = None
        if self.signals is not None:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _JAX_CALLBACKS.removeFilter(_not_an_interrupt)
                self._pending_interrupt()
            finally:
                read, write = self.signals
                self.signals = None
                os.close(read)
                os.close(write)
        if self.bar is not None:
            if exc[0] is None:
                self.bar.update(self.total - self.done)  # the steps after the last tick
            self.bar.close()
        if self.interrupted:
            raise KeyboardInterrupt(
                "rb.sample: interrupted (Ctrl-C); this run's draws are lost. "
                "Pass checkpoint=PATH to keep the draws of a long run as it goes."
            ) from None

    @staticmethod
    def tick(step) -> None:
        self = LoopProgress.current
        if self is None or self.bar is None:
            return
        if self._pending_interrupt():  # stops the compiled computation (see the class's docstring)
            raise KeyboardInterrupt
        with self.lock:
            step = min(int(step), self.total)
            if step > self.done:
                self.bar.update(step - self.done)
                self.done = step
