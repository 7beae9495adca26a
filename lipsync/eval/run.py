"""`lipsync eval`: the field's metrics for one generated video, top to bottom.

1. Face pass over the generated video (and the reference): landmarks and crop boxes at 25 fps.
2. The speech: --audio, or the generated video's own track.
3. The metric networks whose weights are present (the others become skipped entries).
4. One streaming pass over the frames feeding every metric.
5. Figures, per-frame curves and thumbnails -> report.json and report.html.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from lipsync import __version__
from lipsync.config import AUDIO_SAMPLE_RATE, FACE_SIZE, DeviceChoice
from lipsync.errors import OutputError
from lipsync.eval import definitions as define
from lipsync.eval.fid import FeatureStats, fid_between, inception_features
from lipsync.eval.html import Thumbnail, write_html
from lipsync.eval.identity import arcface_embeddings, matched_cosine
from lipsync.eval.image_metrics import ConsistencyTracker, psnr, ssim
from lipsync.eval.inputs import EVAL_FPS, TrackedVideo, audio_envelope, speech_for, track_video
from lipsync.eval.landmark_metrics import landmark_distance, lip_lmd, mean_over_faces, mouth_opening
from lipsync.eval.lip_sync_meter import lip_gap, load_opening, read_lip_sync
from lipsync.eval.lpips import lpips_distances
from lipsync.eval.lse import (
    LseResult,
    VideoWindowEmbedder,
    audio_embeddings,
    audio_windows,
    lse_from_embeddings,
    syncnet_mfcc,
    window_count,
)
from lipsync.eval.networks.arcface import IResNet, load_arcface
from lipsync.eval.networks.inception import FidInceptionV3, load_fid_inception
from lipsync.eval.networks.lpips_net import Lpips, load_lpips
from lipsync.eval.networks.syncnet_v2 import SyncNetV2, load_syncnet_v2
from lipsync.eval.networks.weights import SOURCES, EvalWeightFiles, is_untrained_file
from lipsync.eval.own_sync import OwnSyncResult, OwnSyncScorer
from lipsync.eval.report import (
    HTML_FILE,
    REPORT_FILE,
    EvalReport,
    InputSummary,
    Metric,
    PerFrame,
    computed,
    skipped,
)
from lipsync.eval.sync_crop import sync_boxes, sync_crop
from lipsync.face.crop import crop_face
from lipsync.face.track import NO_BOX
from lipsync.io.files import atomic_path
from lipsync.models.device import resolve_device
from lipsync.models.syncnet import load_syncnet
from lipsync.timing import StageTimes


class EvalStage(str, Enum):
    FACES = "face pass"
    LOAD = "load networks"
    DECODE = "decode"
    CROPS = "crops"
    SYNCNET_V2 = "syncnet_v2"
    INCEPTION = "inception"
    ARCFACE = "arcface"
    LPIPS = "lpips"
    OWN_SYNCNET = "our syncnet"
    PIXELS = "psnr/ssim/ifc"
    FIGURES = "fid/lmd"


NO_REFERENCE = "needs --reference (the source video) to compare with"
THUMBNAILS = 8
THUMBNAIL_HEIGHT = 180  # px
THUMBNAIL_JPEG_QUALITY = 85


@dataclass(frozen=True)
class EvalOptions:
    device: DeviceChoice = "auto"
    batch_size: int = 16  # frames per network pass
    max_frames: int | None = None  # evaluate only the first frames (quick looks)
    thumbnails: int = THUMBNAILS
    progress: bool = True


@dataclass
class _Networks:
    syncnet_v2: SyncNetV2 | None = None
    inception: FidInceptionV3 | None = None
    arcface: IResNet | None = None
    lpips: Lpips | None = None
    own: OwnSyncScorer | None = None
    missing: dict[str, str] = field(default_factory=dict)  # metric group -> why it is skipped


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file", "give a folder for the report")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputError(
            f"{out_dir} is not empty: the report would mix with what is there",
            "give a new folder, or --force to replace report.json and report.html in it",
        )


def _load_networks(
    weights: EvalWeightFiles, device: torch.device, batch: int, speech: bool, reference: bool
) -> _Networks:
    nets = _Networks()
    if not speech:
        nets.missing["lse"] = "no speech: the generated video has no audio track and no --audio was given"
    elif weights.syncnet_v2.is_file():
        nets.syncnet_v2 = load_syncnet_v2(weights.syncnet_v2, device)
    else:
        nets.missing["lse"] = f"needs {weights.syncnet_v2} ({SOURCES['syncnet_v2']})"
    if not reference:
        nets.missing["fid"] = nets.missing["csim"] = nets.missing["lpips"] = NO_REFERENCE
    else:
        if weights.inception.is_file():
            nets.inception = load_fid_inception(weights.inception, device)
        else:
            nets.missing["fid"] = f"needs {weights.inception} ({SOURCES['inception']})"
        if weights.arcface.is_file():
            nets.arcface, _ = load_arcface(weights.arcface, device)
        else:
            nets.missing["csim"] = f"needs {weights.arcface} ({SOURCES['arcface']})"
        lacking = _lpips_lacking(weights)
        if lacking:
            nets.missing["lpips"] = "needs " + " and ".join(
                f"{path} ({SOURCES[key]})" for key, path in lacking
            )
        else:
            nets.lpips = load_lpips(weights.alexnet, weights.lpips_linear, device)
    if weights.syncnet is None:
        nets.missing["own"] = "needs --syncnet CHECKPOINT (from `lipsync train syncnet`)"
    elif not speech:
        nets.missing["own"] = nets.missing["lse"]
    else:
        model, spec = load_syncnet(weights.syncnet, device=device)
        nets.own = OwnSyncScorer(model, spec, device, batch)
    return nets


def _lpips_lacking(weights: EvalWeightFiles) -> list[tuple[str, Path]]:
    """The LPIPS files that are absent, as (SOURCES key, path)."""
    files = (("alexnet", weights.alexnet), ("lpips_linear", weights.lpips_linear))
    return [(key, path) for key, path in files if not path.is_file()]


class _Batches:
    """Crops waiting for a network pass, flushed every `size` frames."""

    def __init__(self, nets: _Networks, size: int, times: StageTimes) -> None:
        self.nets, self.size, self.times = nets, size, times
        self.face_gen: list[np.ndarray] = []
        self.face_ref: list[np.ndarray] = []
        self.full_gen: list[np.ndarray] = []
        self.full_ref: list[np.ndarray] = []
        self.fid_face = (FeatureStats(), FeatureStats())
        self.fid_full = (FeatureStats(), FeatureStats())
        self.csim: list[float] = []
        self.lpips: list[float] = []

    def add(self, gen: np.ndarray, ref: np.ndarray, face_gen: np.ndarray, face_ref: np.ndarray) -> None:
        self.face_gen.append(face_gen)
        self.face_ref.append(face_ref)
        self.full_gen.append(gen)
        self.full_ref.append(ref)
        if len(self.face_gen) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.face_gen:
            return
        faces_gen, faces_ref = np.stack(self.face_gen), np.stack(self.face_ref)
        if self.nets.inception is not None:
            model = self.nets.inception
            with self.times.measure(EvalStage.INCEPTION):
                self.fid_face[0].add(inception_features(model, faces_gen))
                self.fid_face[1].add(inception_features(model, faces_ref))
                self.fid_full[0].add(inception_features(model, np.stack(self.full_gen)))
                self.fid_full[1].add(inception_features(model, np.stack(self.full_ref)))
        if self.nets.arcface is not None:
            with self.times.measure(EvalStage.ARCFACE):
                a = arcface_embeddings(self.nets.arcface, faces_gen)
                b = arcface_embeddings(self.nets.arcface, faces_ref)
            self.csim.extend(float(c) for c in matched_cosine(a, b))
        if self.nets.lpips is not None:
            with self.times.measure(EvalStage.LPIPS):
                self.lpips.extend(float(d) for d in lpips_distances(self.nets.lpips, faces_gen, faces_ref))
        for pending in (self.face_gen, self.face_ref, self.full_gen, self.full_ref):
            pending.clear()


def _thumbnail(images: list[np.ndarray]) -> bytes:
    """The images side by side, each scaled to THUMBNAIL_HEIGHT, as JPEG."""
    row = []
    for image in images:
        width = round(image.shape[1] * THUMBNAIL_HEIGHT / image.shape[0])
        row.append(cv2.resize(image, (width, THUMBNAIL_HEIGHT), interpolation=cv2.INTER_AREA))
    bgr = cv2.cvtColor(np.hstack(row), cv2.COLOR_RGB2BGR)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_JPEG_QUALITY])
    return jpeg.tobytes() if ok else b""


def evaluate(
    generated: Path,
    out_dir: Path,
    reference: Path | None = None,
    audio: Path | None = None,
    weights: EvalWeightFiles | None = None,
    options: EvalOptions | None = None,
    force: bool = False,
    opening: Path | None = None,
) -> EvalReport:
    """Compute every metric that the inputs and weights allow; write report.json and report.html.
    `opening`: a ground-truth mouth opening per frame (.npy) for the lip-sync meter."""
    started = time.monotonic()
    weights = weights or EvalWeightFiles.in_folder()
    options = options or EvalOptions()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    target_opening = load_opening(Path(opening)) if opening is not None else None
    device = resolve_device(options.device)
    times = StageTimes(device, dict.fromkeys(EvalStage, 0.0))

    # 1. faces
    with times.measure(EvalStage.FACES):
        gen = _tracked(Path(generated), "generated", options)
        ref = _tracked(Path(reference), "reference", options) if reference is not None else None

    # 2. speech
    found = speech_for(gen, audio)
    samples, speech_source = found if found is not None else (None, "")

    # 3. networks
    with times.measure(EvalStage.LOAD):
        nets = _load_networks(weights, device, options.batch_size, samples is not None, ref is not None)

    # 4. frames
    pairs = min(gen.frame_count, ref.frame_count) if ref is not None else 0
    state = _FramePass(gen, ref, nets, options, pairs, samples, times)
    state.run()

    # 5. figures and the report
    with times.measure(EvalStage.FIGURES):
        metrics = [
            *_lse_metrics(state, weights),
            *_own_sync_metrics(state, weights),
            *_fid_metrics(state, weights),
            _csim_metric(state, weights),
            _lpips_metric(state, weights),
            *_pixel_metrics(state),
            _lip_sync_metric(gen, ref, target_opening),
        ]
    inputs = [_summary("generated", gen)]
    if ref is not None:
        inputs.append(_summary("reference", ref))
    if samples is not None:
        inputs.append(InputSummary("audio", speech_source, seconds=len(samples) / AUDIO_SAMPLE_RATE))
    report = EvalReport(
        inputs=inputs,
        metrics=metrics,
        per_frame=_per_frame(state),
        notes=_notes(gen, ref, pairs),
        lipsync_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    report.stage_seconds = {stage.value: round(secs, 3) for stage, secs in times.seconds.items()}
    report.seconds = round(time.monotonic() - started, 2)
    _write_outputs(report, state.thumbnails, out_dir)
    return report


def _per_frame(state: _FramePass) -> PerFrame:
    gen, ref = state.gen, state.ref
    envelope = audio_envelope(state.samples, gen.frame_count) if state.samples is not None else np.zeros(0)
    return PerFrame(
        fps=EVAL_FPS,
        audio_envelope=_listed(envelope),
        mouth_opening_generated=_listed(mouth_opening(gen.track.points)),
        mouth_opening_reference=_listed(mouth_opening(ref.track.points)) if ref is not None else [],
        sync_confidence_v2=state.framewise_v2,
        sync_confidence_own=state.framewise_own,
        psnr=state.psnr,
        ssim=state.ssim,
        csim=_listed(np.array(state.batches.csim)),
        lpips=_listed(np.array(state.batches.lpips)),
    )


def _tracked(path: Path, role: str, options: EvalOptions) -> TrackedVideo:
    with tqdm(desc=f"faces ({role})", unit="frame", disable=not options.progress, leave=False) as bar:
        return track_video(path, options.max_frames, on_frame=lambda _: bar.update())


def _listed(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def _summary(role: str, video: TrackedVideo) -> InputSummary:
    return InputSummary(
        role,
        str(video.path),
        frames=video.frame_count,
        seconds=video.frame_count / EVAL_FPS,
        faces_found=video.track.faces_found,
        width=video.times.width,
        height=video.times.height,
    )


def _notes(gen: TrackedVideo, ref: TrackedVideo | None, pairs: int) -> list[str]:
    notes = [f"all videos read at {EVAL_FPS} fps by presentation time"]
    if gen.max_frames is not None:
        notes.append(f"only the first {gen.max_frames} frames were evaluated (--max-frames)")
    if ref is not None and gen.frame_count != ref.frame_count:
        notes.append(
            f"the generated video has {gen.frame_count} frames and the reference {ref.frame_count}: "
            f"frame-matched metrics use the first {pairs}"
        )
    missing = gen.frame_count - gen.track.faces_found
    if missing:
        notes.append(f"{missing} generated frames have no face; they are left out of face metrics")
    return notes


class _FramePass:
    """Step 4: one pass over the frames of both videos feeding every metric."""

    def __init__(
        self,
        gen: TrackedVideo,
        ref: TrackedVideo | None,
        nets: _Networks,
        options: EvalOptions,
        pairs: int,
        samples: np.ndarray | None,
        times: StageTimes,
    ) -> None:
        self.gen, self.ref, self.nets, self.options, self.pairs = gen, ref, nets, options, pairs
        self.samples, self.times = samples, times
        self.batches = _Batches(nets, options.batch_size, times)
        self.consistency = ConsistencyTracker()
        self.psnr: list[float | None] = []
        self.ssim: list[float | None] = []
        self.thumbnails: list[Thumbnail] = []
        self.framewise_v2: list[float | None] = []
        self.framewise_own: list[float | None] = []
        self.lse: LseResult | None = None
        self.own: OwnSyncResult | None = None
        count = gen.frame_count
        shown = np.linspace(0, count - 1, min(options.thumbnails, count)).round().astype(int)
        self.thumbnail_frames = set(shown.tolist())
        self.sync_boxes = sync_boxes(gen.track.points)
        self.lse_windows = window_count(count, len(samples)) if samples is not None else 0
        self.embedder: VideoWindowEmbedder | None = None
        if nets.syncnet_v2 is not None and self.sync_boxes is not None and self.lse_windows >= 1:
            self.embedder = VideoWindowEmbedder(nets.syncnet_v2, _device(nets.syncnet_v2), options.batch_size)
        self.own_crop = np.zeros((FACE_SIZE, FACE_SIZE, 3), np.uint8)  # until the first face

    def run(self) -> None:
        ref_frames = self.ref.frames() if self.ref is not None else iter(())
        with tqdm(
            total=self.gen.frame_count,
            desc="metrics",
            unit="frame",
            disable=not self.options.progress,
            leave=False,
        ) as bar:
            frames = self.gen.frames()
            for t in range(self.gen.frame_count):
                with self.times.measure(EvalStage.DECODE):
                    frame = next(frames)
                    ref_frame = next(ref_frames, None) if t < self.pairs else None
                self._frame(t, frame, ref_frame)
                bar.update()
        self.batches.flush()
        self._finish_sync()

    def _frame(self, t: int, frame: np.ndarray, ref_frame: np.ndarray | None) -> None:
        gen_box = self.gen.track.box(t)
        ref_box = self.ref.track.box(t) if self.ref is not None and ref_frame is not None else None
        box = ref_box or gen_box  # the same box on both frames: detection noise is not a difference
        with self.times.measure(EvalStage.CROPS):
            gen_crop = crop_face(frame, box) if box is not None else None
            ref_crop = crop_face(ref_frame, box) if box is not None and ref_frame is not None else None
            sync_face = None
            if self.embedder is not None and self.sync_boxes is not None:
                sync_face = sync_crop(frame, self.sync_boxes[t])
            if self.nets.own is not None and gen_box is not None:
                self.own_crop = crop_face(frame, gen_box)  # a frame without a face repeats the last face

        if self.embedder is not None and sync_face is not None:
            with self.times.measure(EvalStage.SYNCNET_V2):
                self.embedder.add(sync_face)
        if self.nets.own is not None:
            with self.times.measure(EvalStage.OWN_SYNCNET):
                self.nets.own.add(self.own_crop)
        with self.times.measure(EvalStage.PIXELS):
            paired = self._pixel_metrics(ref_frame, gen_crop, ref_crop)
        if paired and ref_frame is not None and gen_crop is not None and ref_crop is not None:
            self.batches.add(frame, ref_frame, gen_crop, ref_crop)  # network passes: timed inside
        if t in self.thumbnail_frames:
            images = [im for im in (ref_frame, frame, ref_crop, gen_crop) if im is not None]
            self.thumbnails.append(Thumbnail(t, t / EVAL_FPS, _thumbnail(images), ref_frame is not None))

    def _pixel_metrics(
        self, ref_frame: np.ndarray | None, gen_crop: np.ndarray | None, ref_crop: np.ndarray | None
    ) -> bool:
        """PSNR, SSIM and the consistency tracker for one frame; True if it made a face-crop pair."""
        if self.ref is None:  # reference-free: flicker only
            if gen_crop is not None:
                self.consistency.add(gen_crop)
            else:
                self.consistency.skip()
            return False
        if ref_frame is None:  # past the reference's end
            return False
        if gen_crop is None or ref_crop is None:
            self.psnr.append(None)
            self.ssim.append(None)
            self.consistency.skip()
            return False
        self.psnr.append(psnr(gen_crop, ref_crop))
        self.ssim.append(ssim(gen_crop, ref_crop))
        self.consistency.add(gen_crop, ref_crop)
        return True

    def _finish_sync(self) -> None:
        if self.embedder is not None and self.samples is not None and self.nets.syncnet_v2 is not None:
            with self.times.measure(EvalStage.SYNCNET_V2):
                self._finish_lse(self.embedder, self.samples, self.nets.syncnet_v2)
        if self.nets.own is not None and self.samples is not None:
            with self.times.measure(EvalStage.OWN_SYNCNET):
                self.own = self.nets.own.finish(self.samples, self.gen.frame_count)
            if self.own is not None:
                self.framewise_own = list(self.own.per_window)

    def _finish_lse(self, embedder: VideoWindowEmbedder, samples: np.ndarray, model: SyncNetV2) -> None:
        video = embedder.finish(self.lse_windows)
        windows = audio_windows(syncnet_mfcc(samples), self.lse_windows)
        audio = audio_embeddings(model, windows, _device(model), self.options.batch_size)
        self.lse = lse_from_embeddings(video, audio)
        self.framewise_v2 = [float(v) for v in self.lse.framewise_confidence]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _lse_metrics(state: _FramePass, weights: EvalWeightFiles) -> list[Metric]:
    specs = (define.LSE_D_SPEC, define.LSE_C_SPEC, define.AV_OFFSET_SPEC)
    result = state.lse
    if result is None:
        if "lse" in state.nets.missing:
            reason = state.nets.missing["lse"]
        elif state.sync_boxes is None:
            reason = "no face in any generated frame"
        else:
            reason = "fewer than 6 frames of video and audio: no 5-frame window"
        needs = str(weights.syncnet_v2) if not weights.syncnet_v2.is_file() else ""
        return [skipped(spec, reason, needs) for spec in specs]
    untrained = is_untrained_file(weights.syncnet_v2)
    values = (result.lse_d, result.lse_c, result.av_offset)
    return [
        computed(spec, value, result.windows, untrained) for spec, value in zip(specs, values, strict=True)
    ]


def _own_sync_metrics(state: _FramePass, weights: EvalWeightFiles) -> list[Metric]:
    specs = (define.OWN_SYNC_SPEC, define.OWN_SYNC_OFFSET_SPEC)
    result = state.own
    if result is None:
        reason = state.nets.missing.get("own", "the video is shorter than one SyncNet window")
        return [skipped(spec, reason) for spec in specs]
    checkpoint = str(weights.syncnet)
    return [
        computed(define.OWN_SYNC_SPEC, result.confidence, result.windows, checkpoint=checkpoint),
        computed(define.OWN_SYNC_OFFSET_SPEC, result.offset, result.windows, checkpoint=checkpoint),
    ]


def _fid_metrics(state: _FramePass, weights: EvalWeightFiles) -> list[Metric]:
    face, full = state.batches.fid_face, state.batches.fid_full
    metrics = []
    for spec, (generated, reference) in ((define.FID_FACE_SPEC, face), (define.FID_FRAME_SPEC, full)):
        if "fid" in state.nets.missing:
            needs = str(weights.inception) if state.ref is not None else "--reference"
            metrics.append(skipped(spec, state.nets.missing["fid"], needs))
        elif generated.count < 2:
            metrics.append(skipped(spec, "fewer than 2 frame pairs with a face"))
        else:
            value = fid_between(generated, reference)
            metrics.append(computed(spec, value, generated.count, is_untrained_file(weights.inception)))
    return metrics


def _csim_metric(state: _FramePass, weights: EvalWeightFiles) -> Metric:
    spec = define.CSIM_SPEC
    if "csim" in state.nets.missing:
        needs = str(weights.arcface) if state.ref is not None else "--reference"
        return skipped(spec, state.nets.missing["csim"], needs)
    if not state.batches.csim:
        return skipped(spec, "no frame pair with a face")
    value = float(np.mean(state.batches.csim))
    return computed(spec, value, len(state.batches.csim), is_untrained_file(weights.arcface))


def _lpips_metric(state: _FramePass, weights: EvalWeightFiles) -> Metric:
    spec = define.LPIPS_SPEC
    if "lpips" in state.nets.missing:
        needs = " and ".join(str(path) for _, path in _lpips_lacking(weights))
        return skipped(spec, state.nets.missing["lpips"], needs if state.ref is not None else "--reference")
    if not state.batches.lpips:
        return skipped(spec, "no frame pair with a face")
    untrained = is_untrained_file(weights.alexnet) or is_untrained_file(weights.lpips_linear)
    return computed(spec, float(np.mean(state.batches.lpips)), len(state.batches.lpips), untrained)


def _lip_lmd_metric(gen: TrackedVideo, ref: TrackedVideo, pairs: int) -> Metric:
    """LipLMD in the reference's crop box (the box of the face-crop metrics) rescaled to 128 px."""
    boxes = ref.track.boxes[:pairs].astype(np.float64)
    boxes[ref.track.boxes[:pairs, 0] == NO_BOX] = np.nan
    per_frame = lip_lmd(gen.track.points[:pairs], ref.track.points[:pairs], boxes)
    try:
        value, frames = mean_over_faces(per_frame, "lip landmark distance")
    except ValueError as exc:
        return skipped(define.LIP_LMD_SPEC, str(exc))
    return computed(define.LIP_LMD_SPEC, value, frames)


