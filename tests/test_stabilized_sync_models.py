"""The stabilized-sync family's first layer: mel windows, AVSyncNet, generator and discriminator, losses.

Parameter counts and loss values are derived by hand here (arithmetic and literal numbers), not by
calling the code under test a second time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from lipsync.models.stabilized_sync import FAMILY
from lipsync.models.stabilized_sync.avsyncnet import AVSyncNet, avsync_loss, prepare_lips
from lipsync.models.stabilized_sync.generator_net import (
    FaceDiscriminator,
    GeneratorConfig,
    TalkingFaceGenerator,
    generate_frames,
    pose_reference,
)
from lipsync.models.stabilized_sync.losses import (
    ADAM_BETAS,
    LEARNING_RATE,
    SILENT_LIP_WEIGHTS,
    TALKING_FACE_WEIGHTS,
    AdaptiveTripletLoss,
    adam,
    adaptive_triplet_loss,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    perceptual_config,
    stabilized_sync_loss,
    vanilla_sync_loss,
)
from lipsync.models.stabilized_sync.mel import (
    log_mel,
    mel_window,
    mel_window_start,
    mel_windows,
    silent_mel_window,
)
from lipsync.models.stabilized_sync.resnet50 import ResNet50
from lipsync.models.stabilized_sync.resnet_se34 import ResNetSE34
from lipsync.train.data.mel import _mel_basis
from lipsync.train.losses.perceptual import PerceptualLoss, UntrainedPerceptualWarning, VGG19Features


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These small networks run several times faster on one thread than on two shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- mel ------------------------------------------------------------------------------------------


def test_family_name() -> None:
    assert FAMILY == "stabilized-sync"


def test_mel_window_start_is_80_steps_per_second() -> None:
    # int(80 * t / fps): 25 fps -> 3.2 steps a frame
    assert [mel_window_start(t, 25) for t in (0, 1, 2, 5, 7)] == [0, 3, 6, 16, 22]
    assert mel_window_start(1, 30) == 2  # 2.67
    assert mel_window_start(3, 50) == 4  # 4.8
    assert mel_window_start(30, Fraction(30000, 1001)) == 80  # 80.08, exact: no float drift
    assert mel_window_start(30_000, Fraction(30000, 1001)) == 80_080
    with pytest.raises(ValueError):
        mel_window_start(-1, 25)
    with pytest.raises(ValueError):
        mel_window_start(1, 0)


def test_mel_window_cuts_16_steps_and_stays_inside_the_audio() -> None:
    mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
    window = mel_window(mel, 3, 25)  # start int(9.6) = 9
    assert window.shape == (1, 80, 16) and window.dtype == np.float32
    assert np.array_equal(window[0], mel[:, 9:25])
    assert np.array_equal(mel_window(mel, 30, 25)[0], mel[:, 84:100])  # start 96 moved back to end at 100
    short = np.zeros((80, 10), np.float32)
    padded = mel_window(short, 0, 25)
    assert np.all(padded[0, :, :10] == 0) and np.all(padded[0, :, 10:] == -4.0)
    stacked = mel_windows(mel, [0, 1, 2], 25)
    assert stacked.shape == (3, 1, 80, 16) and np.array_equal(stacked[1, 0], mel[:, 3:19])
    assert mel_windows(mel, [], 25).shape == (0, 1, 80, 16)
    with pytest.raises(ValueError):
        mel_window(mel[:40], 0, 25)


def test_log_mel_of_silence_and_the_silent_window() -> None:
    silence = log_mel(np.zeros(16_000, np.float32))
    assert silence.shape == (80, 81)  # 1 + 16000 // 200 columns
    assert np.all(silence == -4.0)  # 20 log10(1e-5) - 20 = -120 dB, below -100 dB: clipped to -4
    assert np.array_equal(silent_mel_window(), mel_window(silence, 10, 25))


def slaney_mel(hz: float) -> float:
    """Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above (27 mel per x6.4)."""
    return 3 * hz / 200 if hz < 1000 else 15 + 27 * math.log(hz / 1000) / math.log(6.4)


def slaney_hz(mel: float) -> float:
    return 200 * mel / 3 if mel < 15 else 1000 * math.exp((mel - 15) * math.log(6.4) / 27)


def slaney_edges() -> list[float]:
    """82 edge/centre frequencies of 80 bands from 55 to 7600 Hz, evenly spaced on the Slaney scale."""
    low, high = slaney_mel(55.0), slaney_mel(7600.0)
    return [slaney_hz(low + (high - low) * i / 81) for i in range(82)]


def test_slaney_filterbank_against_its_definition() -> None:
    assert slaney_mel(1000.0) == 15.0 and slaney_mel(6400.0) == pytest.approx(42.0)
    assert slaney_hz(slaney_mel(3000.0)) == pytest.approx(3000.0)
    edges = slaney_edges()
    assert edges[0] == pytest.approx(55.0) and edges[-1] == pytest.approx(7600.0)
    bins = np.linspace(0, 8000, 401)  # n_fft 800 at 16 kHz: 20 Hz apart
    expected = np.zeros((80, 401))
    for k in range(80):
        lo, centre, hi = edges[k], edges[k + 1], edges[k + 2]
        rising = (bins - lo) / (centre - lo)
        falling = (hi - bins) / (hi - centre)
        expected[k] = np.maximum(0, np.minimum(rising, falling)) * 2 / (hi - lo)  # area-normalised triangle
    basis = _mel_basis()
    assert basis.shape == (80, 401)
    np.testing.assert_allclose(basis, expected, rtol=1e-6, atol=1e-9)
    assert np.all(basis[:, bins < 55] == 0) and np.all(basis[:, bins > 7600] == 0)


@pytest.mark.parametrize("band", [20, 45, 70])
def test_a_tone_at_a_band_centre_peaks_in_that_band(band: int) -> None:
    hz = slaney_edges()[band + 1]
    t = np.arange(16_000) / 16_000
    mel = log_mel((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32))
    assert int(mel[:, 40].argmax()) == band


# --- AVSyncNet ------------------------------------------------------------------------------------


def bottleneck_params(in_channels: int, width: int, projection: bool) -> int:
    """1x1 (no bias) + 3x3 + 1x1 to 4w, three BNs (2 values per channel), optional 1x1 projection + BN."""
    out = 4 * width
    convs = in_channels * width + 9 * width * width + width * out
    norms = 2 * width + 2 * width + 2 * out
    return convs + norms + ((in_channels * out + 2 * out) if projection else 0)


def resnet50_trunk_params(in_channels: int) -> int:
    stem = in_channels * 64 * 7 * 7 + 2 * 64
    total, channels = stem, 64
    for blocks, width in ((3, 64), (4, 128), (6, 256), (3, 512)):
        total += bottleneck_params(channels, width, projection=True)
        total += (blocks - 1) * bottleneck_params(4 * width, width, projection=False)
        channels = 4 * width
    return total


@pytest.fixture(scope="module")
def avsyncnet() -> AVSyncNet:
    torch.manual_seed(0)
    return AVSyncNet().eval()


def test_resnet50_parameter_counts(avsyncnet: AVSyncNet) -> None:
    # torchvision's resnet50 has 25,557,032 parameters; its fc (2048 -> 1000) 2,049,000 of them.
    assert resnet50_trunk_params(3) == 25_557_032 - 2_049_000 == 23_508_032
    assert count(ResNet50()) == 23_508_032
    net = avsyncnet
    assert count(net.face_encoder) == resnet50_trunk_params(15)
    # 15-channel first conv: 64 x 15 x 7 x 7 = 47,040 weights instead of 64 x 3 x 7 x 7 = 9,408.
    assert resnet50_trunk_params(15) == 23_508_032 - 9_408 + 47_040 == 23_545_664
    # + Linear 2048 -> 512 to the embedding
    assert count(net.face_encoder) + count(net.face_head) == 23_545_664 + 2048 * 512 + 512 == 24_594_752
    assert count(net.audio_encoder) == 1_437_078  # test_resnet_se34_parameter_count derives it


def se_block_params(in_channels: int, channels: int, projection: bool) -> int:
    """Two 3x3 convs (no bias), two BNs, SE (Linear C -> C/8 -> C with biases), optional 1x1 + BN."""
    squeeze = channels // 8
    se = channels * squeeze + squeeze + squeeze * channels + channels
    body = 9 * in_channels * channels + 9 * channels * channels + 4 * channels + se
    return body + ((in_channels * channels + 2 * channels) if projection else 0)


def test_resnet_se34_parameter_count() -> None:
    stem = 1 * 16 * 7 * 7 + 2 * 16  # 816
    layer1 = 3 * se_block_params(16, 16, False)  # 3 x 4,754
    layer2 = se_block_params(16, 32, True) + 3 * se_block_params(32, 32, False)  # 14,820 + 3 x 18,852
    layer3 = se_block_params(32, 64, True) + 5 * se_block_params(64, 64, False)  # 58,824 + 5 x 75,080
    layer4 = se_block_params(64, 128, True) + 2 * se_block_params(128, 128, False)  # 234,384 + 2 x 299,664
    sap = 128 * 128 + 128 + 128  # tanh(W h + b), attention vector v
    fc = 128 * 512 + 512
    assert (stem, layer1, layer2, layer3, layer4) == (816, 14_262, 71_376, 434_224, 833_712)
    expected = stem + layer1 + layer2 + layer3 + layer4 + sap + fc
    assert expected == 1_437_078
    assert count(ResNetSE34(out_dim=512)) == expected


def test_avsyncnet_inputs_embeddings_and_similarity(avsyncnet: AVSyncNet) -> None:
    torch.manual_seed(0)
    faces = torch.rand(2, 5, 3, 96, 96) * 2 - 1
    lips = prepare_lips(faces)
    assert lips.shape == (2, 15, 112, 224)
    # frame-major stacking: channels 3..5 are frame 1's lower half (rows 48..95 of the 96 px face, resized)
    upper_changed = faces.clone()
    upper_changed[:, 1, :, :48] = 0.0
    changed = prepare_lips(upper_changed)
    assert torch.equal(changed[:, 3:6, 8:], lips[:, 3:6, 8:])  # only the seam rows see the upper half
    lower_changed = faces.clone()
    lower_changed[:, 1, :, 60:] = 0.0
    assert torch.equal(prepare_lips(lower_changed)[:, :3], lips[:, :3])
    assert not torch.equal(prepare_lips(lower_changed)[:, 3:6], lips[:, 3:6])
    net = avsyncnet
    mels = torch.rand(2, 1, 80, 16) * 8 - 4
    with torch.no_grad():
        vision = net.encode_faces(lips[:1])
        audio = net.encode_audio(mels)
        similarity = net.similarity(lips[:1], mels[:1])
    assert vision.shape == (1, 512) and audio.shape == (2, 512)
    assert bool((vision >= 0).all()) and bool((audio >= 0).all())  # ReLU embeddings: cosine in [0, 1]
    vision_unit, audio_unit = F.normalize(vision, dim=1), F.normalize(audio[:1], dim=1)
    assert similarity.shape == (1,)
    torch.testing.assert_close(similarity, (vision_unit * audio_unit).sum(dim=1))
    assert 0 <= similarity.item() <= 1
    with pytest.raises(ValueError):
        net.encode_faces(torch.zeros(1, 15, 48, 96))  # Wav2Lip's 96 px lips: not this net's input
    with pytest.raises(ValueError):
        net.encode_audio(torch.zeros(1, 1, 16, 80))  # time and bins swapped
    with pytest.raises(ValueError):
        prepare_lips(torch.zeros(1, 4, 3, 96, 96))


def test_avsync_loss_by_hand() -> None:
    vision = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # cosines 1, 0, 0.6
    labels = torch.tensor([1.0, 0.0, 1.0])
    # -log 1 = 0, -log(1 - 0) = 0, -log 0.6 = 0.5108256238; mean 0.1702752079
    assert avsync_loss(vision, audio, labels).item() == pytest.approx(0.1702752079, abs=1e-6)


# --- generator and discriminator ------------------------------------------------------------------


def test_configurations() -> None:
    assert (GeneratorConfig().face_size, GeneratorConfig().bottom_size) == (96, 3)  # the paper's 96 px
    assert GeneratorConfig.for_size(128).bottom_size == 4 and GeneratorConfig.for_size(128).blocks == 5
    assert GeneratorConfig.for_size(256).bottom_size == 4 and GeneratorConfig.for_size(256).blocks == 6
    assert GeneratorConfig.tiny(256).blocks == 6
    with pytest.raises(ValueError):
        GeneratorConfig.for_size(64)
    with pytest.raises(ValueError):
        GeneratorConfig(face_size=100).validate()  # not a multiple of 2^5
    with pytest.raises(ValueError):
        replace(GeneratorConfig(), decoder_channels=(64,)).validate()


@pytest.mark.parametrize("size", [96, 128])
def test_full_width_generator_and_discriminator_shapes(size: int) -> None:
    torch.manual_seed(0)
    config = GeneratorConfig.for_size(size)
    generator = TalkingFaceGenerator(config).eval()
    discriminator = FaceDiscriminator(config)
    target = torch.rand(1, 3, size, size) * 2 - 1
    identity = torch.rand(1, 3, size, size) * 2 - 1
    with torch.no_grad():
        faces = generator(identity, pose_reference(target), torch.rand(1, 512))
        logits = discriminator(faces)
    assert faces.shape == (1, 3, size, size) and faces.abs().max() <= 1
    assert logits.shape == (1,)


def test_tiny_256_generator_and_discriminator() -> None:
    torch.manual_seed(0)
    config = GeneratorConfig.tiny(256)
    generator = TalkingFaceGenerator(config)
    discriminator = FaceDiscriminator(config)
    target = torch.rand(2, 3, 256, 256) * 2 - 1
    faces = generator(target.flip(0), pose_reference(target), torch.rand(2, 512))
    assert faces.shape == (2, 3, 256, 256)
    logits = discriminator(faces)
    assert logits.shape == (2,)
    generator_adversarial_loss(logits).backward()
    assert generator.identity_encoder.stem[0].weight.grad is not None
    convs = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 + 2 and all(parametrize.is_parametrized(c, "weight") for c in convs)
    with pytest.raises(ValueError):
        generator(target, target, torch.rand(2, 256))  # F_A must be 512-d
    with pytest.raises(ValueError):
        discriminator(torch.zeros(1, 3, 96, 96))


def test_pose_reference_is_the_target_with_its_lower_half_masked() -> None:
    target = torch.rand(2, 5, 3, 96, 96)
    pose = pose_reference(target)
    assert torch.equal(pose[..., :48, :], target[..., :48, :])
    assert bool((pose[..., 48:, :] == -1).all())
    assert not bool((target[..., 48:, :] == -1).any())  # the target itself is untouched


def test_five_frames_are_folded_into_the_batch() -> None:
    torch.manual_seed(0)
    generator = TalkingFaceGenerator(GeneratorConfig.tiny(96)).eval()
    video = torch.rand(20, 3, 96, 96) * 2 - 1
    targets = torch.stack([video[2:7], video[8:13]])  # two steps of 5 consecutive frames
    identity = torch.stack([video[12:17], video[0:5]])  # identity references: other frames of the video
    pose = pose_reference(targets)
    audio = torch.rand(2, 5, 512)
    with torch.no_grad():
        faces = generate_frames(generator, identity, pose, audio)
        single = generator(identity[1, 3:4], pose[1, 3:4], audio[1, 3:4])
        assert faces.shape == (2, 5, 3, 96, 96)
        torch.testing.assert_close(faces[1, 3:4], single)  # each frame is its own sample
        # all three inputs reach the face
        other_identity = generate_frames(generator, identity.roll(1, dims=1), pose, audio)
        other_pose = generate_frames(generator, identity, pose.roll(1, dims=1), audio)
        other_audio = generate_frames(generator, identity, pose, audio.roll(1, dims=1))
    for changed in (other_identity, other_pose, other_audio):
        assert (changed - faces).abs().max() > 1e-5
    with pytest.raises(ValueError):
        generate_frames(generator, identity, pose, audio[:, :4])


# --- losses ---------------------------------------------------------------------------------------


def test_stabilized_sync_loss_by_hand() -> None:
    eps_floor = 13.815510557964274  # -ln(1e-6)
    cases = [
        # (x, y, d, loss); |x-y| = a, |y-d| = b, loss = -ln(1 - (a + 1e-6) / (a + b + 1e-6))
        (0.5, 0.7, 0.3, 0.4054667748),  # a 0.2, b 0.4: -ln(0.4 / 0.600001) = ln 1.5000025
        (0.6, 0.6, 0.2, 2.4999969e-6),  # x == y: a 0, b 0.4: ln(1.0000025)
        (0.5, 0.7, 0.7, eps_floor),  # y == d: the fraction is 1, the log's argument floored at 1e-6
        (0.7, 0.7, 0.7, eps_floor),  # x == y == d: 1e-6 / 1e-6 = 1, likewise
    ]
    for x, y, d, expected in cases:
        loss = stabilized_sync_loss(torch.tensor([x]), torch.tensor([y]), torch.tensor([d]))
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-11), (x, y, d)
    batch = stabilized_sync_loss(torch.tensor([0.5, 0.6]), torch.tensor([0.7, 0.6]), torch.tensor([0.3, 0.2]))
    assert batch.item() == pytest.approx((0.4054667748 + 2.4999969e-6) / 2, rel=1e-6)


def test_stabilized_sync_loss_gradient_reaches_x_only() -> None:
    x = torch.tensor([0.5], requires_grad=True)
    y = torch.tensor([0.7], requires_grad=True)
    d = torch.tensor([0.3], requires_grad=True)
    stabilized_sync_loss(x, y, d).backward()
    # loss = ln(a + b + eps) - ln b; d/dx = sign(x - y) / (a + b + eps) = -1 / 0.600001
    assert x.grad is not None and x.grad.item() == pytest.approx(-1.6666638889, rel=1e-5)
    assert y.grad is None and d.grad is None
    x_equal = torch.tensor([0.5], requires_grad=True)
    stabilized_sync_loss(x_equal, torch.tensor([0.7]), torch.tensor([0.7])).backward()
    assert x_equal.grad is not None and x_equal.grad.item() == 0.0  # floored: finite, no gradient


def test_adaptive_triplet_loss_by_hand() -> None:
    generated = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    target = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.5, 0.0], [1.0, 1.0], [3.0, 4.0]])
    reference = torch.tensor([[6.0, 8.0], [0.0, 3.0], [1.0, 0.0], [4.0, 5.0], [3.0, 4.0]])
    expected = [
        4.0,  # 5 - 10 / 5 + 1
        1.0513167019,  # 1 - 3 / sqrt(10) + 1
        1e-6,  # 0.5 - 1 / 0.5 + 1 = -0.5 -> max(-0.5, eps)
        1e-6,  # generated == target: 0 - 5 / 5 + 1 = 0 -> eps
        1e-6,  # reference == target: the fraction grows without bound -> eps
    ]
    for i, value in enumerate(expected):
        loss = adaptive_triplet_loss(generated[i : i + 1], target[i : i + 1], reference[i : i + 1])
        assert loss.item() == pytest.approx(value, rel=1e-6, abs=1e-12), i
    loss = adaptive_triplet_loss(generated, target, reference)
    assert loss.item() == pytest.approx((4.0 + 1.0513167019 + 3e-6) / 5, rel=1e-6)


def test_adaptive_triplet_loss_on_faces_reaches_the_generated_face_only() -> None:
    torch.manual_seed(0)
    loss_fn = AdaptiveTripletLoss(VGG19Features(width_divisor=16))
    loss_fn.train()
    assert not loss_fn.vgg.training
    generated = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    loss = loss_fn(generated, torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1)
    assert loss.item() >= 1e-6
    loss.backward()
    assert generated.grad is not None
    assert all(p.grad is None for p in loss_fn.parameters())


def test_vanilla_sync_and_adversarial_losses_by_hand() -> None:
    assert vanilla_sync_loss(torch.tensor([1.0, 0.5])).item() == pytest.approx(0.3465735903)  # (0 + ln 2) / 2
    assert generator_adversarial_loss(torch.tensor([0.0])).item() == pytest.approx(0.6931471806)  # ln 2
    assert discriminator_adversarial_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(
        1.3862943611
    )


def test_weights_optimiser_and_perceptual_settings() -> None:
    weights = TALKING_FACE_WEIGHTS
    assert (weights.gan, weights.pixel, weights.perceptual, weights.stabilized_sync, weights.triplet) == (
        1.0,
        10.0,
        1.0,
        2.0,
        0.5,
    )
    assert (SILENT_LIP_WEIGHTS.pixel, SILENT_LIP_WEIGHTS.stabilized_sync, SILENT_LIP_WEIGHTS.triplet) == (
        10.0,
        0.0,
        0.0,
    )
    assert (LEARNING_RATE, ADAM_BETAS) == (1e-4, (0.5, 0.999))
    optimiser = adam(torch.nn.Linear(2, 2))
    assert optimiser.defaults["lr"] == 1e-4 and optimiser.defaults["betas"] == (0.5, 0.999)
    config = perceptual_config(96)
    assert (config.input_size, config.scales, config.layer_weights) == (
        96,
        (1.0,),
        (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1),
    )
    with pytest.warns(UntrainedPerceptualWarning):
        perceptual = PerceptualLoss(replace(config, width_divisor=16))
    faces = torch.rand(2, 3, 96, 96) * 2 - 1
    assert perceptual(faces, faces).item() == 0.0


def test_the_96_and_128_px_configurations_fit_a_real_time_budget_on_the_cpu() -> None:
    """Two CPU cores stream 25 fps only if a frame costs about 1.5 GFLOP at most (the README's widths)."""
    from torch.utils.flop_counter import FlopCounterMode

    def gflop(config: GeneratorConfig) -> float:
        generator = TalkingFaceGenerator(config).eval()
        faces = torch.zeros(1, 3, config.face_size, config.face_size)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            generator(faces, faces, torch.zeros(1, config.audio_dim))
        return counter.get_total_flops() / 1e9

    assert gflop(GeneratorConfig.for_size(96)) < 1.1
    assert gflop(GeneratorConfig.for_size(128)) < 1.5
    assert gflop(GeneratorConfig.wide(96)) > 8  # Wav2Lip's widths, for GPUs
