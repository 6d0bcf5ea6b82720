"""The batched media pipeline of one worker: every owned job advanced per tick as arrays.

Per tick, for all jobs at once: load both legs' write positions (one gather), decide how
far each job may advance (`allowed`), then for each step (a block of frames, or one
frame) let the DTMF bank read every job's legs straight from the rings, mix the bank's
outgoing frames in place (or pair them for separate mode) into per-job staging rows,
G.711 jobs already encoded (`kernels.py`), and track silence.
Python work per job is O(1) and happens only when a job's staging row is flushed to
its WAV writer (every `flush_samples`: `Config.flush_ms`, 2 s by default) or when it ends.

Alignment. Both legs of a job are read at the same leg position, so sample p of the
inbound leg is mixed with sample p of the outbound leg. A job advances to the smaller
of its legs' write positions; a leg that stays behind for longer than the skew
allowance (a leg with nothing to say, e.g. no prompt playing) no longer holds the other
back: the job advances to where the leading leg was `skew` ago and the missing part of
the lagging leg is recorded as silence (its producer then jumps to the present, see
`shm.LegWriter.write`). A stop request fixes the end position and drains to it at once.

Failover. After every flush the pipeline publishes each job's *durable record* in the
arena (`shm.layout`, "durable"): the leg position up to which its audio is in the file,
how many input samples the file holds, and the silence detector's state at that point
(staging is empty right after a flush, so all three describe the same instant; an
initial-silence job still waiting for audio keeps its pre-roll staged, and its record
points at the pre-roll's start). A job's output frame j is its input frame j (the DTMF
bank's first outputs are its delay line and are dropped), so that position is
`base + (fed - lookahead) * FRAME - fill`. A replacement worker (`open_resumed`,
`attach(resume=...)`) cuts the file back to exactly that many samples and reads the
rings again from that position: what the dead worker had read but not yet written
(staging, the look-ahead, a half-done write) is read a second time, nothing twice in
the file and nothing missing, as long as the rings still hold it (they hold 8 s; the
record is at most one flush old).

Bounded approximations on resume: the DTMF detector starts with no history, so a
digit straddling the resume point may be muted from up to one look-ahead later (or a
tone shorter than the detector's minimum left in); rates other than 8000 Hz restart
the resampler (a discontinuity inside its ~2 ms filter) and ADPCM restarts its
predictor at a unit boundary; silence counts resume exactly.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from wholecall.formats.codecs import CALL_RATE
from wholecall.formats.wav import repair_plan
from wholecall.protocol import Cause, JobDigits, JobEnded, PauseJob, ResumeJob, StartJob, cause_code
from wholecall.protocol.limits import start_job_problem
from wholecall.shm import Arena
from wholecall.shm import layout as L

from . import kernels
from .crypto import EncryptedSink, open_sink
from .dtmf import DIGITS, FRAME, DtmfBank
from .finished import FinishedFile, adopt
from .pauses import PauseSchedule
from .silence import PREROLL_SAMPLES, SilenceTracker
from .sink import FileSink
from .wavfile import WavWriter

log = logging.getLogger("wholecall.worker")

SAMPLE_RATE = CALL_RATE  # the name the pipeline's arithmetic reads best with
#: Job rows of staging copied per slice when the pipeline grows (progress published between).
_GROW_ROWS = 512
#: Jobs per part of a tick when the worker serves stops between parts (`between_parts`):
#: a stop waits for the part in progress. Each part pays the step's fixed costs again; once
#: the DTMF analysis was compiled (`worker.dtmf_fine`) that is ~0.3 us per channel-second
#: per part at 10,000 jobs (bench/pipeline.py --library: 1 part 44.2, 10 parts 46.7; the
#: numpy analysis made 10 parts cost +12), so a worker of 10,000 jobs ticks in five parts.
PART_ROWS = 2000
#: Flushes (file writes, ~30 us each on ext4) between two calls of `Pipeline.between`
#: (and, inside a tick's part, of `between_parts`: see `_serve_flushes`).
SERVE_EVERY_FLUSHES = 64
#: Audio between two header refreshes of a file (DESIGN: "at least every few seconds").
#: A refresh is a pwrite as dear as the audio's own, so refreshing once a second cost
#: 7 us per channel-second at 10,000 channels (133 against 126 without). Nothing is lost
#: by the lag: a killed worker's files are repaired exactly by the controller, which
#: knows them, and `wholecall repair` does the same after a whole-host crash.
HEADER_REFRESH_SAMPLES = 5 * SAMPLE_RATE
_UNLIMITED = 1 << 62  # room beyond any file (`kernels.silence_frames` for a resampled file)
#: The legs' type through the DTMF delay line (`DtmfBank`): half the bytes of float32 to move.
DELAY_TYPE = np.int16
_LEG_NAMES = ("inbound", "outbound")  # by DTMF bank row % 2 (a job's legs are rows 2 * job row + 0, 1)


def warm_up() -> None:
    """Load (or compile) every kernel a `Pipeline` calls, for the types it calls them with:
    what a worker loads before it says hello (`worker.warmup`)."""
    kernels.warm_up((DELAY_TYPE,))
    DtmfBank.warm_up(DELAY_TYPE)


@dataclass
class Job:
    """The Python side of a job: only what cannot live in the arrays."""

    msg: StartJob
    row: int
    writer: WavWriter
    stereo: bool
    started_at: float
    cause: Cause | None = None  # decided end cause, once known
    #: The cause a stop asked for: the job's cause only once its end position is reached.
    #: A silence or size limit reached in the audio before that position is the cause
    #: instead, however late the stop was read (a worker behind its producers decides as
    #: one in real time would).
    stop_cause: Cause | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)
    #: Pause and resume requests applied to this job (None until the first one).
    pauses: PauseSchedule | None = None


def _bank_legs(rows: np.ndarray) -> np.ndarray:
    """The DTMF bank's rows of job rows `rows`: 2r (leg in) and 2r + 1 (leg out), interleaved."""
    legs = np.empty(2 * len(rows), np.int64)
    legs[0::2] = 2 * rows
    legs[1::2] = legs[0::2] + 1
    return legs


