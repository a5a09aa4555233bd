"""CPU threads and OpenMP's wait policy: fast on an idle machine, no collapse on a busy one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

# Environment variables through which a user steers OpenMP; if any is set, charlm sets none.
USER_OPENMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "KMP_BLOCKTIME")
# Waiting threads spin this many rounds, then sleep. Spinning is what makes two threads fast on
# small recurrent steps (they meet again within microseconds); a bound, unlike
# OMP_WAIT_POLICY=ACTIVE, lets a thread that is no longer used go to sleep, so dropping to one
# thread under load frees the core. Measured in docs/benchmarks.md ("Threads").
DEFAULT_SPINCOUNT = "300000"
# Below this many multiply-adds per time step one thread is as fast as two: the step is too
# small to split (docs/benchmarks.md, "Threads"); such models always train on one thread.
SMALL_STEP_MACS = 1 << 20
BUSY_CORES = 0.5  # other programs using this much CPU (in cores) means the machine is shared
IDLE_CORES = 0.25  # ...and below this it is idle again
MIN_WINDOW_S = 1.0  # the shortest interval the load is judged over


def set_openmp_defaults(
    environ: MutableMapping[str, str] | None = None, torch_loaded: bool = False
) -> str:
    """Before torch loads OpenMP: a bounded spin unless the user chose; says what holds.

    Only the command line calls it, for its own process (charlm/cli/__init__.py); `import
    charlm` leaves the caller's environment alone."""
    environ = os.environ if environ is None else environ
    if torch_loaded:
        return "OpenMP as loaded before charlm (its wait policy is fixed once loaded)"
    chosen = [f"{k}={environ[k]}" for k in USER_OPENMP_KEYS if k in environ]
    if chosen:
        return "OpenMP as set: " + ", ".join(chosen)
    environ["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
    return f"OpenMP threads spin {int(DEFAULT_SPINCOUNT):,} rounds, then sleep"


# What the command line set before torch loaded (charlm/cli/__init__.py); None in a program
# that imports charlm as a library, which sets nothing: `openmp_policy` then says what holds.
OPENMP_POLICY: str | None = None


def openmp_policy(environ: Mapping[str, str] | None = None) -> str:
    """OpenMP's wait policy as it holds now, for a run's header: what the command line chose,
    else (the Python API) the user's own OMP_* / GOMP_* settings, else libgomp's default.

    That default is the command line's bound: with neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT
    set, libgomp spins 300,000 rounds (100 when it has more threads than CPUs), exactly as with
    GOMP_SPINCOUNT=300000 (GCC's libgomp manual, "GOMP_SPINCOUNT"), so a library caller trains
    as fast as the command line without charlm touching its environment. PyTorch's Linux wheels
    ship libgomp (torch/lib/libgomp*.so)."""
    if OPENMP_POLICY is not None:
        return OPENMP_POLICY
    environ = os.environ if environ is None else environ
    chosen = [f"{k}={environ[k]}" for k in USER_OPENMP_KEYS if k in environ]
    if chosen:
        return "OpenMP as set: " + ", ".join(chosen)
    return f"OpenMP threads spin {int(DEFAULT_SPINCOUNT):,} rounds (libgomp's default), then sleep"


def step_macs(gates: int, layers: int, hidden: int, embedding: int, vocab: int, batch: int) -> int:
    """Multiply-adds of one time step of the whole batch: the recurrent layers and the decoder.
    `gates`: the cell's weight rows per hidden unit (model/cells.py)."""
    recurrent = gates * hidden * (embedding + hidden) + (layers - 1) * gates * hidden * 2 * hidden
    return batch * (recurrent + hidden * vocab)


def choose_threads(
    requested: int, macs: int, available: int, environ: MutableMapping[str, str] | None = None
) -> int:
    """train.threads=0's rule, for training, sampling and evaluation alike: every usable core
    for steps of at least SMALL_STEP_MACS, else one; never the load, so the numerics do not
    depend on it. A chosen count (`requested`, or OMP_NUM_THREADS) is kept."""
    environ = os.environ if environ is None else environ
    if requested > 0:
        return requested
    most = max(1, min(available, _usable_cores()))
    if "OMP_NUM_THREADS" in environ:
        return most
    return most if macs >= SMALL_STEP_MACS else 1


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class LoadMeter:
    """CPU time that other programs used since the last reading, in cores (Linux /proc);
    None where the kernel does not say."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = self._sample()

    @staticmethod
    def _sample() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat", encoding="ascii") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), sum(fields[:8]) - idle, int(own[11]) + int(own[12])

    def others(self) -> float | None:
        now = self._sample()
        if now is None or self.last is None:
            return None
        total, busy, own = (a - b for a, b in zip(now, self.last, strict=True))
        self.last = now
        if total <= 0:
            return None
        return max(0.0, (busy - own) / total * (os.cpu_count() or 1))


@dataclass
class ThreadChange:
    threads: int
    reason: str


class ThreadGovernor:
    """train.threads=0: the thread count is fixed for the whole run, from the model's size and
    the usable cores alone (every core, or one for steps too small to split), so a run's
    numerics never depend on the machine's load: a thread change alters the last bits of some
    reductions. A resumed run keeps the count its checkpoint recorded (`recorded`), on any
    machine. A chosen train.threads or OMP_NUM_THREADS is kept as it is.

    train.adapt_threads=true (opt-in) follows the load instead: one thread while other programs
    keep a core busy (two threads then wait on each other's time slices: measured 3-5x slower),
    every core again once the machine is idle; `check()` re-reads the load at logging steps over
    at least MIN_WINDOW_S. Such a run is not bit-identical to one that never changed count.
    Without it, `check()` only says, once, that the machine is busy and what would help."""

    def __init__(
        self,
        requested: int,
        macs: int,
        set_threads: Callable[[int], None],
        available: int,
        meter: LoadMeter | None = None,
        clock: Callable[[], float] = time.monotonic,
        environ: MutableMapping[str, str] | None = None,
        adapt: bool = False,
        recorded: int | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.set_threads, self.clock = set_threads, clock
        self.fixed = requested > 0 or "OMP_NUM_THREADS" in environ
        self.most = requested if requested > 0 else max(1, min(available, _usable_cores()))
        splits = macs >= SMALL_STEP_MACS
        self.adaptive = adapt and not self.fixed and self.most > 1 and splits
        self.recorded = recorded if (recorded and not self.fixed and not self.adaptive) else None
        self.meter = meter if meter is not None else (LoadMeter(clock) if self.most > 1 else None)
        self.since = clock()
        if self.recorded is not None:
            self.threads = self.recorded
        else:
            self.threads = choose_threads(requested, macs, available, environ)
        self.reason = self._first_reason(macs)
        self.last_change: ThreadChange | None = None
        self.warned = False

    def _first_reason(self, macs: int) -> str:
        if self.fixed:
            return "as set"
        if self.recorded is not None:
            return "as the run recorded"
        if self.most == 1:
            return "one core"
        if self.threads == 1:
            return f"auto: a step of {macs:,} multiply-adds is too small to split"
        if self.adaptive:
            return f"adapt_threads: {self.most} while the machine is idle, 1 while it is busy"
        return "auto: every core, fixed for the run"

    def start(self) -> ThreadChange | None:
        """Apply the first choice; adapt_threads also judges the load over a short first window."""
        self.set_threads(self.threads)
        if not self.adaptive:
            return None
        wait = 0.25 - (self.clock() - self.since)
        if wait > 0:
            time.sleep(wait)
        return self._judge()

    def check(self) -> ThreadChange | None:
        """At a logging step: adapt_threads follows the load seen since the last judgement."""
        if not self.adaptive or self.clock() - self.since < MIN_WINDOW_S:
            return None
        return self._judge()

    def busy_hint(self) -> str | None:
        """Once, when a fixed count of several threads shares the machine with a busy program:
        what the user can do about it (the count itself stays, so the numerics do)."""
        if self.warned or self.adaptive or self.threads < 2 or self.meter is None:
            return None
        if self.clock() - self.since < MIN_WINDOW_S / 4:
            return None
        others = self.meter.others()
        self.since = self.clock()
        if others is None or others < BUSY_CORES:
            return None
        self.warned = True
        return (
            f"cpu: other programs use {others:.1f} cores; {self.threads} threads may run several "
            "times slower now. --set train.threads=1 (reproducible) or train.adapt_threads=true "
            "(follows the load; the last bits then depend on it) can help"
        )

    def _judge(self) -> ThreadChange | None:
        others = self.meter.others() if self.meter is not None else None
        self.since = self.clock()
        if others is None:
            return None
        if self.threads > 1 and others >= BUSY_CORES:
            return self._change(1, f"other programs use {others:.1f} cores")
        if self.threads == 1 and others < IDLE_CORES:
            return self._change(self.most, "the machine is idle again")
        return None

    def _change(self, threads: int, why: str) -> ThreadChange | None:
        if threads == self.threads:
            return None
        self.threads = threads
        self.set_threads(threads)
        self.last_change = ThreadChange(threads, why)
        return self.last_change

    def describe(self) -> str:
        """For the run's header: the count now, and why."""
        now = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.last_change is not None:
            return f"{now} ({self.reason}; now {self.last_change.reason})"
        return f"{now} ({self.reason})"
