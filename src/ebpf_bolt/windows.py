"""--interval SECONDS: a recording cut into windows, each written as it
ends, and their total at the end.

The kernel counts into one of two sets of count tables and caches
(ebpf_bolt.bpf.c, active_set). Ending a window (Recorder.end_window):
  1. switch: active_set's slot is updated to the other set; the syscall
     returns once no program still runs on the old set (an RCU grace
     period: maybe_wait_bpf_programs in kernel/bpf/syscall.c), so each
     sample is counted wholly in one set, and only once;
  2. flush: the old set's per-CPU caches add their pending counts to the
     old set's tables (flush_caches, told which set);
  3. drain: the old set's tables are read through mmap;
  4. clear: its tables and notes are zeroed, ready for the window after
     next. The new set was cleared the same way when its window ended.
The windows' counts are added up here, key by key as the kernel keys them
(object << 48 | file offset), and the total is translated once at the end:
it equals the windows' sum by construction, and holds more distinct keys
than one table has room for. A window whose table passes EARLY_FILL of its
room ends at once (an early drain): so a long run does not lose traces for
want of map space. While a window is translated and written, a thread
watches the next one's fill (every WATCH seconds) and ends it early too;
what still overflows is counted (map_full) and warned about by the CLI.
"""
import contextlib
import signal
import threading
import time
from array import array

from .drain import split_returns
from .layout import TRACE_RETURN, table_room
from .profile import TraceColumns

# A window whose table has claimed this share of its room (3/4 of its
# slots) is drained at once, before new keys are refused.
EARLY_FILL = 0.8
# while a window is written, the fill of the next is read this often
WATCH = 0.05


def add_counts(total, counts, mode):
    """Add a window's drained counts (Recorder.drain: {key: samples}, or
    TraceColumns) to `total`, a dict: {key: samples} for IPs, {(from with
    the return bit, to, ft_end): [count, mispreds]} for traces."""
    if mode == "ip":
        for key, n in counts.items():
            total[key] = total.get(key, 0) + n
        return
    frm, to, ft_end, cnt, mis = counts
    returns = counts.returns or bytes(len(frm))
    for f, t, e, c, m, r in zip(frm, to, ft_end, cnt, mis, returns):
        key = (f | TRACE_RETURN if r else f, t, e)
        prev = total.get(key)
        if prev is None:
            total[key] = [c, m]
        else:
            prev[0] += c
            prev[1] += m


def total_counts(total, mode):
    """`total` (add_counts) in the form Recorder.drain gives counts."""
    if mode == "ip":
        return total
    cols = [array("Q") for _ in range(5)]
    for (f, t, e), (c, m) in total.items():
        for col, v in zip(cols, (f, t, e, c, m)):
            col.append(v)
    cols[0], returns = split_returns(cols[0])
    return TraceColumns(cols, returns=returns)