class Pipeline:
    """All jobs of one worker. Not thread-safe: the worker loop is its only caller."""

    def __init__(
        self,
        arena: Arena,
        open_sink,
        capacity: int = 64,
        flush_samples: int = 8000,
        max_frames_per_tick: int = 25,
        skew_samples: int = 4000,
        tick_s: float = 0.02,
        max_block: int = 5,
        silence_dbfs: float = -45.0,
        silence_hangover_ms: int = 200,
        file_mode: int = 0o600,
    ) -> None:
        """`max_block` is the largest `block` a tick may be asked for (it sizes the DTMF
        delay line: each leg holds `max_block - 1` frames more). `silence_dbfs`,
        `silence_hangover_ms` and `file_mode` are the worker's settings
        (`protocol.WorkerSettings`), the same for every job."""
        if not 1 <= max_block <= max_frames_per_tick:
            raise ValueError(f"max_block must be 1 .. max_frames_per_tick ({max_frames_per_tick}), not {max_block}")
        self.arena = arena
        self.open_sink = open_sink
        self.silence_dbfs = float(silence_dbfs)
        self.hangover_samples = int(silence_hangover_ms) * SAMPLE_RATE // 1000
        self.file_mode = file_mode
        self.flush_samples = flush_samples
        self.max_frames = max_frames_per_tick
        flush_samples = -(-flush_samples // FRAME) * FRAME
        self.flush_samples = flush_samples
        self.stage_len = flush_samples + (max_frames_per_tick + 8) * FRAME
        self._ring = arena.data.reshape(-1)  # every ring, one after the other
        kernels.warm_up((DELAY_TYPE,))
        self.skew_s = skew_samples / SAMPLE_RATE
        # History of each job's leading-leg position, one row per tick, stamped with the
        # tick's time: enough rows to reach `skew` back at the shortest tick.
        self.skew_ticks = max(2, int(np.ceil(self.skew_s / tick_s)) + 2)
        self.hist_t = np.full(self.skew_ticks, -np.inf)
        self.jobs: dict[int, Job] = {}  # by row
        self.by_id: dict[int, Job] = {}
        self.dtmf = DtmfBank(capacity=2 * capacity, sample_type=DELAY_TYPE, max_block=max_block)
        self.max_block = max_block
        self.lookahead = self.dtmf.lookahead_frames
        self._free_rows: list[int] = []
        self._tables: list[np.ndarray] = []  # the writers' byte tables (see `_flush_codes`)
        self._table_rows = np.zeros((1, 65536), np.uint8)  # the same, stacked (`kernels.mix_frames`)
        self._no_mute = np.zeros((1, FRAME), np.bool_)
        self._cap = 0
        self._alloc(capacity)
        self._hist_i = 0
        self.rows = np.zeros(0, np.int64)  # active rows, sorted; rebuilt once per tick when jobs change
        self._rows_dirty = False
        self.ended: list[JobEnded] = []
        #: Digits confirmed since the worker last sent them (before `ended`: a job's digits
        #: reach the controller before its end).
        self.digits: list[JobDigits] = []
        self.overruns_seen = 0
        #: Called between the steps of a tick (between frame steps, after the DTMF bank
        #: in each, and every `SERVE_EVERY_FLUSHES` flushes): the worker attaches newly
        #: opened jobs there and keeps its heartbeat going, so a tick of 10,000 channels
        #: neither delays new jobs by a whole tick nor looks like a hung worker.
        #: It may call `attach()`, `attach_many()` or `start()` (new rows join at the next tick), never
        #: `stop()` (a stop mid-step would see positions the step has not stored yet;
        #: `between_parts` is where stops go).
        self.between: Callable[[], None] | None = None
        #: Called after each job is finalised: finishing an encrypted file re-encrypts all
        #: of it, and a worker ending many at once must not look stalled (`shm.layout`).
        self.progress: Callable[[], None] | None = None
        self._released: list[int] = []  # rows freed this tick, reusable from the next
        self._in_tick = False
        self._stopping: set[int] = set()  # rows asked to end since the last `drain` (see there)
        #: Called between the parts of a tick (`part_rows` jobs each): the worker applies the
        #: stops read meanwhile there and drains them at once (`drain`). A stop then waits
        #: for the part in progress, not the whole tick (a tick of 10,000 jobs is ~60 ms of
        #: CPU: stop() p99 was 117-288 ms at 10,000 channels). Positions of every job are
        #: stored at a part's end, so stop() and pause() are safe there, unlike in `between`.
        self.between_parts: Callable[[], None] | None = None
        self.part_rows = PART_ROWS
        self._serving_parts = False  # in a part of a tick that serves stops (not in a drain)
        #: While a part's flush loop serves stops: its rows (`seq[start:]`) not flushed yet,
        #: which a drain must leave alone (see `_serve_flushes`).
        self._unflushed: tuple[list[int], int] | None = None
        self.serve_every_flushes = SERVE_EVERY_FLUSHES

    # -- storage -----------------------------------------------------------------------

    def _alloc(self, cap: int) -> None:
        old = self._cap
        def grow(arr, shape_tail=(), dtype=np.int64, fillv=0):
            new = np.full((cap, *shape_tail), fillv, dtype)
            if arr is not None:
                new[:old] = arr
            return new
        g = lambda name, *a, **k: grow(getattr(self, name, None), *a, **k)  # noqa: E731
        self.slot_in = g("slot_in")
        self.slot_out = g("slot_out")
        self.pos = g("pos")
        self.end = g("end", fillv=-1)
        self.fed = g("fed")  # frames fed to the DTMF bank
        self.fill = g("fill")
        self.pad = g("pad")  # zero samples padding the last (partial) frame of a drained job
        self.skip = g("skip")
        self.stereo = g("stereo", dtype=bool)
        self.trim_leading = g("trim_leading", dtype=bool)
        self.done = g("done", dtype=bool)  # worker decided to end (SILENCE)
        self.room = g("room")  # input samples that still fit in the file (max_bytes)
        # The file's rate is the call's: `room` counts input samples exactly (a resampled
        # file's fills a little later than its rounded-up estimate says).
        self.exact = g("exact", dtype=bool)
        self.table = g("table", dtype=np.int8)  # 1 + index in self._tables of the writer's byte table; 0: none
        self.base = g("base")  # leg position of the job's first frame fed to the DTMF bank
        self.written = g("written")  # input samples in the file (the durable record's `samples`)
        self.jid = g("jid")  # job id per row (the durable record's `job`)
        self.opos = g("opos")  # leg position of staging[fill]: staging[i] is leg position opos - fill + i
        self.pseq = g("pseq")  # the last pause request applied (the gate word's seq; `shm.layout`)
        self.pz = g("pz", dtype=bool)  # pauses still touch this job's staged or future audio
        self.origin = g("origin", fillv=-1)  # leg position of the file's first sample; -1: none yet
        self.loud = g("loud", dtype=bool)  # separate mode: a recorded frame was above the threshold
        self.freed = g("freed", dtype=bool)  # in `_released`: freed during this tick
        hist = np.zeros((self.skew_ticks, cap), np.int64)
        if old:
            hist[:, :old] = self.hist
        self.hist = hist
        # np.zeros is calloc'd: rows never used cost no resident memory.
        # Mono staging is job-major (job rows x frame planes x FRAME): the mix kernel
        # writes each job's block in one place, and a flush hands the file a view of
        # one contiguous row, no copy. G.711 jobs (one byte per sample, `table` > 0)
        # are staged encoded, in stage_c: half the bytes to stage and no separate
        # encoding pass; their rows of stage_t are never touched (never resident).
        stage_t = np.zeros((cap, self.stage_len // FRAME, FRAME), np.int16)
        stage_c = np.zeros((cap, self.stage_len // FRAME, FRAME), np.uint8)
        stage_s = np.zeros((cap, self.stage_len, 2), np.int16)
        if old:
            # Growing at thousands of jobs (a takeover lands 5,000 on a survivor) copies
            # hundreds of MB: measured over 2 s in one go, which the supervisor took for a
            # stall. Copied in slices, with progress published between them.
            for new, cur in ((stage_t, self.stage_t), (stage_c, self.stage_c), (stage_s, self.stage_s)):
                for lo in range(0, old, _GROW_ROWS):
                    new[lo:min(old, lo + _GROW_ROWS)] = cur[lo:min(old, lo + _GROW_ROWS)]
                    if self.progress is not None:
                        self.progress()
        self.stage_t, self.stage_c, self.stage_s = stage_t, stage_c, stage_s
        self.stage_s3 = stage_s.reshape(cap, -1, FRAME, 2)
        if old:
            self.silence.grow(cap)
        else:
            self.silence = SilenceTracker(cap)
        if old and self.progress is not None:
            self.progress()
        self.dtmf.ensure_capacity(2 * cap)
        if old and self.progress is not None:
            self.progress()
        self._free_rows.extend(range(cap - 1, old - 1, -1))
        self._cap = cap

    # -- job control ---------------------------------------------------------------------

    def refusal(self, msg: StartJob) -> str:
        """Why this worker cannot run `msg` (a number it cannot represent, a slot outside
        its arena), or "". A job refused here ends alone with ERROR; taken, the same
        values would raise inside the tick and fail every job of the worker."""
        problem = start_job_problem(msg, self.arena.slots)
        return f"job {msg.job_id} refused: {problem}" if problem else ""

    def start(self, msg: StartJob) -> str:
        """Open the job's file and begin reading its rings; returns "" or an error text."""
        if msg.job_id in self.by_id:
            return f"job {msg.job_id} already running"
        why = self.refusal(msg)
        if why:
            return why
        writer, err = self.open_writer(msg)
        if writer is None:
            return err
        self.attach(msg, writer)
        return ""

    def open_writer(self, msg: StartJob) -> tuple[WavWriter | None, str]:
        """Create the job's file and its writer: (writer, "") or (None, error text).

        Touches no pipeline state, so the worker runs it on its file-opening threads:
        creating a file on a busy ext4 can block for milliseconds (inode allocation
        reads bitmaps and tables), which must not stall the tick.
        """
        stereo = msg.mode == "separate"
        try:
            sink = self.open_sink(msg.path, msg.cipher, self.file_mode)
        except (OSError, ValueError) as e:
            return None, f"cannot create {msg.path}: {e}"
        key = getattr(sink, "body_key", None)
        if key is not None and msg.cipher is not None and msg.cipher.get("scheme") == "envelope":
            # So that a surviving worker can continue this file (`shm.layout`, "Envelope keys").
            self.arena.keys[msg.slot_in] = np.frombuffer(key, np.uint8)
        try:
            max_bytes = 0 if stereo else msg.max_bytes
            limit = getattr(sink, "plaintext_limit", None)
            if limit is not None:
                max_bytes = limit(max_bytes)  # the encrypted file, not the WAV inside, obeys max_bytes
            return WavWriter(sink, msg.file_format, msg.rate, 2 if stereo else 1, max_bytes,
                             refresh_samples=HEADER_REFRESH_SAMPLES), ""
        except Exception as e:
            sink.discard()
            return None, f"cannot write {msg.path}: {e}"

    def open_resumed(self, msg: StartJob, r: ResumeJob) -> tuple[WavWriter | FinishedFile | None, str, int]:
        """Failover: reopen the file of a job a dead worker was recording, cut back to the
        `r.samples` input samples its durable record says it holds (fewer if a write was
        cut short): (writer, "", leg position to read from) or (None, error, 0).

        A job whose file was never created (the worker died opening it) starts afresh; one
        whose encrypted file its worker had published before dying is over: (FinishedFile,
        "", r.pos), the caller ends it (`worker.finished`).
        Runs on an opener thread, like `open_writer`: reopening and cutting a file is disk work.
        """
        stereo = msg.mode == "separate"
        if msg.cipher is not None and os.path.lexists(msg.path):
            # The dead worker had published the final file (its name appears only once the
            # file is complete): the job is over, with the cause it was finishing it with.
            if r.ending is Cause.NONE:
                return None, f"cannot resume {msg.path}: it exists, and the worker that died had not begun " \
                             f"finishing the job", 0
            try:
                done = adopt(msg.path, msg.cipher, self.arena.keys[msg.slot_in].tobytes(),
                             r.samples * msg.rate // SAMPLE_RATE)
            except (OSError, ValueError) as e:
                return None, f"cannot resume {msg.path}: {e}", 0
            return done, "", r.pos
        part = msg.path + ".wcpart"
        if not os.path.lexists(part if msg.cipher is not None else msg.path):
            writer, err = self.open_writer(msg)
            return writer, err, msg.start_pos
        try:
            sink = EncryptedSink.reopen(msg.path, msg.cipher, self.file_mode,
                                        body_key=self.arena.keys[msg.slot_in].tobytes()) \
                if msg.cipher is not None else FileSink.reopen(msg.path)
        except (OSError, ValueError) as e:
            return None, f"cannot resume {msg.path}: {e}", 0
        try:
            max_bytes = 0 if stereo else msg.max_bytes
            limit = getattr(sink, "plaintext_limit", None)
            if limit is not None:
                max_bytes = limit(max_bytes)
            size = sink.size()
            plan = repair_plan(sink.pread(4096, 0), size, msg.path)  # also: is it a WAV we can continue?
            hlen = plan.info.data_offset
            unit_bytes, unit_frames = plan.info.unit()
            on_disk = max(0, size - hlen) // unit_bytes * unit_frames
            wanted = r.samples if msg.rate == SAMPLE_RATE else r.samples * msg.rate // SAMPLE_RATE
            frames = min(on_disk, wanted) // unit_frames * unit_frames
            data_bytes = frames // unit_frames * unit_bytes
            taken = frames if msg.rate == SAMPLE_RATE else frames * SAMPLE_RATE // msg.rate
            sink.truncate(hlen + data_bytes)
            writer = WavWriter(sink, msg.file_format, msg.rate, 2 if stereo else 1, max_bytes,
                               refresh_samples=HEADER_REFRESH_SAMPLES)
            if writer.header_len != hlen:
                raise ValueError(f"header of {hlen} bytes, this writer makes {writer.header_len}")
            writer.continue_from(data_bytes, taken)
            return writer, "", r.pos - (r.samples - taken)
        except Exception as e:  # the file stays as it is (a .wcpart stays recoverable)
            close_kept(sink)
            return None, f"cannot resume {msg.path}: {e}", 0

    def attach(self, msg: StartJob, writer: WavWriter, resume: ResumeJob | None = None, pos: int = -1) -> None:
        """Begin reading the job's rings into `writer` (the pipeline side of a start: cheap).

        With `resume` (failover, after `open_resumed`): read from leg position `pos`,
        with the silence state of the dead worker's durable record."""
        self.attach_many([(msg, writer, resume, pos)])

    def attach_many(self, starts: list[tuple[StartJob, WavWriter, ResumeJob | None, int]], checked: bool = False
                    ) -> None:
        """`attach` for every (message, writer, resume, pos) of `starts`.

        Why a batch: a row's own set-up is a few scalar stores, but resetting its DTMF
        legs and publishing its durable record are numpy calls whose cost is per call,
        not per row (~40 of the ~70 us one attach took). The worker attaches what its
        openers made since the last serve point in one go, dozens at a time in a ramp.

        Raises ValueError, before anything changed, when a message is one this worker
        cannot run (`refusal`; `checked`: the caller has asked already). A takeover whose
        lost audio cannot be written (`_resume`) raises after the rows before it are
        attached and published; its own row is attached but not published.
        """
        if not checked:
            for msg, *_ in starts:
                why = self.refusal(msg)
                if why:
                    raise ValueError(why)
        if not starts:
            return
        need = len(starts) - len(self._free_rows)
        if need > 0:  # before any row is taken
            self._alloc(max(self._cap * 2, self._cap + need))
        now = time.monotonic()
        rows = np.array([self._attach_row(msg, writer, now) for msg, writer, _, _ in starts], np.int64)
        self.dtmf.reset(_bank_legs(rows), np.repeat([msg.dtmf_elim for msg, *_ in starts], 2))
        self._rows_dirty = True
        done = 0
        try:
            for i, (_, _, resume, pos) in enumerate(starts):
                if resume is not None:
                    self._resume(self.jobs[int(rows[i])], resume, pos)
                done = i + 1
        finally:
            self._publish(rows[:done])

    def _attach_row(self, msg: StartJob, writer: WavWriter, now: float) -> int:
        """Take a free row for the job and set its state (not its DTMF legs nor its record)."""
        stereo = msg.mode == "separate"
        row = self._free_rows.pop()
        job = Job(msg, row, writer, stereo, now)
        self.jobs[row] = job
        self.by_id[msg.job_id] = job
        self.slot_in[row] = msg.slot_in
        self.slot_out[row] = msg.slot_out
        self.pos[row] = msg.start_pos
        self.end[row] = -1
        self.fed[row] = 0
        self.fill[row] = 0
        self.skip[row] = 0
        self.pad[row] = 0
        self.stereo[row] = stereo
        self.done[row] = False
        self.room[row] = self._room(writer)
        self.exact[row] = writer.rate == SAMPLE_RATE
        self.table[row] = self._table_index(writer.byte_table)
        self.hist[:, row] = msg.start_pos
        ms = 0 if stereo else 1
        to_samples = lambda v: v * SAMPLE_RATE // 1000  # noqa: E731
        self.trim_leading[row] = bool(ms and msg.ms_initial_silence > 0)
        self.silence.reset(
            row, self.silence_dbfs, ms * to_samples(msg.ms_initial_silence), ms * to_samples(msg.ms_max_silence)
        )
        self.jid[row] = msg.job_id
        self.written[row] = writer.input_samples
        self.base[row] = msg.start_pos
        self.opos[row] = msg.start_pos
        self.pseq[row] = 0
        self.pz[row] = False
        self.origin[row] = msg.start_pos if writer.input_samples else -1
        self.loud[row] = False
        return row

    def _resume(self, job: Job, r: ResumeJob, pos: int) -> None:
        """Carry a dead worker's state into a freshly attached row (see the module docstring)."""
        row = job.row
        sil = self.silence
        back = int(r.samples - self.written[row])  # audio the file lost (a cut-short write): read again
        heard = bool(r.heard)
        sil.heard[row] = heard
        self.loud[row] = heard and job.stereo  # a separate job's audio_detected (`_attach_row` cleared it)
        sil.audio[row] = max(0, r.audio - back)
        sil.run[row] = max(0, r.run - back)
        sil.emitted[row] = self.written[row]
        sil.last_loud_end[row] = min(r.loud_end, int(self.written[row]))
        if self.written[row] and r.origin >= 0:
            self.origin[row] = r.origin  # not the job's start when its leading silence was held back
        a = self.arena
        # Audio the producers overwrote before the takeover: silence of exactly that length.
        newest = max(int(a.write_pos[job.msg.slot_in]), int(a.write_pos[job.msg.slot_out]))
        lost = max(int(r.lost), newest - a.capacity - pos)
        if lost > 0:
            log.error("job %d: %d samples (%.3f s) overwritten in the rings before the takeover: recorded as silence",
                      job.msg.job_id, lost, lost / SAMPLE_RATE)
            job.extra["lost"] = lost
            if heard or not self.trim_leading[row]:
                zeros = np.zeros((lost, 2) if job.stereo else lost, np.int16)
                job.writer.write(zeros)
                self.written[row] = job.writer.input_samples
                sil.emitted[row] = self.written[row]
            sil.audio[row] += lost
            if heard:
                sil.run[row] += lost
            pos += lost
        self.pos[row] = pos
        self.base[row] = pos
        self.opos[row] = pos
        self.hist[:, row] = pos
        for s in (job.msg.slot_in, job.msg.slot_out):
            a.read_pos[s] = pos
        self.room[row] = self._room(job.writer)

    def _publish(self, rows: np.ndarray) -> None:
        """Store the durable record of each job in `rows` (just flushed or attached):
        the other copy of two, seq cleared first and set last (`shm.layout`)."""
        if not len(rows):
            return
        rec = self.arena.durable
        slots = self.slot_in[rows]
        fill = self.fill[rows]
        emitted = self.base[rows] + np.maximum(0, self.fed[rows] - self.lookahead) * FRAME
        seq = rec[slots, :, L.D_SEQ].max(axis=1) + 1
        c = seq & 1
        rec[slots, c, L.D_SEQ] = 0
        sil = self.silence
        rec[slots, c, L.D_JOB] = self.jid[rows]
        rec[slots, c, L.D_RESUME] = emitted - fill
        rec[slots, c, L.D_SAMPLES] = self.written[rows]
        rec[slots, c, L.D_AUDIO] = sil.audio[rows] - fill
        rec[slots, c, L.D_RUN] = sil.run[rows]
        rec[slots, c, L.D_LOUD_END] = sil.last_loud_end[rows]
        # Heard: the silence detector's for a mixed job, `loud` for a separate one (which
        # has no detector); a takeover must not lose either (audio_detected).
        rec[slots, c, L.D_FLAGS] = ((sil.heard[rows] | self.loud[rows]).astype(np.int64) * L.D_HEARD
                                    | (self.origin[rows] + 1) << L.D_ORIGIN_SHIFT)
        rec[slots, c, L.D_SEQ] = seq

    def stop(self, job_id: int, cause: Cause, end_pos: int) -> bool:
        """Ask a job to end once its legs are drained up to `end_pos`."""
        job = self.by_id.get(job_id)
        if job is None:
            return False
        if job.stop_cause is None:
            job.stop_cause = cause
        row = job.row
        self.end[row] = max(int(self.pos[row]), end_pos)
        self._stopping.add(row)
        return True

    def pause(self, msg: PauseJob) -> bool:
        """Apply a pause or resume request from `msg.pos` on; False for an unknown job.

        Nothing at or after `msg.pos` has been read yet: the gate held the job back
        (`shm.layout`, "Pause gate"), so the request applies to staged audio exactly."""
        job = self.by_id.get(msg.job_id)
        if job is None:
            return False
        if job.pauses is None:
            job.pauses = PauseSchedule()
        job.pauses.request(msg.pos, msg.mode)
        row = job.row
        self.pseq[row] = msg.seq
        self.pz[row] = job.pauses.pending(int(self.opos[row]) - int(self.fill[row]))
        return True

    def _gate(self, rows: np.ndarray, gate: np.ndarray, pos: np.ndarray, allowed: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Hold back jobs whose pause or resume request is being made or is on its way."""
        hold = gate == L.GATE_HOLD
        seq = (gate >> L.GATE_SEQ_SHIFT) & L.GATE_SEQ_MASK
        pending = (gate > 0) & (seq != (self.pseq[rows] & L.GATE_SEQ_MASK))
        limit = np.where(hold, pos, np.where(pending, np.maximum(pos, gate & L.GATE_POS_MASK), allowed))
        gated = limit < allowed
        return np.minimum(allowed, limit), gated

    def _paused_frames(self, sel: np.ndarray, opos: np.ndarray, b: int) -> np.ndarray:
        """(m, b): whether frame k of each job in `sel`, at leg position opos + k*FRAME,
        touches a paused span (only jobs with pauses are looked at: few)."""
        out = np.zeros((len(sel), b), bool)
        for i in np.flatnonzero(self.pz[sel]).tolist():
            sched = self.jobs[int(sel[i])].pauses
            for k in range(b):
                p = int(opos[i]) + k * FRAME
                out[i, k] = sched.touches(p, p + FRAME)
        return out

    def _keeps_paused(self, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Whether the paused frame of each row (at leg position `at`) stays in its file
        as silence (mode "silence") or is cut out ("skip"): the detector's file position
        moves only for the first."""
        return np.fromiter((self.jobs[int(r)].pauses.mode_at(int(p), int(p) + FRAME) == "silence"
                            for r, p in zip(rows.tolist(), at.tolist())), bool, len(rows))

    def _silence_value(self, job: Job) -> int:
        """What digital silence is in this job's staging: sample 0, or its code."""
        codes = bool(self.table[job.row]) and not job.stereo
        return int(job.writer.byte_table[0]) if codes else 0

    def _note_loud(self, rows: np.ndarray, pair: np.ndarray) -> None:
        """Separate mode has no silence detector: note whether either leg of a frame was
        above the threshold (paused frames excepted) for the result's `audio_detected`."""
        todo = ~self.loud[rows]
        if not todo.any():
            return
        x = pair[todo].astype(np.float32)  # (m, B, FRAME, 2)
        ms = (x * x).mean(axis=2).max(axis=-1)  # (m, B)
        r = rows[todo]
        over = ms > self.silence.threshold[r][:, None]
        if self.pz[r].any():
            over &= ~self._paused_frames(r, self.opos[r], over.shape[1])
        self.loud[r] |= over.any(axis=1)

    def _take_digits(self) -> None:
        """Queue the digits the DTMF bank confirmed this tick, per job, as leg positions."""
        rows, digits, start = self.dtmf.pop_event_arrays()
        if not len(rows):
            return
        per_job: dict[int, list] = {}
        jobs = self.jobs
        at = (self.base[rows // 2] + start).tolist()
        for r, d, p in zip(rows.tolist(), digits.tolist(), at):
            job = jobs.get(r >> 1)
            if job is None:
                continue
            per_job.setdefault(job.msg.job_id, []).append([DIGITS[d], _LEG_NAMES[r & 1], p])
        for job_id, digits_of_job in per_job.items():
            self.digits.append(JobDigits(job_id=job_id, digits=digits_of_job))

    def abort_all(self, cause: Cause) -> None:
        for job in list(self.jobs.values()):
            self.stop(job.msg.job_id, cause, int(self.pos[job.row]))

    # -- the tick --------------------------------------------------------------------------

    def tick(self, now: float | None = None, block: int = 1) -> int:
        """Advance every job as far as its audio allows; returns frames processed.

        With `block` > 1 (the worker's choice when it has thousands of jobs and ticks
        every 100 ms), a running job advances by whole blocks of `block` frames, each
        step one block of every job: the per-step numpy calls are fixed costs, so 5
        frames per step cost much less than 5 steps. What is left over (less than a
        block) waits for the next tick; a draining job takes its rest frame by frame.

        With `between_parts` set, the jobs are advanced in parts of `part_rows`, and the
        callback runs between two parts (see there).
        """
        if not 1 <= block <= self.max_block:
            raise ValueError(f"block must be 1 .. {self.max_block}, not {block}")
        now = time.monotonic() if now is None else now
        self._in_tick = True
        try:
            if self._rows_dirty:
                # Once per tick, not per start: a burst of 1,000 starts costs one sort.
                self.rows = np.fromiter(self.jobs, np.int64, len(self.jobs))
                self.rows.sort()
                self._rows_dirty = False
            rows = self.rows
            if not len(rows):
                return 0
            # One row of the skew history per tick, stamped now; each part stores its jobs'
            # leading positions in it (`_tick`). A lookup wants a row at least `skew` old,
            # so the row being filled is never read meanwhile.
            self._hist_i = (self._hist_i + 1) % self.skew_ticks
            self.hist_t[self._hist_i] = now
            parts = self.between_parts
            # Parts of equal work, about `part_rows` blocks each: a part's fixed costs (numpy
            # calls, the DTMF bank's per-call work) are paid once per part.
            bounds, plan = ([0, len(rows)], None) if parts is None else self._part_bounds(now, rows, block)
            self._serving_parts = parts is not None
            total = 0
            for k in range(len(bounds) - 1):
                part = rows[bounds[k]:bounds[k + 1]]
                cap = None if plan is None else plan[bounds[k]:bounds[k + 1]]
                if k:
                    parts()
                    kept = self._kept(part)  # jobs ended in a drain between parts are not ours to advance
                    if cap is not None and len(kept) < len(part):
                        cap = cap[~self.freed[part]]
                    part = kept
                total += self._tick(now, block, part, history=True, cap=cap)
            return total
        finally:
            self._in_tick = False
            self._serving_parts = False
            self._recycle()

    def _part_bounds(self, now: float, rows: np.ndarray, block: int) -> tuple[list[int], np.ndarray]:
        """Where the parts of this tick begin and end (indices into `rows`), about
        `part_rows` blocks of work each, and the blocks each row was planned with.

        A worker that is behind (a producer that caught up in a burst) advances its jobs
        by up to `max_frames` in one tick, several blocks each; parts of `part_rows` jobs
        would then each take that many times longer, and a stop read meanwhile would wait
        for all of it (stop() p99 at 20,000 channels followed the backlog). So a part holds
        about `part_rows` blocks of work, whatever each job has. The work is not spread
        evenly over the rows either: calls that started together sit in neighbouring rows
        and catch up together, and parts of equal row counts measured 0.3 to 21 ms of CPU
        within one tick at 20,000 channels. So the cuts fall at equal shares of the work.

        The plan holds: a part advances each running job by at most the blocks it had when
        the tick began (`_tick`'s `cap`). The producers keep writing while a tick runs, and
        the later parts found up to twice the blocks planned (a part of 1,686 jobs took two
        steps, 25 ms, at 20,000 channels); what came meanwhile waits for the next tick.
        """
        a = self.arena
        # What `_tick` will allow, less the gates and ends (a drain is not capped): a leg
        # that says nothing is waited for only `skew`, so the plan must count that too.
        both = np.minimum(a.write_pos[self.slot_in[rows]], a.write_pos[self.slot_out[rows]])
        have = np.maximum(both, self._old_lead(now, rows)) - self.pos[rows]
        blocks = np.clip(have // (block * FRAME), 1, max(1, self.max_frames // block))
        work = np.cumsum(blocks)
        n = max(1, min(len(rows), -(-int(work[-1]) // self.part_rows)))
        # Part k ends after the first row by which k/n of the work is done.
        cuts = np.searchsorted(work, work[-1] * np.arange(1, n) / n) + 1
        return [0, *np.unique(cuts[cuts < len(rows)]).tolist(), len(rows)], blocks

    def _old_lead(self, now: float, rows: np.ndarray) -> np.ndarray:
        """Where the leading leg of each job was `skew` ago: the newest history row at least
        that old (a job younger than that reads its start position there); zeros while the
        worker is younger than `skew` (then both legs are waited for)."""
        old = self.hist_t <= now - self.skew_s
        if not old.any():
            return np.zeros(len(rows), np.int64)
        return self.hist[int(np.argmax(np.where(old, self.hist_t, -np.inf))), rows]

    def _kept(self, rows: np.ndarray) -> np.ndarray:
        """The rows of `rows` (all holding a job when the tick or drain began) whose job is
        still here: a row freed during a tick stays in `_released` until the tick is over,
        never reused meanwhile, so this is one vectorised test, not a lookup per job."""
        return rows[~self.freed[rows]] if self._released else rows  # np.isin: 21 us for one row

    def _recycle(self) -> None:
        """Rows freed during a tick are reusable once it is over (a start served mid-tick
        must not take a row the tick still holds in its arrays)."""
        if self._released:
            self.freed[self._released] = False
            self._free_rows.extend(self._released)
            self._released.clear()

    def drain(self, now: float | None = None, block: int = 1) -> int:
        """Advance only the jobs asked to end since the last call, to their end if the
        tick's limits allow; returns frames processed. Between ticks, or between the
        parts of one (`between_parts`).

        A stop used to wait for the next tick (100 ms apart at scale) and then for the whole
        tick before its job was finalised: stop() p99 138-195 ms at 10,000 channels. The
        worker calls this as soon as it has applied stops, so a job ends in a pass over its
        own rows alone. The skew history is left alone (it is one row per regular tick).
        """
        if not 1 <= block <= self.max_block:
            raise ValueError(f"block must be 1 .. {self.max_block}, not {block}")
        held: set[int] = set()
        if self._unflushed is not None and self._stopping:
            seq, start = self._unflushed
            held = set(seq[start:])  # their flush is under way: drained at the next serve point
        rows = sorted(r for r in self._stopping if r in self.jobs and self.end[r] >= 0 and r not in held)
        self._stopping.difference_update(rows)
        if not rows:
            return 0
        nested = self._in_tick
        self._in_tick = True
        serving, self._serving_parts = self._serving_parts, False  # a drain's own flushes serve nothing
        now = time.monotonic() if now is None else now
        try:
            # A pass advances a job by at most `max_frames` (what staging holds between two
            # flushes); a job stopped while its worker is behind (a producer that caught up
            # in a burst) has more, so pass again while the passes make progress: the stop
            # then waits for its own backlog, not for one tick per `max_frames` of it.
            total = 0
            arr = np.array(rows, np.int64)
            for _ in range(self.arena.capacity // (self.max_frames * FRAME) + 1):
                done = self._tick(now, block, arr, history=False)
                total += done
                arr = self._kept(arr)
                arr = arr[self.pos[arr] < self.end[arr]]
                if not done or not len(arr):
                    break
            return total
        finally:
            self._serving_parts = serving
            if not nested:
                self._in_tick = False
                self._recycle()

    def _tick(self, now: float, block: int, rows: np.ndarray, history: bool, cap: np.ndarray | None = None) -> int:
        """Advance jobs `rows`; with `history`, store their leading positions in the skew
        history's current row (a regular tick, not a drain). `cap`: at most this many
        blocks per running job (a draining one goes to its end regardless)."""
        if not len(rows):
            return 0
        a = self.arena
        w_in = a.write_pos[self.slot_in[rows]]
        w_out = a.write_pos[self.slot_out[rows]]
        # Loaded after the write positions, never before (`shm.layout`, "Pause gate").
        gate = a.gate[self.slot_in[rows]]
        lead = np.maximum(w_in, w_out)
        old_lead = self._old_lead(now, rows)
        if history:  # a drain pass leaves the history to the ticks
            self.hist[self._hist_i, rows] = lead
        allowed = np.maximum(np.minimum(w_in, w_out), old_lead)
        end = self.end[rows]
        draining = end >= 0
        allowed = np.where(draining, end, allowed)
        pos = self.pos[rows]
        if gate.any():
            allowed, gated = self._gate(rows, gate, pos, allowed)
            draining = draining & ~gated  # held at a frame boundary, not drained with padding
        avail = allowed - pos
        nframes = np.where(draining, -(-avail // FRAME), avail // FRAME)
        nframes = np.clip(nframes, 0, self.max_frames)
        if cap is not None:
            nframes = np.where(draining, nframes, np.minimum(nframes, cap * block))
        nblk = nframes // block if block > 1 else np.zeros_like(nframes)
        single = np.where(draining, nframes - nblk * block, 0) if block > 1 else nframes
        nframes = nblk * block + single
        total = int(nframes.sum())
        # A drained job's last frame may be partial: remember the padding to cut at the end.
        partial = draining & (nframes * FRAME > avail) & (avail > 0)
        if partial.any():
            self.pad[rows[partial]] = (nframes * FRAME - avail)[partial]
        between = self.between
        # Steps: the blocks (step k: block k of every job that has one), then single
        # frames (a draining job's rest), so that each job's frames stay in order.
        steps = [(block, nblk > k, k * block) for k in range(int(nblk.max(initial=0)))]
        steps += [(1, single > j, nblk * block + j) for j in range(int(single.max(initial=0)))]
        for i, (b, chosen, first) in enumerate(steps):
            if i and between is not None:
                between()
            sel_i = np.flatnonzero(chosen)
            # All jobs in one step: per-step costs are mostly fixed, and splitting 5,000
            # jobs into steps of 1,000 so that each pass stays in cache cost 4-11 % more
            # (bench/pipeline.py --library; 500 per step: 18-29 % more).
            off = first if np.isscalar(first) else first[sel_i]
            self._step(rows[sel_i], b, pos[sel_i] + off * FRAME, np.minimum(w_in[sel_i], allowed[sel_i]),
                       np.minimum(w_out[sel_i], allowed[sel_i]))
        self.pos[rows] = pos + np.minimum(nframes * FRAME, np.maximum(avail, 0))
        newpos = self.pos[rows]
        a.read_pos[self.slot_in[rows]] = newpos
        a.read_pos[self.slot_out[rows]] = newpos
        self._take_digits()
        self._flush_and_end(rows)
        return total

    def _step(self, sel: np.ndarray, b: int, p: np.ndarray, w_in: np.ndarray, w_out: np.ndarray) -> None:
        """One step of jobs `sel`: their `b` frames from leg position `p` (legs written up
        to `w_in` / `w_out`) through the DTMF bank, mixed or paired, into staging."""
        m = len(sel)
        # Both legs of each job in one gather, interleaved (in, out) as the bank wants them.
        slots = np.empty(2 * m, np.int64)
        slots[0::2], slots[1::2] = self.slot_in[sel], self.slot_out[sel]
        written = np.empty(2 * m, np.int64)
        written[0::2], written[1::2] = w_in, w_out
        bank_rows = _bank_legs(sel)
        p2 = np.repeat(p, 2)
        cap = self.arena.capacity
        # The bank reads both legs straight from the rings into its delay lines, and
        # leaves the outgoing frames there for the mix to read in place.
        slots_out, masked = self.dtmf.process_ring(bank_rows, self._ring, slots * cap, p2, written - p2, cap, b)
        if self.between is not None:
            # The bank is the largest share of a step (~40 %): serving on both sides of
            # it halves the longest stretch without a serve point.
            self.between()
        fed = self.fed[sel]
        self.fed[sel] = fed + b
        so = slots_out.reshape(m, 2, b)
        mk = masked.reshape(m, 2)
        # The bank's first `lookahead` outputs per job are its initial delay line.
        whole = fed >= self.lookahead
        direct = whole & ~self.stereo[sel]
        if direct.all():
            self._emit_delayed(sel, so, mk)
            return
        if direct.any():
            self._emit_delayed(sel[direct], so[direct], mk[direct])
        rest = np.flatnonzero(~direct)
        out = self.dtmf.read(so[rest].reshape(-1, b), mk[rest].reshape(-1)).reshape(len(rest), 2, b, FRAME)
        sel, fed, whole = sel[rest], fed[rest], whole[rest]
        if whole.any():
            self._emit(sel[whole], out[whole, 0], out[whole, 1])
        for f in range(b):  # young jobs: frame by frame, the delay line's part dropped
            keep = ~whole & (fed + f >= self.lookahead)
            if keep.any():
                self._emit(sel[keep], out[keep, 0, f:f + 1], out[keep, 1, f:f + 1])

    def _emit_delayed(self, sel: np.ndarray, so: np.ndarray, mk: np.ndarray) -> None:
        """`_emit` for mono jobs whose frames are still in the DTMF bank: slots `so`
        (jobs x 2 legs x B), `mk` (jobs x 2) where muted samples may be."""
        live = ~self.done[sel]
        if not live.all():
            sel, so, mk = sel[live], so[live], mk[live]
        if len(sel):
            self._mix(sel, self.dtmf.frames, self.dtmf.mute, so[:, 0], so[:, 1], mk[:, 0], mk[:, 1])

    def _emit(self, sel: np.ndarray, y_in: np.ndarray, y_out: np.ndarray) -> None:
        """Mix or pair B output frames per job in `sel` (legs given as arrays shaped
        (m, B, FRAME): the bank's `read` or `flush`) and append them to staging.

        The rare paths (separate mode, a job's first frames, the end of a job); jobs
        whose frames are still in the bank go through `_emit_delayed` without a copy.
        """
        live = ~self.done[sel]
        if not live.all():
            sel, y_in, y_out = sel[live], y_in[live], y_out[live]
        if not len(sel):
            return
        b = y_in.shape[1]
        stereo = self.stereo[sel]
        if stereo.any():
            s = stereo
            fill = self.fill[sel[s]]
            pair = np.stack([y_in[s], y_out[s]], axis=-1)  # (ms, B, FRAME, 2)
            self.stage_s3[sel[s][:, None], (fill // FRAME)[:, None] + np.arange(b)] = pair  # legs as they are
            self._note_loud(sel[s], pair)
            self.fill[sel[s]] = fill + b * FRAME
            self.opos[sel[s]] += b * FRAME
            mono = ~stereo
            if not mono.any():
                return
            sel, y_in, y_out = sel[mono], y_in[mono], y_out[mono]
        m = len(sel)
        src = np.concatenate([y_in.reshape(-1, FRAME), y_out.reshape(-1, FRAME)])
        s_in = np.arange(m * b, dtype=np.int64).reshape(m, b)
        none = np.zeros(m, np.bool_)
        self._mix(sel, src, self._no_mute, s_in, s_in + m * b, none, none)

    def _mix(self, sel: np.ndarray, src: np.ndarray, mute: np.ndarray, s_in: np.ndarray, s_out: np.ndarray,
             m_in: np.ndarray, m_out: np.ndarray) -> None:
        """Mix B frames of each mono job in `sel` (leg frames: rows of `src`, see
        `kernels.mix_frames`) into staging, then let the silence detector take them."""
        m, b = s_in.shape
        fill = self.fill[sel]
        fslot = fill // FRAME  # staging rows hold whole frames: fill is a multiple of FRAME here
        # Saturating mix of the two int16 legs straight into staging (G.711 jobs: as
        # codes), with each mixed frame's energy for the silence detector: one pass.
        energy = np.empty((m, b), np.float32)
        kernels.mix_frames(src, mute, s_in, s_out, m_in, m_out, sel, fslot, self.table, self._table_rows,
                           self.stage_t, self.stage_c, energy)
        taken = np.zeros(m, np.int64)
        opos = self.opos[sel]
        paused = self._paused_frames(sel, opos, b) if self.pz[sel].any() else None
        if paused is None:  # the common case, compiled
            sil = self.silence
            room = np.where(self.exact[sel], self.room[sel], _UNLIMITED)
            kernels.silence_frames(sel, energy, fill, FRAME, PREROLL_SAMPLES, sil.threshold, sil.heard,
                                   sil.initial_limit, sil.max_limit, sil.emitted, sil.last_loud_end, sil.run,
                                   sil.audio, self.trim_leading, self.skip, room, self.done, taken)
        else:
            self._silence_paused(sel, energy, fill, opos, paused, taken)
        self.fill[sel] = fill + taken * FRAME
        self.opos[sel] = opos + taken * FRAME

    def _silence_paused(self, sel: np.ndarray, energy: np.ndarray, fill: np.ndarray, opos: np.ndarray,
                        paused: np.ndarray, taken: np.ndarray) -> None:
        """`kernels.silence_frames` for a step with paused frames, frame by frame in numpy:
        paused frames count toward neither silence limit and are never "heard". A job stops
        taking frames at one that starts where its file is full, as there."""
        going = np.arange(len(sel))  # positions still taking frames
        room = np.where(self.exact[sel], self.room[sel], _UNLIMITED)
        for k in range(energy.shape[1]):
            at, before = sel[going], fill[going] + k * FRAME
            full = (self.silence.heard[at] | ~self.trim_leading[at]) & (before - self.skip[at] >= room[going])
            if full.any():
                going, at, before = going[~full], at[~full], before[~full]
                if not len(going):
                    break
            pk = paused[going, k]
            self.silence.pass_over(at[pk], FRAME, self._keeps_paused(at[pk], opos[going][pk] + k * FRAME))
            first_k, ended_k = self.silence.step_energy(at[~pk], energy[going, k][~pk], FRAME, before[~pk])
            first = np.zeros(len(at), bool)
            ended = np.zeros(len(at), bool)
            first[~pk], ended[~pk] = first_k, ended_k
            taken[going] += 1
            if first.any():
                lead = first & self.trim_leading[at]
                self.skip[at[lead]] = np.maximum(0, before[lead] - PREROLL_SAMPLES)
            if ended.any():
                self.done[at[ended]] = True
                going = going[~ended]
                if not len(going):
                    break

    def _table_index(self, table: np.ndarray | None) -> int:
        if table is None:
            return 0
        for i, t in enumerate(self._tables):
            if t is table:
                return i + 1
        self._tables.append(table)
        self._table_rows = np.stack(self._tables)
        return len(self._tables)

    def _flush_and_end(self, rows: np.ndarray) -> None:
        """Write the staged audio of the jobs in `rows` that is due (a full flush, an
        end, a size limit) and end the jobs that end now, serving between flushes.

        A job that ends other than by silence first gets what the DTMF look-ahead still
        holds of it (`_append_delayed`), for all such jobs of a stretch together."""
        fill = self.fill[rows]
        finished = (self.end[rows] >= 0) & (self.pos[rows] >= self.end[rows])
        # A job whose staged audio would fill the file is flushed now, so SIZE ends it
        # when max_bytes is reached, not at the next regular flush.
        full = fill - self.skip[rows] >= self.room[rows]
        regular = fill >= self.flush_samples
        due = regular | finished | self.done[rows] | full
        # The plain case, most jobs of a tick: a full staging row of a G.711 job that goes
        # on, all of it to be written (see `_flush_codes`).
        plain = regular & (fill == self.flush_samples) & ~finished & ~self.done[rows] & ~full & ~self.pz[rows] \
            & (self.table[rows] > 0) & (self.skip[rows] == 0) & (~self.trim_leading[rows] | self.silence.heard[rows])
        flushed = rows[plain | due]
        due &= ~plain
        due_rows = rows[due].tolist()
        if plain.any():
            self._flush_codes(rows[plain], due_rows)
        every = self.serve_every_flushes
        appended: set[int] = set()
        ahead = 0  # due_rows[:ahead] have had their look-ahead appended where they end
        for i, row in enumerate(due_rows):
            if i % every == every - 1:
                self._serve_flushes(due_rows, i)
            if i >= ahead:
                ahead = self._stretch_end(i, len(due_rows))
                appended.update(self._append_delayed(due_rows[i:ahead]))
            job = self.jobs[row]
            ending, job.cause = self._end_of(row)
            if ending and job.cause != Cause.SILENCE:
                if row not in appended:  # defensive: a stretch ends where stops may come
                    self._append_delayed([row], check=False)
                cut = min(int(self.pad[row]), int(self.fill[row] - self.skip[row]))
                self.fill[row] -= cut
                self.opos[row] -= cut
            self._flush(job)
            self.room[row] = self._room(job.writer)
            if job.writer.room == 0 and job.cause is None and not ending:
                job.cause = Cause.SIZE
                ending = True
            if ending or job.cause in (Cause.SIZE, Cause.ERROR):
                self._finish(job)
        if len(flushed):
            going = self._kept(flushed)
            self._publish(going)

    def _flush_codes(self, rows: np.ndarray, then: list[int]) -> None:
        """Write one flush of each job in `rows` (mono G.711 at 8 kHz, staging exactly
        `flush_samples`, nothing to skip, not ending): its codes, staged encoded by
        `kernels.mix_frames`, in stretches between serve points (`_write_codes_rows`).
        `then`: the rows the caller flushes next (held from stops served meanwhile, as these are)."""
        seq = rows.tolist()
        every = self.serve_every_flushes
        done = 0  # rows[:done] are accounted for
        i = 0
        while i < len(seq):
            if i % every == every - 1:
                # A drain there sees the rows flushed so far as they are: staging emptied.
                self._flushed_codes(rows[done:i])
                done = i
                self._serve_flushes(seq + then if then else seq, i)
            j = min(len(seq), i + every - (i + 1) % every)  # up to the next serve point
            self._write_codes_rows(rows[i:j])
            i = j
        self._flushed_codes(rows[done:])

    def _write_codes_rows(self, rows: np.ndarray) -> None:
        """One flush of the codes of each job in `rows`: the plain files that hold their
        descriptor in one compiled loop of pwrite(2) (`kernels.pwrite_rows`: ~2 us less
        per write than one `write_codes` each), the others, and any not written whole
        there, through `write_codes` (which raises the error)."""
        nslot = self.flush_samples // FRAME
        jobs = [self.jobs[row] for row in rows.tolist()]
        targets = [job.writer.codes_target(self.flush_samples) for job in jobs]
        fds = np.fromiter((t[0] for t in targets), np.int64, len(jobs))
        offsets = np.fromiter((t[1] for t in targets), np.int64, len(jobs))
        wrote = np.empty(len(jobs), np.int64)
        kernels.pwrite_rows(fds, self.stage_c, rows, self.flush_samples, offsets, wrote)
        for job, n in zip(jobs, wrote.tolist()):
            try:
                if n == self.flush_samples:
                    job.writer.codes_written(n)
                else:
                    job.writer.write_codes(self.stage_c[job.row, :nslot].reshape(-1))  # a view: no copy
            except Exception as e:  # disk full, I/O error: the job fails, the file stays valid so far
                log.error("job %d: write failed: %s", job.msg.job_id, e)
                job.cause, job.error = Cause.ERROR, f"write failed: {_os_error_text(e)}"
                self._finish(job)

    def _flushed_codes(self, rows: np.ndarray) -> None:
        """`_flush_codes` wrote one flush of each of `rows`: one byte per input sample, so
        each file's room shrank by exactly what it took. A file's first flush sets its
        origin, as `_flush` does (without it a G.711 file's origin was its last flush's
        position, and the sidecar placed no digit keyed before that)."""
        fresh = rows[self.origin[rows] < 0]
        self.origin[fresh] = self.opos[fresh] - self.fill[fresh]  # the plain path skips nothing
        self.room[rows] -= self.flush_samples
        self.written[rows] += self.flush_samples
        self.fill[rows] = 0

    def _serve_flushes(self, seq: list[int], i: int) -> None:
        """A serve point of a flush loop about to flush `seq[i]` (`seq[i:]` still to flush).

        Calls that started together flush together, forever after if they once caught up
        together: at 20,000 channels one part's flushes took 20 ms, and a stop read then
        waited for all of them and the part's rest (stop() p99 68-200 ms). So inside a
        tick's part this serves stops too (`between_parts`): the part's positions are all
        stored by now, as between two parts, and a stopped job drains at once unless its
        own flush is still ahead in this loop (`drain` leaves `seq[i:]` for later: its
        staging holds a flush the loop is about to write).
        """
        if self._serving_parts and self.between_parts is not None:
            self._unflushed = (seq, i)
            try:
                self.between_parts()
            finally:
                self._unflushed = None
        if self.between is not None:
            self.between()

    def _stretch_end(self, i: int, n: int) -> int:
        """The end of the stretch of a flush loop's rows starting at `i` (of `n`) in which
        no stop can be applied: up to the next serve point that serves stops (every
        `serve_every_flushes` rows, inside a tick's part), or all of them (a drain's
        flushes serve no stops). Whether a job ends cannot change inside one."""
        if not self._serving_parts:
            return n
        every = self.serve_every_flushes
        return min(n, i + every - (i + 1) % every)

    def _append_delayed(self, rows: list[int], check: bool = True) -> list[int]:
        """At the end of jobs, the DTMF look-ahead still holds their last frames: into
        staging, all in one step where it has room (a block, as a tick's; a frame at a time
        it cost 5 rounds of numpy calls per job). With `check`, only the rows of `rows`
        whose job ends now other than by silence (as `_flush_and_end` decides); returns
        the rows done."""
        if check and rows:
            r = np.array(rows, np.int64)
            ending = self.done[r] | ((self.end[r] >= 0) & (self.pos[r] >= self.end[r]))  # as `_end_of`, in one go
            rows = [row for row in r[ending].tolist() if self._end_of(row)[1] != Cause.SILENCE]
        if not rows:
            return rows
        sel = np.array(rows, np.int64)
        held = self.dtmf.flush(_bank_legs(sel)).reshape(len(sel), 2, self.lookahead, FRAME)
        n = np.minimum(self.lookahead, self.fed[sel])
        self.fed[sel] = 0  # flushed: nothing more to take from the bank
        whole = (n == self.lookahead) & (self.fill[sel] + n * FRAME <= self.stage_len)
        if whole.any():
            self._emit(sel[whole], held[whole, 0], held[whole, 1])
        for i in np.flatnonzero(~whole).tolist():  # a young job, or staging without room
            row, k0 = rows[i], self.lookahead - int(n[i])
            for k in range(k0, self.lookahead):
                if self.fill[row] + FRAME > self.stage_len:
                    self._flush(self.jobs[row])
                self._emit(sel[i:i + 1], held[i:i + 1, 0, k:k + 1], held[i:i + 1, 1, k:k + 1])
        return rows

    def _end_of(self, row: int) -> tuple[bool, Cause | None]:
        """Whether the job in `row` ends at this flush, and its cause then: SILENCE where
        the silence limit was reached (always before a stop's end position: no audio past
        it is read), else the stop's once its end position is reached."""
        job = self.jobs[row]
        stopped = bool(self.end[row] >= 0 and self.pos[row] >= self.end[row])
        cause = job.cause
        if cause is None and self.done[row]:
            cause = Cause.SILENCE
        elif cause is None and stopped:
            cause = job.stop_cause
        return bool(self.done[row]) or stopped, cause

    def _flush(self, job: Job) -> None:
        row = job.row
        fill, skip = int(self.fill[row]), int(self.skip[row])
        codes = bool(self.table[row]) and not job.stereo
        if job.stereo:
            data = self.stage_s[row, skip:fill]
        else:
            stage = self.stage_c if codes else self.stage_t
            # skip is a whole number of frames; fill may end inside the last one.
            data = stage[row, skip // FRAME:-(-fill // FRAME)].reshape(-1)[:fill - skip]
            if self.trim_leading[row] and not self.silence.heard[row]:
                # Still waiting for the caller: keep only the pre-roll, write nothing.
                keep = min(fill, PREROLL_SAMPLES) // FRAME
                last = fill // FRAME
                stage[row, :keep] = stage[row, last - keep:last].copy()
                self.fill[row], self.skip[row] = keep * FRAME, 0
                return
        if job.cause == Cause.SIZE or job.writer.full:
            data = data[:0]
        first_pos = int(self.opos[row]) - fill + skip  # leg position of data[0]
        if self.pz[row] and len(data):
            data = job.pauses.apply(data, first_pos, self._silence_value(job))
            self.pz[row] = job.pauses.pending(int(self.opos[row]))
        if len(data) and self.origin[row] < 0:
            self.origin[row] = first_pos
        try:
            if codes and len(data):
                job.writer.write_codes(data, fit=True)  # already encoded, one byte per sample
            elif len(data):
                job.writer.write(data)
        except Exception as e:  # disk full, I/O error: the job fails, the file stays valid so far
            log.error("job %d: write failed: %s", job.msg.job_id, e)
            job.cause, job.error = Cause.ERROR, f"write failed: {_os_error_text(e)}"
        self.written[row] = job.writer.input_samples
        self.fill[row] = 0
        self.skip[row] = 0

    def _finish(self, job: Job) -> None:
        self._take_digits()  # the last flush may have confirmed a digit: it belongs to this job's row
        row = job.row
        cause = job.cause or Cause.ERROR
        writer = job.writer
        nbytes = samples = 0
        self._mark_ending(job, cause)  # before the file is finished: a takeover may find it so
        try:
            if cause == Cause.SILENCE and not job.stereo:
                heard = bool(self.silence.heard[row])
                keep = int(self.silence.last_loud_end[row]) + self._tail(job) if heard else 0
                writer.truncate(min(keep, writer.input_samples))
            nbytes, samples = writer.close()
        except Exception as e:
            # What was recorded is kept: a plain file as a valid partial WAV, an encrypted
            # one as its intermediate (`wholecall recover`). Deleting it would lose the call.
            try:
                left = writer.keep()
            except Exception as k:  # noqa: BLE001 - the job must still end
                left = f"nothing (keeping failed too: {k})"
            cause, job.error = Cause.ERROR, (f"{job.error}; " if job.error else "") + \
                f"finalising {job.msg.path} failed: {_os_error_text(e)}; kept {left}"
            log.error("job %d: %s", job.msg.job_id, job.error)
        self._release(job)
        if self.progress is not None:
            self.progress()
        self.ended.append(
            JobEnded(job_id=job.msg.job_id, cause=cause, bytes=nbytes, samples=samples,
                     duration_s=samples / job.msg.rate, error=job.error, origin=int(self.origin[row]), end_pos=int(self.pos[row]),
                     heard=bool(self.loud[row] if job.stereo else self.silence.heard[row]))
        )

    @staticmethod
    def _room(writer: WavWriter) -> int:
        """Input (8 kHz) samples that still fit in the writer's file, rounded up."""
        return -(-writer.room * SAMPLE_RATE // writer.rate)

    def _tail(self, job: Job) -> int:
        return self.hangover_samples

    def _mark_ending(self, job: Job, cause: Cause) -> None:
        """Store `cause` in the newest copy of the job's durable record (`shm.layout`,
        flags): one aligned 8-byte store, so a reader sees the copy with or without it."""
        rec = self.arena.durable[job.msg.slot_in]
        seqs = np.where(rec[:, L.D_JOB] == job.msg.job_id, rec[:, L.D_SEQ], 0)
        if not seqs.any():  # none of its own yet (attaching publishes one; never lean on it)
            self._publish(np.array([job.row]))
            seqs = np.where(rec[:, L.D_JOB] == job.msg.job_id, rec[:, L.D_SEQ], 0)
        c = int(np.argmax(seqs))
        if seqs[c] > 0:
            keep = ~(L.D_END_MASK << L.D_END_SHIFT)
            rec[c, L.D_FLAGS] = int(rec[c, L.D_FLAGS]) & keep | cause_code(cause) << L.D_END_SHIFT

    def release_legs(self, msg: StartJob) -> None:
        """The arena side of a job's end: its legs are no longer recorded (producers stop
        waiting for ring space) and an envelope's body key lives no longer than its job."""
        a = self.arena
        if msg.cipher is not None and a.job[msg.slot_in] == msg.job_id:
            a.keys[msg.slot_in] = 0
        for s in (msg.slot_in, msg.slot_out):
            if a.job[s] == msg.job_id:
                a.job[s] = 0

    def _release(self, job: Job) -> None:
        row = job.row
        self.release_legs(job.msg)
        # The bank's rows are not flushed here: `attach` resets them for the next job, and
        # a job that ends normally was flushed by `_append_delayed`.
        del self.jobs[row]
        del self.by_id[job.msg.job_id]
        self._stopping.discard(row)
        # Not reusable before the tick ends: a start served mid-tick must not take a row
        # the tick still holds in its arrays.
        if self._in_tick:
            self._released.append(row)
            self.freed[row] = True
        else:
            self._free_rows.append(row)
        self._rows_dirty = True

    def close(self) -> None:
        """Drop the view of the arena so it can be unmapped."""
        self._ring = None

    def fail_all(self, error: str) -> None:
        """The worker is going down hard: end every job with ERROR, files finalised if possible."""
        for job in list(self.jobs.values()):
            job.cause, job.error = Cause.ERROR, error
            self._flush(job)
            self._finish(job)


def _os_error_text(e: BaseException) -> str:
    """"ENOSPC (No space left on device)" for an OSError: the errno's name, which an
    operator can search for, and its text; other exceptions as they print."""
    if isinstance(e, OSError) and e.errno is not None:
        return f"{errno.errorcode.get(e.errno, e.errno)} ({e.strerror})"
    return str(e)


def close_kept(sink) -> None:
    """Let go of a resumed file without finishing or removing it (it stays as it is)."""
    if isinstance(sink, FileSink):
        sink.close_kept()  # gives its descriptor back to the budget (`worker.descriptors`)
        return
    fd = getattr(sink, "_fd", None)
    if fd is not None:
        sink._fd = None
        try:
            os.close(fd)
        except OSError:
            pass


def default_open_sink():
    """The sink factory: encrypted when a cipher is given (worker/crypto.py), plain otherwise."""
    return open_sink


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