def _lip_sync_metric(gen: TrackedVideo, ref: TrackedVideo | None, opening: np.ndarray | None) -> Metric:
    """The lip-sync meter against the ground-truth opening if given, else against the reference's lip gap."""
    spec = define.LIP_SYNC_R_SPEC
    if opening is not None:
        target, against = opening, "opening file"
    elif ref is not None:
        target, against = lip_gap(ref.track.points), "reference lip gap"
    else:
        return skipped(spec, "needs a target: --opening (ground truth per frame) or --reference", "--opening")
    try:
        reading = read_lip_sync(lip_gap(gen.track.points), target)
    except ValueError as exc:
        return skipped(spec, str(exc))
    return computed(
        spec, reading.r, reading.frames, best_lag=reading.best_lag, best_r=reading.best_r, target=against
    )


def _pixel_metrics(state: _FramePass) -> list[Metric]:
    """The weight-free metrics against the reference (LMD, LipLMD, PSNR, SSIM, IFC), and flicker."""
    specs = (
        define.LMD_SPEC,
        define.LMD_PIXELS_SPEC,
        define.LIP_LMD_SPEC,
        define.PSNR_SPEC,
        define.SSIM_SPEC,
        define.IFC_SPEC,
    )
    metrics: list[Metric] = []
    if state.ref is None:
        metrics += [skipped(spec, NO_REFERENCE, "--reference") for spec in specs]
    else:
        try:
            lmd = landmark_distance(
                state.gen.track.points[: state.pairs], state.ref.track.points[: state.pairs]
            )
            metrics.append(computed(define.LMD_SPEC, lmd.normalised, lmd.frames))
            metrics.append(computed(define.LMD_PIXELS_SPEC, lmd.pixels, lmd.frames))
        except ValueError as exc:
            metrics += [skipped(define.LMD_SPEC, str(exc)), skipped(define.LMD_PIXELS_SPEC, str(exc))]
        metrics.append(_lip_lmd_metric(state.gen, state.ref, state.pairs))
        psnrs = [v for v in state.psnr if v is not None]
        ssims = [v for v in state.ssim if v is not None]
        if psnrs:
            metrics.append(computed(define.PSNR_SPEC, float(np.mean(psnrs)), len(psnrs)))
            metrics.append(computed(define.SSIM_SPEC, float(np.mean(ssims)), len(ssims)))
        else:
            metrics += [
                skipped(spec, "no frame pair with a face") for spec in (define.PSNR_SPEC, define.SSIM_SPEC)
            ]
        ifc = state.consistency.ifc()
        if ifc is None:
            metrics.append(skipped(define.IFC_SPEC, "fewer than 2 consecutive frame pairs with a face"))
        else:
            metrics.append(computed(define.IFC_SPEC, ifc, len(state.consistency.d_gen)))
    flicker = state.consistency.flicker()
    if flicker is None:
        metrics.append(skipped(define.FLICKER_SPEC, "fewer than 2 consecutive frames with a face"))
    else:
        reference = state.consistency.d_ref
        metric = computed(define.FLICKER_SPEC, flicker, len(state.consistency.d_gen))
        if reference:
            metric.extra["reference"] = float(np.mean(reference))
        metrics.append(metric)
    return metrics


def _write_outputs(report: EvalReport, thumbnails: list[Thumbnail], out_dir: Path) -> None:
    """report.json and report.html, each written whole to a temporary name then renamed into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / REPORT_FILE) as tmp:
        report.write(tmp)
    with atomic_path(out_dir / HTML_FILE) as tmp:
        write_html(report, thumbnails, tmp)
