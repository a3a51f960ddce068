"""In-process call-stack sampling per rank, and stage timers (their storage in the catalog: :mod:`hpcblend.io.profiles`).

One :class:`StackSampler` per MPI rank samples the Python call stack of one
thread (the rank's working thread) at a fixed rate from a daemon thread, via
:func:`sys._current_frames`. Numba kernels compiled ``nogil=True`` release the
GIL, so while a kernel runs the sampler sees the Python frame that called it.

Every sample is tagged with the *stage* the working thread declared last
(:meth:`StackSampler.stage` / :meth:`StackSampler.set_stage`) and with the id
of the blend being worked on. The stage timers are measured by the stage
context manager itself (``time.perf_counter``), so they are exact and exist
even when sampling is off (``rate_hz=0``).

Results are plain dicts of built-in types (:meth:`StackSampler.results`), so
they pickle cheaply for ``comm.gather``; :func:`hpcblend.io.profiles.write_profiles`
appends them to a closed catalog as ``/profile/rank_<r>``,
:func:`hpcblend.io.profiles.read_profiles` reads them back, and
:func:`hpcblend.io.profiles.write_collapsed` writes the classic collapsed-stack
text format (``frame;frame;frame count``, read by ``flamegraph.pl`` and
speedscope).

Typical use on every rank (the driver)::

    sampler = StackSampler(rate_hz=100.0).start()    # samples the calling thread
    with sampler.stage("wait"):
        unit = next_unit()
    with sampler.stage("fit", blend_id=unit.index + 1):
        rows = process_unit(unit, ...)
    sampler.stop()
    profiles = comm.gather(sampler.results(rank=comm.rank), root=0)
    if comm.rank == 0:                               # after the catalog is finalised
        write_profiles(catalog_path, profiles)       # hpcblend.io.profiles

Collapsed stack lines (keys of ``results()["stacks"]``) are root first::

    stage:fit;driver.py:_work_loop:402;pipeline.py:process_blend_file:48;deblend.py:deblend_blend:262

A frame is labelled ``<file basename>:<qualified function name>:<line of def>``
(with ``lines="leaf"`` the innermost frame, with ``lines="all"`` every frame,
gets ``@<current line>`` appended: the leaf's line tells which compiled
kernel a function is inside); the stage is the root frame.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

from hpcblend.diagnostics.stages import OTHER_STAGE

__all__ = [
    "StackSampler",
    "NullSampler",
    "frame_label",
]

_THIS_FILE = os.path.normcase(os.path.abspath(__file__))


def frame_label(code: Any, lineno: Optional[int] = None) -> str:
    """Label of a code object in a collapsed stack.

    Parameters
    ----------
    code : types.CodeType
        The frame's code object.
    lineno : int, optional
        Current line; when given, ``@<lineno>`` is appended.

    Returns
    -------
    str
        ``<file basename>:<qualified name>:<first line>``; characters that
        would break the collapsed format (``;``, whitespace) become ``_``.
    """
    name = getattr(code, "co_qualname", None) or code.co_name
    label = f"{os.path.basename(code.co_filename)}:{name}:{code.co_firstlineno}"
    if lineno is not None:
        label = f"{label}@{lineno}"
    return label.replace(";", "_").replace(" ", "_").replace("\n", "_").replace("\t", "_")


def _check_stage(name: str) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "; \n\t"):
        raise ValueError(f"stage name must be a non-empty str without ';' or whitespace, got {name!r}")
    return name


class _StageContext:
    """Context manager returned by :meth:`StackSampler.stage` (restores the enclosing stage)."""

    __slots__ = ("_sampler", "_name", "_blend_id", "_saved")

    def __init__(self, sampler: "StackSampler", name: str, blend_id: Optional[int]) -> None:
        self._sampler = sampler
        self._name = name
        self._blend_id = blend_id
        self._saved: tuple = (None, None)

    def __enter__(self) -> "_StageContext":
        s = self._sampler
        self._saved = s._tag
        blend = self._blend_id if self._blend_id is not None else self._saved[1]
        s._switch(self._name, blend, count=True)
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._sampler._switch(*self._saved)
        return False


class StackSampler:
    """Sample the Python call stack of one thread at a fixed rate, tagged by stage and blend.

    Parameters
    ----------
    rate_hz : float
        Samples per second (default 100). ``0`` starts no thread: only the
        stage timers run.
    target_thread_id : int, optional
        ``threading.get_ident()`` of the thread to sample; default: the
        thread that calls :meth:`start`.
    lines : {"none", "leaf", "all"}
        Append ``@<current line>`` to the innermost frame's label
        (``"leaf"``: shows which line, e.g. which Numba kernel call, a
        function is on) or to every frame (``"all"``). Default ``"none"``:
        frames are functions.
    max_depth : int
        Frames kept per sample, counted from the innermost (deeper stacks
        lose their outermost frames).

    Notes
    -----
    * Scheduling: tick ``k`` is due at ``t0 + k / rate_hz``
      (``time.perf_counter``), so the rate does not drift. A tick that comes
      more than one period late (the GIL was held, the machine was busy) is
      counted in ``n_missed`` and not sampled on its own: the next sample
      counts for every tick since the previous one (weight ≥ 1), so stack
      counts stay proportional to time — total ≈ elapsed × rate — even when
      the sampler thread is starved (2 ranks with 2 samplers on 2 cores).
    * Frames of this module (the stage context manager running on the
      working thread) are dropped from samples; the sampler thread itself is
      never sampled (it may not be the target).
    * The sampler's own CPU time (``time.thread_time`` in its thread) is
      reported as ``overhead_cpu_s``.
    * Stage time is exclusive: entering a nested stage pauses the enclosing
      one; time outside any stage goes to ``"other"``.
    * The working thread only assigns a tuple when it switches stage, so
      stage tagging costs ~1 µs and needs no lock.
    """

    def __init__(self, rate_hz: float = 100.0, target_thread_id: Optional[int] = None, *,
                 lines: str = "none", max_depth: int = 256) -> None:
        rate_hz = float(rate_hz)
        if not np.isfinite(rate_hz) or rate_hz < 0:
            raise ValueError(f"rate_hz must be >= 0, got {rate_hz!r}")
        if rate_hz > 10_000:
            raise ValueError(f"rate_hz must be <= 10000, got {rate_hz!r}")
        if int(max_depth) < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth!r}")
        self.rate_hz = rate_hz
        self.target_thread_id = target_thread_id
        if lines not in ("none", "leaf", "all"):
            raise ValueError(f"lines must be 'none', 'leaf' or 'all', got {lines!r}")
        self.lines = lines
        self.max_depth = int(max_depth)
        self._tag: tuple = (None, None)  # (stage, blend_id), replaced atomically
        self._lock = threading.Lock()
        self._counts: dict = {}  # (stage, tuple of frame keys) -> n
        self._stage_samples: dict = {}
        self._blend_samples: dict = {}
        self._labels: dict = {}  # code object (or (code, line)) -> label
        self._n_samples = 0
        self._n_missed = 0
        self._n_taken = 0
        self._overhead_cpu = 0.0
        # stage timers (working thread only)
        self._stage_seconds: dict = {}
        self._stage_calls: dict = {}
        self._blend_seconds: dict = {}
        self._t_switch = time.perf_counter()
        self._t_start: Optional[float] = None
        self._t_stop: Optional[float] = None
        self._thread: Optional[threading.Thread] = None
        self._stop_event = threading.Event()
        self._target_lost = False

    # ------------------------------------------------------------------ control

    def start(self) -> "StackSampler":
        """Start the clock (and the sampling thread when ``rate_hz > 0``).

        Returns
        -------
        StackSampler
            ``self``, so ``sampler = StackSampler().start()`` works.

        Raises
        ------
        RuntimeError
            If already started.
        """
        if self._t_start is not None:
            raise RuntimeError("StackSampler.start: already started")
        if self.target_thread_id is None:
            self.target_thread_id = threading.get_ident()
        now = time.perf_counter()
        self._t_start = now
        self._t_switch = now
        if self.rate_hz > 0:
            self._thread = threading.Thread(target=self._run, name="hpcblend-stack-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and the clock (idempotent). Closes the current stage's timer."""
        if self._t_start is None or self._t_stop is not None:
            return
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
        self._switch(*self._tag)  # account the running stage up to now
        self._t_stop = time.perf_counter()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._t_start is not None and self._t_stop is None

    def __enter__(self) -> "StackSampler":
        if self._t_start is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.stop()
        return False

    # ------------------------------------------------------------------ stages

    def _switch(self, stage: Optional[str], blend_id: Optional[int], count: bool = False) -> None:
        """Close the running stage's timer and make ``(stage, blend_id)`` current (``count``: a new entry)."""
        now = time.perf_counter()
        old_stage, old_blend = self._tag
        dt = now - self._t_switch
        key = old_stage if old_stage is not None else OTHER_STAGE
        self._stage_seconds[key] = self._stage_seconds.get(key, 0.0) + dt
        if old_blend is not None:
            self._blend_seconds[old_blend] = self._blend_seconds.get(old_blend, 0.0) + dt
        if count and stage is not None:
            self._stage_calls[stage] = self._stage_calls.get(stage, 0) + 1
        self._t_switch = now
        self._tag = (stage, blend_id)

    def stage(self, name: str, blend_id: Optional[int] = None) -> _StageContext:
        """Context manager: samples and time inside it belong to stage ``name`` (and blend).

        Parameters
        ----------
        name : str
            Stage name, one of :data:`STAGES` by convention (``load``,
            ``detect``, ``init``, ``fit``, ``measure``, ``write``, ``wait``,
            ``mpi``).
        blend_id : int, optional
            Blend being worked on; default: the enclosing stage's blend.

        Returns
        -------
        context manager
            On exit the enclosing stage (and blend) is current again.

        Raises
        ------
        ValueError
            If the name is empty or holds ``;`` or whitespace.
        """
        return _StageContext(self, _check_stage(name), None if blend_id is None else int(blend_id))

    def set_stage(self, name: Optional[str], blend_id: Optional[int] = None) -> None:
        """Switch the current stage without a ``with`` block (``None``: no stage, i.e. ``"other"``).

        Parameters
        ----------
        name : str or None
        blend_id : int, optional
        """
        self._switch(None if name is None else _check_stage(name), None if blend_id is None else int(blend_id),
                     count=True)

    @property
    def current_stage(self) -> tuple:
        """``(stage, blend_id)`` now current (``(None, None)`` outside any stage)."""
        return self._tag

    # ------------------------------------------------------------------ sampling thread

    def _run(self) -> None:
        cpu0 = time.thread_time()
        period = 1.0 / self.rate_hz
        target = self.target_thread_id
        if target == threading.get_ident():  # pragma: no cover - impossible by construction
            return
        t0 = time.perf_counter()
        k = 1
        last_tick = 0
        try:
            while True:
                due = t0 + k * period
                delay = due - time.perf_counter()
                if delay > 0:
                    # time.sleep costs ~20 % less CPU per tick than Event.wait (a futex with a
                    # timeout); stop() is seen at the next tick, at most one period later
                    time.sleep(delay)
                if self._stop_event.is_set():
                    break
                # a sample stands for every tick since the previous one: when the sampler is
                # woken late (a busy core), the missed ticks are credited to the stack seen now,
                # so counts stay proportional to time (samples ~ elapsed x rate)
                tick = max(int((time.perf_counter() - t0) / period), last_tick + 1)
                weight = tick - last_tick
                last_tick = tick
                if not self._sample_once(target, weight):
                    self._target_lost = True
                    break
                now = time.perf_counter()
                # next tick strictly in the future; ticks more than one period late are skipped
                nk = int((now - t0) / period) + 1
                if nk > k + 1:
                    self._n_missed += nk - k - 1
                    k = nk
                else:
                    k += 1
        finally:
            self._overhead_cpu += time.thread_time() - cpu0

    def _sample_once(self, target: int, weight: int = 1) -> bool:
        """Record one sample of ``target`` counting ``weight`` ticks; False when the thread is gone."""
        frame = sys._current_frames().get(target)
        if frame is None:
            return False
        stage, blend = self._tag
        mode = self.lines
        keys = []
        depth = 0
        while frame is not None and depth < self.max_depth:
            code = frame.f_code
            if os.path.normcase(code.co_filename) != _THIS_FILE:
                with_line = mode == "all" or (mode == "leaf" and depth == 0)
                keys.append((code, frame.f_lineno) if with_line else code)
                depth += 1
            frame = frame.f_back
        del frame
        key = (stage if stage is not None else OTHER_STAGE, tuple(reversed(keys)))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + weight
            self._stage_samples[key[0]] = self._stage_samples.get(key[0], 0) + weight
            if blend is not None:
                self._blend_samples[blend] = self._blend_samples.get(blend, 0) + weight
            self._n_samples += weight
            self._n_taken += 1
        return True

    # ------------------------------------------------------------------ results

    def _label(self, key: Any) -> str:
        label = self._labels.get(key)
        if label is None:
            label = frame_label(key[0], key[1]) if isinstance(key, tuple) else frame_label(key)
            self._labels[key] = label
        return label

    def collapsed(self) -> dict:
        """Collapsed stacks so far: ``{"stage:<s>;frame;...;frame": count}`` (root first)."""
        with self._lock:
            items = list(self._counts.items())
        out: dict = {}
        for (stage, keys), n in items:
            line = ";".join([f"stage:{stage}"] + [self._label(k) for k in keys])
            out[line] = out.get(line, 0) + n
        return out

    def results(self, rank: Optional[int] = None, top_blends: int = 50) -> dict:
        """Everything measured, as a dict of built-in types (picklable, JSON-able but ``stacks`` keys).

        Parameters
        ----------
        rank : int, optional
            MPI rank to record (default: the ``rank`` key stays ``None`` and
            :func:`write_profiles` uses the position in its list).
        top_blends : int
            Keep the blends with the most samples (and, separately, the most
            stage seconds), at most this many each.

        Returns
        -------
        dict
            ``rank``, ``host``, ``pid``, ``rate_hz``, ``lines`` (str),
            ``n_samples`` (ticks counted: samples × their weights),
            ``n_taken`` (stack samples actually taken), ``n_missed`` (late
            ticks credited to the next sample), ``elapsed_s``
            (start to stop, or to now), ``achieved_rate_hz``,
            ``overhead_cpu_s`` (sampler thread CPU), ``overhead_fraction``
            (of elapsed), ``target_lost`` (bool), ``stacks`` (collapsed line →
            count), ``stage_samples`` / ``stage_seconds`` / ``stage_calls``
            (stage → value; seconds measured by the stage timers, exclusive,
            ``"other"`` = outside any stage), ``blend_samples`` and
            ``blend_seconds`` (blend id → value, top ``top_blends``).
        """
        if self._t_start is None:
            elapsed = 0.0
        else:
            elapsed = (self._t_stop if self._t_stop is not None else time.perf_counter()) - self._t_start
        stage_seconds = dict(self._stage_seconds)
        if self.running:  # include the running stage up to now without switching
            cur = self._tag[0] if self._tag[0] is not None else OTHER_STAGE
            stage_seconds[cur] = stage_seconds.get(cur, 0.0) + time.perf_counter() - self._t_switch
        with self._lock:
            n, missed, taken = self._n_samples, self._n_missed, self._n_taken
            stage_samples = dict(self._stage_samples)
            blend_samples = dict(self._blend_samples)
        cpu = self._overhead_cpu
        top = max(int(top_blends), 0)
        bs = sorted(blend_samples.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        bt = sorted(self._blend_seconds.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return {
            "rank": None if rank is None else int(rank),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "rate_hz": self.rate_hz,
            "lines": self.lines,
            "n_samples": int(n),
            "n_missed": int(missed),
            "n_taken": int(taken),
            "elapsed_s": float(elapsed),
            "achieved_rate_hz": float(n / elapsed) if elapsed > 0 else 0.0,
            "overhead_cpu_s": float(cpu),
            "overhead_fraction": float(cpu / elapsed) if elapsed > 0 else 0.0,
            "target_lost": bool(self._target_lost),
            "stacks": self.collapsed(),
            "stage_samples": {str(k): int(v) for k, v in stage_samples.items()},
            "stage_seconds": {str(k): float(v) for k, v in stage_seconds.items()},
            "stage_calls": {str(k): int(v) for k, v in self._stage_calls.items()},
            "blend_samples": {int(k): int(v) for k, v in bs},
            "blend_seconds": {int(k): float(v) for k, v in bt},
        }


class NullSampler:
    """Does nothing, with :class:`StackSampler`'s stage API: a default for code that may be profiled.

    ``def process(..., sampler=None): sampler = sampler or NullSampler()`` and
    then ``with sampler.stage("fit"): ...`` costs one no-op context manager.
    """

    rate_hz = 0.0

    class _Null:
        __slots__ = ()

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: Any) -> bool:
            return False

    def stage(self, name: str, blend_id: Optional[int] = None) -> "_Null":
        """A context manager that does nothing."""
        return NullSampler._Null()

    def set_stage(self, name: Optional[str], blend_id: Optional[int] = None) -> None:
        """Does nothing."""

    def start(self) -> "NullSampler":
        """Does nothing; returns ``self``."""
        return self

    def stop(self) -> None:
        """Does nothing."""
