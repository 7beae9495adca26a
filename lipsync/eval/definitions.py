"""What each reported figure means: stated once, written into report.json next to the figure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Better = Literal["lower", "higher", "zero"]  # zero: closest to 0 is best


BETTER_ARROWS: dict[str, str] = {"lower": "↓", "higher": "↑", "zero": "→0"}
BETTER_WORDS: dict[str, str] = {"lower": "lower is better", "higher": "higher is better", "zero": "0 is best"}


@dataclass(frozen=True)
class MetricSpec:
    key: str  # stable identifier in report.json
    name: str  # as papers print it
    definition: str
    better: Better
    unit: str = ""


LSE_D = (
    "syncnet_v2 (joonson/syncnet_python) on 224 px BGR face crops at 25 fps: video windows of 5 frames, "
    "audio windows of 20 MFCC columns (0.2 s); per audio offset -15..+15 frames, the mean Euclidean "
    "distance over windows; LSE-D is the minimum of these means. Faces are boxed by mediapipe landmarks, "
    "not S3FD."
)
LSE_C = "LSE confidence: median over the 31 offsets' mean distances minus their minimum (same run as LSE-D)."
AV_OFFSET = (
    "The offset (frames) of the minimum mean distance, as syncnet_python reports it: 15 minus the index of "
    "the minimum; positive means the video lags the audio."
)
FID_FACE = (
    "Fréchet distance between Gaussians fitted to InceptionV3 pool3 features (pytorch-fid weights, 2048-d, "
    "bilinear resize to 299) of the generated and reference FACE CROPS (the 256 px dub crop box of the "
    "reference's face, the same box on both), frame pairs 0..N-1. Few frames (N < 2048) give a biased FID: "
    "compare it only between runs with the same N."
)
FID_FRAME = (
    "As FID (face crops), but on the FULL FRAMES at their own resolution (resized to 299 by the network)."
)
CSIM = (
    "Identity: cosine similarity of ArcFace (iresnet) embeddings of generated frame t and reference frame t "
    "(the dub crop box resized to 112, no alignment), averaged over frame pairs: the matched diagonal, not "
    "the all-pairs mean."
)
LMD = (
    "Mouth landmark distance: mean Euclidean distance between the 20 mouth landmarks (68-point 48-67, from "
    "mediapipe FaceMesh) of generated and reference frame t, divided by the reference's inter-ocular "
    "distance (outer eye corners 36-45), averaged over frames where both faces are found. Meaningful for "
    "self-reconstruction (the reference's own audio)."
)
LMD_PIXELS = (
    "vico's LMD variant: mean absolute per-coordinate difference of the mouth landmarks 48-67, in pixels of "
    "the frames, no normalisation."
)
LIP_LMD = (
    "LipLMD (the landmark-prior paper's name for Chen et al.'s LMD on its 128 px face crops): mean Euclidean "
    "distance between the 20 lip landmarks (68-point 48-67) of generated and reference frame t, in pixels of "
    "the reference's 256 px dub crop box rescaled to 128 x 128 (x and y each by 128 / the box's side), "
    "averaged over frames where both faces are found."
)
LPIPS = (
    "LPIPS v0.1 (Zhang et al. 2018) with the AlexNet backbone (the lpips package's default, net='alex'), on "
    "the same face-crop pairs as PSNR (256 px RGB scaled to [-1, 1], not resized), averaged over frames: "
    "per layer relu1..relu5, features shifted/scaled by lpips' ScalingLayer, unit-normalised over "
    "channels, squared difference, the learned 1x1 weights, spatial mean; summed over the 5 layers."
)
PSNR = (
    "PSNR in dB, 10 log10(255^2 / MSE), of the generated and reference face crops (the reference's 256 px "
    "dub crop box on both frames), averaged over frames; identical crops give infinity (reported as null)."
)
SSIM = (
    "SSIM (Wang et al. 2004: 11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03, range 255, population "
    "covariance; the mean over the valid region and the RGB channels) of the same face-crop pairs as PSNR, "
    "averaged over frames. Equals scikit-image structural_similarity(gaussian_weights=True, sigma=1.5, "
    "use_sample_covariance=False, data_range=255)."
)
IFC = (
    "Inter-frame consistency: mean over t of |d_gen(t) - d_ref(t)|, where d(t) is the mean absolute pixel "
    "difference (0-255) between the face crops of frames t-1 and t. 0: the result changes from frame to "
    "frame exactly as much as the reference."
)
FLICKER = (
    "Mean absolute pixel difference (0-255) between consecutive generated face crops (the reference box); "
    "needs no reference. Compare with the reference's own value in extra.reference."
)
OWN_SYNC = (
    "Our SyncNet's sync probability clamp(cos(face, audio), 0, 1) per window of F frames (256 px dub crop, "
    "lower half; log-mel audio as in training), averaged over windows at offset 0."
)
OWN_SYNC_OFFSET = (
    "The audio shift in frames (-15..+15) that maximises our SyncNet's mean cosine; positive means the video "
    "lags the audio."
)


LIP_SYNC_R = (
    "Lip-sync meter: Pearson r between the generated face's lip gap per frame (mean distance of the facing "
    "inner-lip landmarks 61-67, 62-66, 63-65 over the mouth width 48-54, from mediapipe FaceMesh) and a "
    "target per frame: the ground-truth opening given with --opening (a controlled-sync corpus's "
    "<clip>.opening.npy), else the reference video's own lip gap (a held-out real clip dubbed with its own "
    "audio). Over frames where both are defined, at lag 0; best_lag is the lag within ±5 frames with the "
    "highest r (positive: the generated mouth moves later). 1 follows the target, 0 ignores it."
)
LSE_D_SPEC = MetricSpec("lse_d", "LSE-D", LSE_D, "lower")
LSE_C_SPEC = MetricSpec("lse_c", "LSE-C", LSE_C, "higher")
AV_OFFSET_SPEC = MetricSpec("av_offset", "AV offset", AV_OFFSET, "zero", "frames")
OWN_SYNC_SPEC = MetricSpec("own_sync_confidence", "SyncNet conf. (ours)", OWN_SYNC, "higher")
OWN_SYNC_OFFSET_SPEC = MetricSpec(
    "own_sync_offset", "SyncNet offset (ours)", OWN_SYNC_OFFSET, "zero", "frames"
)
FID_FACE_SPEC = MetricSpec("fid_face", "FID (face crops)", FID_FACE, "lower")
FID_FRAME_SPEC = MetricSpec("fid_frame", "FID (full frames)", FID_FRAME, "lower")
CSIM_SPEC = MetricSpec("csim", "CSIM", CSIM, "higher")
LMD_SPEC = MetricSpec("lmd", "LMD", LMD, "lower")
LIP_SYNC_R_SPEC = MetricSpec("lip_sync_r", "Lip-sync r", LIP_SYNC_R, "higher")
LMD_PIXELS_SPEC = MetricSpec("lmd_pixels", "LMD (pixels)", LMD_PIXELS, "lower", "px")
LIP_LMD_SPEC = MetricSpec("lip_lmd", "LipLMD", LIP_LMD, "lower", "px")
LPIPS_SPEC = MetricSpec("lpips", "LPIPS", LPIPS, "lower")
PSNR_SPEC = MetricSpec("psnr", "PSNR", PSNR, "higher", "dB")
SSIM_SPEC = MetricSpec("ssim", "SSIM", SSIM, "higher")
IFC_SPEC = MetricSpec("ifc", "IFC", IFC, "lower")
FLICKER_SPEC = MetricSpec("flicker", "Flicker", FLICKER, "lower")