@contextlib.contextmanager
def deferred_sigint():
    """SIGINT waits while a window ends (switch, drain, clear, written),
    then raises KeyboardInterrupt as it would have: raised inside, it
    would leave a window drained from the tables but not written, or
    written in part but in the total. For Python's own SIGINT handler
    (collect()), in the main thread where signals are handled; the CLI
    defers its own handlers (cli._deferred_signals)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not
            signal.default_int_handler):
        yield
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt

class Windows:
    """Ends the windows of a recording (`rec`, a Recorder made with
    windows=True, started): every `interval` seconds, or early when the
    table passes EARLY_FILL. `write(number, profiles, early)` writes a
    window's profiles; `notice(message)` reports an early drain; `defer`,
    a context manager factory, holds off what would interrupt ending a
    window (the CLI's stop signals: a window drained and cleared but not
    yet counted would be lost). poll() is Recorder.run's `poll`; finish()
    after run() writes the last window and returns the profiles of the
    total."""

    def __init__(self, rec, interval, write, notice=None,
                 defer=contextlib.nullcontext):
        self.rec, self.interval = rec, interval
        self.write = write
        self.defer = defer
        self.notice = notice or (lambda message: None)
        self.count = 0          # windows written
        self.early = 0          # of them, drained early
        self.total = {}         # add_counts of every window
        self.sums = []          # each window's count of samples (IP) or
                                # traces, every object's
        self.start = rec.t_start
        self.next_end = self.start + interval

    def poll(self):
        """At every turn of Recorder.run's loop, which calls it no more
        once the duration has passed (the last window is finish()'s)."""
        now = time.monotonic()
        fill = self.rec.window_fill()
        if now >= self.next_end or fill >= EARLY_FILL:
            with self.defer():
                self._end(now, early=now < self.next_end, fill=fill)

    def _end(self, now, early, fill):
        # While a window is translated and written (0.1 s to seconds: many
        # objects, a slow disk), a thread watches the set the programs
        # count into (_watch): past EARLY_FILL it is drained at once and
        # its counts queued, written after, in order.
        queue = [(self.rec.end_window(), now, early, fill)]
        stop, errors = threading.Event(), []
        watcher = threading.Thread(target=self._watch,
                                   args=(queue, stop, errors), daemon=True)
        watcher.start()
        try:
            while queue:
                now, early = self._write_queued(queue)
        finally:
            stop.set()
            watcher.join()
        if errors:
            raise errors[0]
        while queue:   # ended after the last write, before the stop
            now, early = self._write_queued(queue)
        # an early window starts the interval anew; a timed one keeps the
        # beat (or restarts it, if writing took longer than an interval)
        self.next_end = (now + self.interval if early or
                         self.next_end + self.interval <= now else
                         self.next_end + self.interval)

    def _write_queued(self, queue):
        counts, now, early, fill = queue.pop(0)
        # the watcher leaves the objects alone (this thread reads them):
        # those its window names are read now
        self.rec.refresh_objects()
        self._write(counts, now, early, fill)
        return now, early

    def _watch(self, queue, stop, errors):
        """The watcher thread of _end: every WATCH seconds, the fill of the
        set counting now; past EARLY_FILL, that window ends here (switch,
        drain, clear: the other set was cleared when the window being
        written ended) and its counts join `queue`."""
        try:
            while not stop.wait(WATCH):
                fill = self.rec.window_fill()
                if fill >= EARLY_FILL:
                    counts = self.rec.end_window(objects=False)
                    queue.append((counts, time.monotonic(), True, fill))
        except BaseException as e:   # raised again by _end
            errors.append(e)

    def _write(self, counts, now, early=False, fill=0.0):
        add_counts(self.total, counts, self.rec.mode)
        self.sums.append(sum(counts.values()) if self.rec.mode == "ip"
                         else sum(counts[3]))
        self.count += 1
        if early:
            self.early += 1
            self.notice(f"window {self.count} drained early, after "
                        f"{now - self.start:.2f} s: its table was "
                        f"{100 * fill:.0f}% full (above "
                        f"{100 * EARLY_FILL:.0f}% of its room, "
                        f"{self.room():,} keys); window {self.count + 1} "
                        "starts now")
        profiles = self.rec.profiles_of(counts, duration=now - self.start,
                                        report=False, span=(self.start, now),
                                        window=self.count)
        self.start = now
        self.write(self.count, profiles, early)

    def room(self):
        return table_room(self.rec.obj.map_entries[self.rec.map_name])

    def finish(self):
        """After Recorder.run(), instead of Recorder.finish(): the last
        window (the set the programs counted into when they stopped) is
        written, and the profiles of the total returned."""
        def last_then_total(counts):
            self._write(counts, self.rec.t_stop)
            return total_counts(self.total, self.rec.mode)
        self.rec.finish(combine=last_then_total)
        for profile in self.rec.profiles:
            profile.info.update(windows=self.count,
                                early_windows=self.early,
                                interval=self.interval)
        return self.rec.profiles
