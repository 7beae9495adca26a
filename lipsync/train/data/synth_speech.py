"""Speech for the synthetic corpus: eSpeak NG sentences, or the user's own audio files cut into pieces.

eSpeak NG comes from the PyPI package `espeakng-loader`, which ships libespeak-ng and its voice data;
its C API is called through ctypes, in a worker process (`python -m lipsync.train.data.synth_speech`);
no espeak-ng program is needed.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipsync.config import AUDIO_SAMPLE_RATE, PCM16_FULL_SCALE
from lipsync.errors import InputError
from lipsync.io.audio import load_audio

# fmt: off
SENTENCES: tuple[str, ...] = (
    "The morning train was late again, so we walked along the river.",
    "Please put the blue cup back on the top shelf.",
    "My brother likes to cook soup when it rains.",
    "We found an old map hidden inside the piano.",
    "The garden needs water before the sun goes down.",
    "She opened the window and listened to the birds.",
    "Could you tell me the way to the nearest library?",
    "A small boat drifted slowly across the quiet lake.",
    "He forgot his keys and had to wait by the door.",
    "The children painted a large yellow moon on the wall.",
    "Our meeting moved from Monday to Thursday afternoon.",
    "I would like two apples, a loaf of bread and some cheese.",
    "The wind blew the papers off the table and onto the floor.",
    "They built a wooden bridge over the narrow stream.",
    "Every evening the old dog waits at the garden gate.",
    "Bring a warm coat, because the mountain air is cold.",
    "The museum opens at nine and closes at five.",
    "We watched the storm roll in over the hills.",
    "Her grandmother still writes letters by hand.",
    "The baker sold out of bread before noon.",
    "Turn left at the church, then follow the road to the sea.",
    "Nobody knew who had left the lights on all night.",
    "The cat jumped onto the roof and refused to come down.",
    "We need more chairs for the party on Saturday.",
    "The teacher read a story about a brave little fox.",
    "A cup of hot tea is the best way to start the day.",
    "The bus stops right outside the post office.",
    "He plays the violin every morning before work.",
    "Fresh snow covered the fields and the quiet village.",
    "Mind the gap between the train and the platform.",
    "The farmer counted his sheep twice, just to be sure.",
    "I think the red door looks better than the green one.",
    "Most of the shops in town close early on Sundays.",
    "The river is wide and deep near the old mill.",
    "Let us meet at the corner cafe at half past ten.",
    "The pilot announced that we would land in twenty minutes.",
    "Her new bicycle has a basket and a silver bell.",
    "We planted tomatoes, beans and potatoes this spring.",
    "The lamp in the hallway flickers when the heater is on.",
    "Thank you very much for your help with the boxes.",
)
# fmt: on

# eSpeak NG voice names ("en" is British English; "+f3", "+m3", ... are its voice variants).
VOICES: tuple[str, ...] = (
    "en-us",
    "en",
    "en+f3",
    "en+m3",
    "en-us+f2",
    "en+m1",
    "en-gb-x-rp",
    "en-us+m2",
    "en+f4",
)
RATE_WPM = (140, 190)  # eSpeak speaking rate (words per minute), drawn uniformly per sentence
SILENCE_SECONDS = (0.15, 0.5)  # silence before and after each sentence, drawn uniformly
USER_PIECE_SECONDS = 10.0  # the user's audio files are cut into clips at most this long
USER_MIN_PIECE_SECONDS = 1.0  # a shorter piece (a file's end, or what the budget leaves) is dropped
AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".mp4", ".mov", ".mkv"})

# eSpeak NG's C API (speak_lib.h).
AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: samples come through the callback, synchronously
ESPEAK_RATE = 1  # espeak_PARAMETER espeakRATE
POS_CHARACTER = 1  # espeak_POSITION_TYPE
ESPEAK_CHARS_UTF8 = 1  # espeak_Synth flag
EE_OK = 0
ESPEAK_RAND_SEED = 1  # set before each sentence: the breath noise of voices such as +f2 and +f3 is random
ESPEAK_BUFFER_MS = 500
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
ESPEAK_FIX = "Reinstall the package that ships eSpeak NG: pip install espeakng-loader"
# The worker's replies on its stdout: a little-endian int64 count, then that many int16 samples.
COUNT_BYTES = 8
UNKNOWN_VOICE = -1  # the count sent when the voice does not exist
WORKER_MODULE = "lipsync.train.data.synth_speech"  # this module, run as the worker


@dataclass(frozen=True)
class Utterance:
    """One clip's speech: 16 kHz mono samples and where they came from."""

    samples: np.ndarray  # float32 in [-1, 1]
    source: str  # the sentence (eSpeak) or the audio file and offset (the user's speech)
    voice: str | None = None
    rate_wpm: int | None = None


