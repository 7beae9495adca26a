"""End-to-end dubbing on real media with tiny scaffolded weights."""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync.config import DubSettings, RuntimeSettings
from lipsync.errors import InputError, NoFaceError, OutputError
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.io.writer import VideoWriter
from lipsync.pipeline.dub import UNTRAINED_LABEL, DubPipeline

from conftest import media, write_clip

SETTINGS = DubSettings(runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=8))
GENERATE_ALWAYS = DubSettings(runtime=SETTINGS.runtime, silence="generate")
CODEC_TOLERANCE = 4.0  # mean absolute difference (0-255) between two H.264 encodes of the same pixels


@pytest.fixture(scope="module")
def pipeline(tiny_weights: Path) -> DubPipeline:
    return DubPipeline.from_pretrained(tiny_weights, settings=SETTINGS)


@pytest.fixture(scope="module")
def generating_pipeline(pipeline: DubPipeline) -> DubPipeline:
    return DubPipeline(pipeline.generator, GENERATE_ALWAYS)


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def stream_facts(path: Path) -> tuple[int, Fraction, float, float]:
    """(video frames, frame rate, video seconds, audio seconds) as a player sees them."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video=0))
        rate = Fraction(video.average_rate)
        audio_seconds = float(audio.duration * audio.time_base) if audio.duration else math.nan
    return frames, rate, frames / float(rate), audio_seconds


def audio_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        return samples / container.streams.audio[0].sample_rate


@pytest.mark.parametrize(
    ("clip", "speech"),
    [
        ("talk_c.mp4", "speech_44k_stereo.wav"),  # 25 fps, 44.1 kHz stereo
        ("talk_a_22fps.mp4", "speech_48k_s32.wav"),  # non-integer fps, 48 kHz 32-bit
        # MPEG-4 Part 2, 16 kHz; its decoding is tested in test_io_video, the whole 8 s dub with -m slow
        pytest.param("talk_d_mpeg4.mp4", "speech_16k_stereo.wav", marks=pytest.mark.slow),
        ("talk_b.mp4", "speech_16k_stereo.wav"),  # audio longer than video: frames cycle
    ],
)
def test_output_follows_the_audio(pipeline: DubPipeline, tmp_path: Path, clip: str, speech: str) -> None:
    out = tmp_path / "out.mp4"
    summary = pipeline(media(clip), media(speech), out, progress=False)

    frames, rate, video_seconds, muxed_audio_seconds = stream_facts(out)
    speech_seconds = audio_seconds(media(speech))
    with av.open(str(media(clip))) as source:
        source_rate = Fraction(source.streams.video[0].average_rate)
    assert rate == source_rate
    assert frames == summary.frames == math.floor(speech_seconds * source_rate)
    assert abs(video_seconds - speech_seconds) <= 1 / float(rate)
    assert abs(muxed_audio_seconds - speech_seconds) <= 1 / float(rate)
    assert summary.frames_with_face == frames


def test_only_the_lower_face_changes(generating_pipeline: DubPipeline, tmp_path: Path) -> None:
    clip, out = media("talk_c.mp4"), tmp_path / "out.mp4"
    generating_pipeline(clip, media("speech_44k_stereo.wav"), out, progress=False)
    assert list(tmp_path.iterdir()) == [out]  # no temporary files left beside the output

    source, result = decode_frames(clip), decode_frames(out)
    above, mouth = [], []
    with FaceMeshDetector(max_faces=1, video_mode=False) as detector:
        for index in range(0, len(result), 20):
            faces = detector.detect(source[index])
            points = faces[0].points
            centre_y = int(points[29, 1])  # the crop centre: nothing above it may change
            src, res = source[index].astype(np.float32), result[index].astype(np.float32)
            above.append(np.abs(src[: centre_y - 4] - res[: centre_y - 4]).mean())
            lips = points[48:60]
            x1, y1 = lips.min(axis=0).astype(int)
            x2, y2 = lips.max(axis=0).astype(int)
            mouth.append(np.abs(src[y1:y2, x1:x2] - res[y1:y2, x1:x2]).mean())
    assert max(above) < CODEC_TOLERANCE, above
    assert min(mouth) > 3 * CODEC_TOLERANCE, mouth


def test_frames_without_a_face_are_kept_in_place(generating_pipeline: DubPipeline, tmp_path: Path) -> None:
    clip = media("talk_c.mp4")
    source = decode_frames(clip)[:50]
    blank = set(range(10, 20)) | {35}
    with av.open(str(clip)) as container:
        rate = Fraction(container.streams.video[0].average_rate)
    height, width = source[0].shape[:2]
    gappy = tmp_path / "gappy.mp4"
    with VideoWriter(gappy, rate, width, height, audio_path=media("speech_44k_stereo.wav")) as writer:
        for index, frame in enumerate(source):
            writer.write(np.zeros_like(frame) if index in blank else frame)

    out = tmp_path / "out.mp4"
    summary = generating_pipeline(gappy, media("speech_44k_stereo.wav"), out, progress=False, max_frames=50)
    result, written = decode_frames(out), decode_frames(gappy)
    assert len(result) == 50
    assert summary.frames_with_face == 50 - len(blank)
    for index in range(50):
        difference = np.abs(result[index].astype(np.float32) - written[index].astype(np.float32)).mean()
        if index in blank:
            assert result[index].mean() < 2.0, f"blank frame {index} was changed"
        else:
            assert difference > 0.1, f"frame {index} was not dubbed: frames shifted?"


def test_a_photo_becomes_a_video(pipeline: DubPipeline, tmp_path: Path) -> None:
    photo = tmp_path / "face.png"
    with av.open(str(media("talk_c.mp4"))) as container:
        next(container.decode(video=0)).to_image().save(photo)
    out = tmp_path / "out.mp4"
    summary = pipeline(photo, media("speech_44k_stereo.wav"), out, progress=False)
    frames, rate, _, _ = stream_facts(out)
    assert rate == 25
    assert frames == summary.frames == math.floor(audio_seconds(media("speech_44k_stereo.wav")) * 25)


def test_untrained_output_says_so(pipeline: DubPipeline, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    summary = pipeline(media("talk_c.mp4"), media("speech_44k_stereo.wav"), out, progress=False, max_frames=8)
    assert summary.untrained
    assert "UNTRAINED" in summary.format()
    with av.open(str(out)) as container:
        assert container.metadata.get("comment") == UNTRAINED_LABEL


def test_silence_keeps_the_source_mouth(pipeline: DubPipeline, tmp_path: Path) -> None:
    speech = media("speech_44k_stereo.wav")
    with av.open(str(speech)) as container:
        rate = container.streams.audio[0].sample_rate
    quiet = tmp_path / "quiet.wav"
    _write_wav(quiet, np.zeros(rate * 2, dtype=np.int16), rate)
    out = tmp_path / "out.mp4"
    summary = pipeline(media("talk_c.mp4"), quiet, out, progress=False)
    assert summary.frames_generated == 0
    assert summary.frames_with_face == summary.frames == 50


MEMORY_GROWTH_LIMIT = 10_000_000  # bytes: well under the 48 MB that keeping each extra frame would add


def test_memory_does_not_grow_with_length(pipeline: DubPipeline, tmp_path: Path) -> None:
    """Peak Python/numpy memory is the same for 48 and 96 output frames of a 30-frame clip.

    Both runs read a whole chunk of the backwards pass (16 frames); the longer one cycles forwards,
    backwards and forwards again, so anything kept per frame would show: a 590 x 590 frame is 1 MB, so
    keeping each would add 48 MB. A short run first makes the one-time allocations (models of the
    face tracker, caches), which would otherwise hide such growth in the first measured run.
    """
    clip = write_clip(media("talk_c.mp4"), tmp_path / "clip.mp4", 30)
    speech = media("speech_16k_stereo.wav")
    pipeline(clip, speech, tmp_path / "warm-up.mp4", progress=False, max_frames=5)
    peaks = []
    for frames in (48, 96):
        tracemalloc.start()
        pipeline(clip, speech, tmp_path / f"{frames}.mp4", progress=False, max_frames=frames)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] - peaks[0] < MEMORY_GROWTH_LIMIT, peaks


def test_bad_inputs_fail_clearly(pipeline: DubPipeline, tmp_path: Path) -> None:
    clip, speech = media("talk_c.mp4"), media("speech_44k_stereo.wav")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(InputError, match=r"notes\.mp4"):
        pipeline(text, speech, tmp_path / "a.mp4", progress=False)
    with pytest.raises(InputError, match=r"missing\.wav"):
        pipeline(clip, tmp_path / "missing.wav", tmp_path / "b.mp4", progress=False)
    empty = tmp_path / "empty.wav"
    _write_wav(empty, np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(InputError):
        pipeline(clip, empty, tmp_path / "c.mp4", progress=False)
    noise = tmp_path / "noise.png"
    av.VideoFrame.from_ndarray(
        np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8), format="rgb24"
    ).to_image().save(noise)
    with pytest.raises(NoFaceError, match="no face"):
        pipeline(noise, speech, tmp_path / "d.mp4", progress=False)
    with pytest.raises(OutputError):
        pipeline(clip, speech, tmp_path / "no-such-folder" / "e.mp4", progress=False)
    with pytest.raises(OutputError, match="same file"):
        pipeline(clip, speech, clip, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav", "noise.png", "notes.mp4"]


def test_an_unusable_output_path_fails_before_any_work(
    pipeline: DubPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the face pass started before the output path was checked")

    monkeypatch.setattr("lipsync.pipeline.dub.track_face", no_work)
    clip, speech = media("talk_c.mp4"), media("speech_44k_stereo.wav")
    with pytest.raises(OutputError, match="does not exist"):
        pipeline(clip, speech, tmp_path / "no-such-folder" / "out.mp4", progress=False)
    with pytest.raises(OutputError, match="video input: the same file"):
        pipeline(clip, speech, clip, progress=False)


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    import wave

    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())


def test_more_output_frames_than_the_limit_are_refused_before_any_work(
    pipeline: DubPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipsync.pipeline import dub

    monkeypatch.setattr(dub, "MAX_VIDEO_FRAMES", 100)
    photo = tmp_path / "face.png"
    with av.open(str(media("talk_c.mp4"))) as container:
        next(container.decode(video=0)).to_image().save(photo)
    out = tmp_path / "out.mp4"
    fast = pipeline.settings.with_options(image_fps=Fraction(1000))  # 8 s of speech: 8,000 frames
    with pytest.raises(InputError, match="8,000 frames, over the limit of 100") as caught:
        DubPipeline(pipeline.generator, fast)(photo, media("speech_16k_stereo.wav"), out, progress=False)
    assert "lower frame rate" in caught.value.fix and not out.exists()
