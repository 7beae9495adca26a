"""Live sessions: audio arrives in chunks of any size, frames leave as soon as their audio window is complete.

A session speaks with a prepared avatar. Audio pushed while no speech turn is active starts one; its frames
are numbered on the session clock, continuing the avatar's forward-backward cycle from where it is, so idle
and speech frames join without a jump. `end_speech()` closes the turn: its remaining frames are produced with
the audio after the end treated as silence, exactly as an offline run over the same audio would.

Work runs in a three-stage pipeline, one thread per stage, joined by small bounded queues:
  features  audio → the generator's streaming conditioning (MuseTalk: sliding-window whisper features)
            → batches of frames whose audio is complete, with their conditioning;
  device    prepared arrays + conditioning → the generator (MuseTalk: UNet → VAE decode; the accelerator);
  compose   paste the faces back, encode (e.g. JPEG), hand the frames out in order.
While the device works on one batch, the features of the next and the compositing of the previous run on
the CPU, so the device does not wait for them.

Frame count follows the samples exactly: a turn of S samples gives floor(S * fps / 16000) frames, and the
frames of a fresh session (no idle frames before the turn) equal `SpeakPipeline` with sliding features and
`silence="generate"` on the same audio, frame for frame, whatever the chunk sizes.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch

from lipsync.config import AUDIO_SAMPLE_RATE, StreamSettings
from lipsync.io.audio import frame_start_sample, to_pcm16
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar_store import Avatar
from lipsync.pipeline.render import RenderBatch, compose, generate_mouths, generator_times, step_aligned
from lipsync.timing import Stage

QUEUE_POLL_SECONDS = 0.1  # how often a blocked stage checks whether the session was closed
JOIN_SECONDS = 5.0


@dataclass(frozen=True)
class StreamFrame:
    index: int  # frame number on the session clock: every frame, idle or speech, from 0
    time: float  # index / fps, in seconds
    image: np.ndarray  # (H, W, 3) RGB uint8
    audio: np.ndarray  # int16 samples at 16 kHz this frame shows; empty for idle frames
    speech: bool
    encoded: bytes | None = None  # encode_image(image), when the session was given an encoder


@dataclass(frozen=True)
class _Audio:
    samples: np.ndarray  # float32 in [-1, 1]


@dataclass(frozen=True)
class _Control:
    kind: Literal["end", "idle", "stop"]
    count: int = 0


@dataclass
class _Job:
    """A batch of consecutive session frames on its way through the stages."""

    batch: RenderBatch  # `first` is the frame number inside the turn (0 for idle jobs)
    indices: list[int]  # session frame numbers
    audio: list[np.ndarray]
    speech: bool
    conditioning: Any = None  # the generator's audio conditioning of the active rows (None: none active)
    faces: np.ndarray = field(default_factory=lambda: np.empty((0,), dtype=np.uint8))


class _Turn:
    """One speech turn: its audio conditioning (which also holds its recent audio) and how many frames
    went out."""

    def __init__(self, generator: Generator, fps: Fraction, settings: StreamSettings, start: int) -> None:
        self.features = generator.streaming_audio(fps, settings)
        self.start = start  # session frame number of the turn's first frame
        self.emitted = 0
        self.fps = fps

    def frame_audio(self, frame: int) -> np.ndarray:
        """The int16 samples frame `frame` of the turn shows (still held: it is not yet emitted)."""
        return to_pcm16(self.features.samples(self.sample_bounds(frame), self.sample_bounds(frame + 1)))

    def sample_bounds(self, frame: int) -> int:
        return frame_start_sample(frame, self.fps)


class StreamSession:
    """A live avatar session. Thread-safe for one producer (push/end/idle) and one consumer (get)."""

    def __init__(
        self,
        generator: Generator,
        avatar: Avatar,
        settings: StreamSettings | None = None,
        encode_image: Callable[[np.ndarray], bytes] | None = None,
    ) -> None:
        self.generator = generator
        self.avatar = avatar
        settings = settings or StreamSettings()
        self.settings = replace(settings, batch_size=step_aligned(settings.batch_size, generator.step_frames))
        self.fps = avatar.fps
        self.width, self.height = avatar.info.width, avatar.info.height
        self.times = generator_times(generator)
        sources = [s for s in range(avatar.frame_count) if avatar.has_face(s)]
        generator.prime(avatar.frame_arrays, sources, avatar.references)
        self._encode_image = encode_image
        self._commands: queue.Queue[_Audio | _Control] = queue.Queue()
        depth = self.settings.stage_queue_batches
        self._to_device: queue.Queue[_Job] = queue.Queue(maxsize=depth)
        self._to_compose: queue.Queue[_Job] = queue.Queue(maxsize=depth)
        self._out: deque[StreamFrame] = deque()
        self._out_changed = threading.Condition()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._next_index = 0  # session frame number of the next frame the features stage plans
        self._samples_pushed = 0
        self._samples_framed = 0  # samples of pushed audio that frames have taken (or were dropped at an end)
        self._turn_open = False
        self._speech_frames_in_flight = 0
        self.dropped = 0
        self._threads = [
            threading.Thread(target=self._guard(self._features_stage), name="lipsync-stream-features"),
            threading.Thread(target=self._guard(self._device_stage), name="lipsync-stream-device"),
            threading.Thread(target=self._guard(self._compose_stage), name="lipsync-stream-compose"),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    # --- producer side ----------------------------------------------------------------------------

    def push_audio(self, samples: np.ndarray) -> None:
        """Mono 16 kHz float samples in [-1, 1], any number. Starts a speech turn if none is open."""
        self._raise_if_failed()
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (N,), got shape {samples.shape}")
        samples = np.array(samples, dtype=np.float32)  # a copy: the caller may reuse its buffer
        with self._lock:
            self._turn_open = True
            self._samples_pushed += len(samples)
        self._commands.put(_Audio(samples))

    def end_speech(self) -> None:
        """The open turn's audio is complete: its last frames follow. Does nothing without an open turn."""
        with self._lock:
            if not self._turn_open:
                return
            self._turn_open = False
        self._commands.put(_Control("end"))

    def add_idle(self, count: int = 1) -> None:
        """Queue `count` idle frames (the avatar's own video, no audio); ignored while speaking."""
        if count > 0 and not self.speaking:
            self._commands.put(_Control("idle", count))

    @property
    def speaking(self) -> bool:
        """A turn is open, or frames of a turn are still on their way."""
        with self._lock:
            unframed = self._samples_framed < self._samples_pushed
            return self._turn_open or self._speech_frames_in_flight > 0 or unframed

    @property
    def pending_audio_seconds(self) -> float:
        """Audio pushed but not yet turned into frames."""
        with self._lock:
            return (self._samples_pushed - self._samples_framed) / AUDIO_SAMPLE_RATE

    # --- consumer side ----------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> StreamFrame | None:
        """The next frame in order, or None if none arrived within `timeout` seconds."""
        with self._out_changed:
            if not self._out_changed.wait_for(self._can_get, timeout):
                return None
            self._raise_if_failed()
            if not self._out:
                return None
            frame = self._out.popleft()
            self._out_changed.notify_all()
            return frame

    def _can_get(self) -> bool:
        return bool(self._out) or self._error is not None or self._closed.is_set()

    def frames_until_quiet(self, timeout: float = 30.0) -> Iterator[StreamFrame]:
        """Frames until the session is not speaking and nothing is left (for offline-style use and tests)."""
        while True:
            frame = self.get(timeout=QUEUE_POLL_SECONDS)
            if frame is not None:
                yield frame
                continue
            if not self.speaking and self._commands.empty() and not self._out:
                return
            timeout -= QUEUE_POLL_SECONDS
            if timeout <= 0:
                raise TimeoutError("the stream produced no frame in time")

    @property
    def buffered_frames(self) -> int:
        with self._out_changed:
            return len(self._out)

    def close(self) -> None:
        """Stop the stage threads and free buffers. Safe to call more than once."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._commands.put(_Control("stop"))
        with self._out_changed:
            self._out.clear()
            self._out_changed.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(JOIN_SECONDS)

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- stages -----------------------------------------------------------------------------------

    def _features_stage(self) -> None:
        turn: _Turn | None = None
        while not self._closed.is_set():
            command = self._commands.get()
            if isinstance(command, _Audio):
                if turn is None:
                    turn = _Turn(self.generator, self.fps, self.settings, self._next_index)
                turn.features.append(command.samples)
                self._plan_speech(turn)
            elif command.kind == "end":
                if turn is not None:
                    turn.features.finish()
                    self._plan_speech(turn)
                    leftover = turn.features.samples_received - turn.sample_bounds(turn.emitted)
                    with self._lock:  # samples after the last whole frame are dropped, as offline
                        self._samples_framed += leftover
                    turn = None
            elif command.kind == "idle":
                if turn is None:
                    self._plan_idle(command.count)
            else:
                return

    def _plan_speech(self, turn: _Turn) -> None:
        """Send every batch of the turn whose audio is complete (the last one may be short at an end)."""
        size = self.settings.batch_size
        while not self._closed.is_set():
            ready = turn.features.ready_frames(turn.emitted)
            count = min(size, ready - turn.emitted)
            if count == 0 or (count < size and not turn.features.finished):
                return
            local = list(range(turn.emitted, turn.emitted + count))
            indices = [turn.start + j for j in local]
            sources = [self.avatar.source_index(i) for i in indices]
            batch = RenderBatch(
                first=turn.emitted,
                sources=sources,
                frames=[self.avatar.frame(s) for s in sources],
                strengths=np.array([1.0 if self.avatar.has_face(s) else 0.0 for s in sources], np.float32),
            )
            conditioning = None
            if batch.active:
                with self.times.measure(Stage.AUDIO_FEATURES):
                    conditioning = turn.features.windows(batch.active_indices)
            audio = [turn.frame_audio(j) for j in local]
            turn.emitted += count
            turn.features.forget_before(turn.emitted)
            with self._lock:
                self._samples_framed += sum(len(a) for a in audio)
                self._speech_frames_in_flight += count
            self._next_index = turn.start + turn.emitted
            self._put(self._to_device, _Job(batch, indices, audio, True, conditioning))

    def _plan_idle(self, count: int) -> None:
        for start in range(0, count, self.settings.batch_size):
            if self._closed.is_set():
                return
            n = min(self.settings.batch_size, count - start)
            indices = list(range(self._next_index, self._next_index + n))
            self._next_index += n
            sources = [self.avatar.source_index(i) for i in indices]
            batch = RenderBatch(0, sources, [self.avatar.frame(s) for s in sources], np.zeros(n, np.float32))
            silent = [np.empty(0, dtype=np.int16)] * n
            self._put(self._to_device, _Job(batch, indices, silent, False))

    def _device_stage(self) -> None:
        while (job := self._take(self._to_device)) is not None:
            if job.conditioning is not None:
                job.faces = generate_mouths(
                    self.generator, self.avatar, job.batch, job.conditioning, self.times
                )
                job.conditioning = None
            self._put(self._to_compose, job)

    def _compose_stage(self) -> None:
        while (job := self._take(self._to_compose)) is not None:
            images = compose(self.avatar, job.batch, job.faces, self.times)
            for index, image, audio in zip(job.indices, images, job.audio, strict=True):
                encoded = None
                if self._encode_image is not None:
                    with self.times.measure(Stage.ENCODE):
                        encoded = self._encode_image(image)
                frame = StreamFrame(index, float(index / self.fps), image, audio, job.speech, encoded)
                self._deliver(frame)
            if job.speech:
                with self._lock:
                    self._speech_frames_in_flight -= len(job.indices)

    # --- plumbing ---------------------------------------------------------------------------------

    def _deliver(self, frame: StreamFrame) -> None:
        limit = self.settings.max_buffered_frames
        with self._out_changed:
            if self.settings.drop_when_full:
                while len(self._out) >= limit:
                    self._out.popleft()
                    self.dropped += 1
            else:
                self._out_changed.wait_for(lambda: len(self._out) < limit or self._closed.is_set())
            if not self._closed.is_set():
                self._out.append(frame)
            self._out_changed.notify_all()

    def _put(self, target: queue.Queue[_Job], job: _Job) -> None:
        while not self._closed.is_set():
            try:
                target.put(job, timeout=QUEUE_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _take(self, source: queue.Queue[_Job]) -> _Job | None:
        while not self._closed.is_set():
            try:
                return source.get(timeout=QUEUE_POLL_SECONDS)
            except queue.Empty:
                continue
        return None

    def _guard(self, stage: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                with torch.inference_mode():
                    stage()
            except BaseException as error:  # surfaced to the consumer by get()
                self._error = error
                with self._out_changed:
                    self._out_changed.notify_all()

        return run

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the stream stopped: {self._error}") from self._error