class _Library:
    """libespeak-ng, loaded in the worker process."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib: Any = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = int(
            self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ESPEAK_BUFFER_MS, data, 0)
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with the voice data in {data.decode()}")
        self._chunks: list[np.ndarray] = []
        self._callback = SYNTH_CALLBACK(self._collect)  # kept referenced: the library calls it
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0: go on synthesising

    def say(self, text: str, voice: str, rate_wpm: int) -> np.ndarray | None:
        """int16 samples at `sample_rate`; None when there is no such voice."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
            return None
        self._lib.espeak_SetParameter(ESPEAK_RATE, rate_wpm, 0)
        self._lib.espeak_ng_SetRandSeed(ESPEAK_RAND_SEED)
        self._chunks = []
        encoded = text.encode() + b"\0"
        self._lib.espeak_Synth(encoded, len(encoded), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _serve() -> None:
    """The worker: the sample rate, then for each JSON request line on stdin, one reply on stdout."""
    library = _Library()
    out = sys.stdout.buffer
    out.write(struct.pack("<q", library.sample_rate))
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pcm = library.say(request["text"], request["voice"], request["rate"])
        if pcm is None:
            out.write(struct.pack("<q", UNKNOWN_VOICE))
        else:
            out.write(struct.pack("<q", pcm.size) + pcm.astype("<i2").tobytes())
        out.flush()


class Espeak:
    """eSpeak NG in a worker process of its own.

    The library keeps state from one sentence to the next (its output for a sentence depends on what it
    said before in the same process), so each corpus gets a fresh worker: the same sentences, voices and
    rates in the same order give the same samples.
    """

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[3])  # the folder holding `lipsync`
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        # A file, not a pipe: the worker never blocks on it. Closed by close().
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self._worker = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            env={**os.environ, "PYTHONPATH": path},
        )
        try:
            self.sample_rate = self._read(COUNT_BYTES, "start")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Espeak:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pipe in (self._worker.stdin, self._worker.stdout):
            if pipe is not None:
                pipe.close()
        self._worker.wait()
        self._errors.close()

    def _read(self, size: int, doing: str) -> int:
        """A count from the worker (`size` == COUNT_BYTES), or InputError with its last words."""
        assert self._worker.stdout is not None
        header = self._worker.stdout.read(size)
        if len(header) < size:
            self._worker.wait()
            self._errors.seek(0)
            why = self._errors.read().decode(errors="replace").strip().splitlines()
            reason = why[-1] if why else f"exit code {self._worker.returncode}"
            raise InputError(f"eSpeak NG failed to {doing}: {reason}.", ESPEAK_FIX)
        return int(struct.unpack("<q", header)[0])

    def say(self, text: str, voice: str, rate_wpm: int) -> np.ndarray:
        """`text` spoken by `voice` at `rate_wpm`: 16 kHz float32 samples."""
        from scipy.signal import resample_poly  # here: the worker, which imports this module, needs no scipy

        assert self._worker.stdin is not None and self._worker.stdout is not None
        request = json.dumps({"text": text, "voice": voice, "rate": rate_wpm}) + "\n"
        self._worker.stdin.write(request.encode())
        self._worker.stdin.flush()
        count = self._read(COUNT_BYTES, f"say {text!r}")
        if count == UNKNOWN_VOICE:
            raise InputError(f"eSpeak NG has no voice {voice!r}.", ESPEAK_FIX)
        data = self._worker.stdout.read(2 * count)
        if count == 0 or len(data) < 2 * count:
            raise InputError(f"eSpeak NG gave no sound for {text!r} ({voice}).", ESPEAK_FIX)
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM16_FULL_SCALE
        return resample_poly(samples, AUDIO_SAMPLE_RATE, self.sample_rate).astype(np.float32)


def espeak_utterances(rng: np.random.Generator, seconds: float) -> Iterator[Utterance]:
    """Sentences (a random voice and rate each, silence around) while their total stays within `seconds`
    (the first one always)."""
    made = 0.0
    order = rng.permutation(len(SENTENCES))
    with Espeak() as espeak:
        for index in itertools.count():
            text = SENTENCES[order[index % len(order)]]
            voice = VOICES[int(rng.integers(len(VOICES)))]
            rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
            before, after = (int(rng.uniform(*SILENCE_SECONDS) * AUDIO_SAMPLE_RATE) for _ in range(2))
            speech = espeak.say(text, voice, rate)
            samples = np.concatenate([np.zeros(before, np.float32), speech, np.zeros(after, np.float32)])
            made += samples.size / AUDIO_SAMPLE_RATE
            if made > seconds and index > 0:
                return
            yield Utterance(samples, text, voice, rate)


def audio_files(folder: Path) -> list[Path]:
    """The audio (or video) files directly in `folder`, sorted; InputError when there are none."""
    fix = f"Put speech recordings ({', '.join(sorted(AUDIO_SUFFIXES))}) in it, or leave out --speech."
    if not folder.is_dir():
        raise InputError(f"Speech folder {folder} does not exist or is not a folder.", fix)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_SUFFIXES
    )
    if not files:
        raise InputError(f"Speech folder {folder} has no audio files.", fix)
    return files


def user_utterances(files: Sequence[Path], seconds: float) -> Iterator[Utterance]:
    """The files' audio at 16 kHz, cut into pieces of at most USER_PIECE_SECONDS, within `seconds` in all."""
    piece = int(USER_PIECE_SECONDS * AUDIO_SAMPLE_RATE)
    left = int(seconds * AUDIO_SAMPLE_RATE)
    for path in files:
        samples = load_audio(path, AUDIO_SAMPLE_RATE).samples
        for start in range(0, samples.size, piece):
            chunk = samples[start : start + min(piece, left)]
            if chunk.size < USER_MIN_PIECE_SECONDS * AUDIO_SAMPLE_RATE:
                break
            left -= chunk.size
            yield Utterance(np.clip(chunk, -1, 1), f"{path.name}@{start / AUDIO_SAMPLE_RATE:.1f}s")


if __name__ == "__main__":
    _serve()
