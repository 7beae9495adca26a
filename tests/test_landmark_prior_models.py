"""The landmark-prior family's first layer: landmark sets, sketches, the audio-to-landmark transformer, the
alignment and rendering models, the losses and the discriminator.

Expected numbers are literals or hand arithmetic, not a second call of the code under test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from lipsync.face.landmarks import IBUG68_FROM_MESH
from lipsync.models.landmark_prior import FAMILY
from lipsync.models.landmark_prior.alignment import AlignmentModel, normalise_weights, resize_flow, warp
from lipsync.models.landmark_prior.blocks import SpadeNorm
from lipsync.models.landmark_prior.config import RenderConfig
from lipsync.models.landmark_prior.landmark_sets import (
    CONTENT_POINTS,
    FACE_EDGES,
    LIP_EDGES,
    POSE_POINTS,
    REFERENCE_ORDER,
)
from lipsync.models.landmark_prior.landmark_transformer import (
    POSE_STAGES,
    REFERENCE_STAGES,
    LandmarkTransformer,
    TransformerConfig,
    point_encoder,
    sinusoidal_positions,
)
from lipsync.models.landmark_prior.losses import (
    PAPER_WEIGHTS,
    LossTerms,
    MultiscaleDiscriminator,
    VGGLosses,
    gan_discriminator_loss,
    gan_feature_matching_loss,
    gan_generator_loss,
    gram_matrix,
    style_distance,
    total_loss,
)
from lipsync.models.landmark_prior.renderer import AudioCrossAttention, RenderingModel, cross_attention
from lipsync.models.landmark_prior.sketch import draw_sketch, sketch_stack
from lipsync.train.losses.perceptual import VGG19Features

SIZES = (128, 256)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_family_name() -> None:
    assert FAMILY == "landmark-prior"


# --- landmark sets and sketches ------------------------------------------------------------------------
# IP_LAP's 17 lower-jaw (predicted) FaceMesh vertices and its 40 lip vertices.
IPLAP_JAW = {132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361}
IPLAP_LIPS = {
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
    78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95,
}  # fmt: skip


def test_pose_and_content_split_the_68_points_as_iplap_does() -> None:
    assert sorted(REFERENCE_ORDER) == list(range(68))
    assert (len(POSE_POINTS), len(CONTENT_POINTS)) == (37, 31)
    content_mesh = {IBUG68_FROM_MESH[i] for i in CONTENT_POINTS}
    pose_mesh = {IBUG68_FROM_MESH[i] for i in POSE_POINTS}
    assert content_mesh <= IPLAP_JAW | IPLAP_LIPS
    assert not pose_mesh & (IPLAP_JAW | IPLAP_LIPS)
    assert CONTENT_POINTS[:11] == tuple(range(3, 14))  # jaw first, then lips (IP_LAP's order)
    assert len(FACE_EDGES) == 63 and len(LIP_EDGES) == 20


def _landmarks() -> np.ndarray:
    """Every point outside the box but the outer-lip edge 48 → 49, from (0.25, 0.75) to (0.5, 0.75)."""
    points = np.full((2, 68), -1.0)
    points[:, 48] = (0.25, 0.75)
    points[:, 49] = (0.5, 0.75)
    return points


@pytest.mark.parametrize("size", SIZES)
def test_sketch_draws_edges_as_grey_lines(size: int) -> None:
    sketch = draw_sketch(_landmarks(), size, LIP_EDGES)
    assert sketch.shape == (3, size, size) and sketch.dtype == np.float32
    row = size * 3 // 4
    lit = np.argwhere(sketch[0] > 0)
    # one 1 px line on row ⌊0.75·size⌋ from column ⌊0.25·size⌋ to ⌊0.5·size⌋, nothing else
    assert (lit[:, 0] == row).all()
    assert lit[:, 1].tolist() == list(range(size // 4, size // 2 + 1))
    np.testing.assert_allclose(sketch[0, row, size // 4 : size // 2 + 1], 224 / 255, rtol=1e-6)
    assert (sketch[0] == sketch[1]).all() and (sketch[1] == sketch[2]).all()


def test_sketch_drops_points_outside_the_box_with_their_edges() -> None:
    points = _landmarks()
    points[0, 48] = 1.5
    assert draw_sketch(points, 128, LIP_EDGES).max() == 0.0
    points[0, 48] = np.nan
    assert draw_sketch(points, 128, LIP_EDGES).max() == 0.0
    face = draw_sketch(_landmarks(), 128)  # the face graph holds the edge too
    assert face[0, 96, 32:65].min() > 0


def test_sketch_stack_is_frame_major() -> None:
    frames = [np.full((2, 68), -1.0) for _ in range(5)]
    frames[4] = _landmarks()
    stack = sketch_stack(frames, 128, LIP_EDGES)
    assert stack.shape == (15, 128, 128)
    assert stack[12:, 96, 40].min() > 0 and stack[:12, 96, 40].max() == 0
    with pytest.raises(ValueError):
        sketch_stack(frames[:4])


# --- the landmark transformer ----------------------------------------------------------------------------
def _transformer_inputs(batch: int = 2, frames: int = 5, references: int = 15) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, frames, 1, 80, 16, generator=generator),
        torch.rand(batch, frames, 2, 37, generator=generator),
        torch.rand(batch, references, 2, 68, generator=generator),
    )


def test_transformer_predicts_jaw_and_lips_per_frame() -> None:
    torch.manual_seed(0)
    model = LandmarkTransformer(TransformerConfig.tiny()).eval()
    mels, pose, refs = _transformer_inputs()
    with torch.no_grad():
        out = model(mels, pose, refs)
    assert out.shape == (2, 5, 2, 31)
    assert torch.isfinite(out).all()


def test_transformer_has_no_mask_and_references_are_a_set() -> None:
    torch.manual_seed(0)
    model = LandmarkTransformer(TransformerConfig.tiny()).eval()
    mels, pose, refs = _transformer_inputs()
    with torch.no_grad():
        out = model(mels, pose, refs)
        shuffled = model(mels, pose, refs[:, torch.randperm(15)])  # no position on reference tokens
        changed = mels.clone()
        changed[:, 0] = -4.0
        later = model(changed, pose, refs)
    torch.testing.assert_close(shuffled, out, rtol=1e-5, atol=1e-5)
    # no mask: frame 0's audio reaches frame 4's prediction
    assert (later[:, 4] - out[:, 4]).abs().max() > 1e-6
    assert model.modality.weight[0].abs().max() == 0  # padding row stays zero
    with pytest.raises(ValueError):
        model(mels, pose[:, :4], refs)


def test_positional_encoding_values() -> None:
    table = sinusoidal_positions(5, 4)
    # position 1: sin(1), cos(1), sin(1/100), cos(1/100) (rate 10000^(−2/4) = 1/100)
    torch.testing.assert_close(
        table[1], torch.tensor([0.841471, 0.540302, 0.0099998, 0.99995]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_point_encoders_reproduce_iplap_strides() -> None:
    def strides(points: int, stages: tuple[tuple[int, int], ...], leading: int) -> list[int]:
        layers = point_encoder(points, stages, leading, out_dim=8, width_divisor=4)
        convs = [m for m in layers.modules() if isinstance(m, torch.nn.Conv1d)]
        return [c.stride[0] for c in convs if c.in_channels != c.out_channels or c.kernel_size[0] != 3]

    # IP_LAP: references 131 → 66 → 33 → 17 → 9 → 5 → 3, pose 74 → 37 → 19 → 10 → 5 → 3
    assert strides(131, REFERENCE_STAGES, 1)[:7] == [1, 2, 2, 2, 2, 2, 2]
    assert strides(74, POSE_STAGES, 2)[:7] == [1, 1, 2, 2, 2, 2, 2]
    # ours: 68 → 34 → 17 → 9 → 5 → 3 → 3, 37 → 19 → 10 → 5 → 3 → 3
    assert strides(68, REFERENCE_STAGES, 1)[:7] == [1, 2, 2, 2, 2, 2, 1]
    assert strides(37, POSE_STAGES, 2)[:7] == [1, 1, 2, 2, 2, 2, 1]
    refs = point_encoder(68, REFERENCE_STAGES, 1, out_dim=8, width_divisor=4).eval()
    assert refs(torch.rand(3, 2, 68)).shape == (3, 8, 1)


def test_transformer_encoder_parameters_match_the_arithmetic() -> None:
    with torch.device("meta"):
        model = LandmarkTransformer()
    d, ffn = 512, 1024
    attention = 3 * d * d + 3 * d + d * d + d
    feedforward = d * ffn + ffn + ffn * d + d
    norms = 2 * 2 * d
    assert parameters(model.encoder) == 4 * (attention + feedforward + norms) == 8_411_136


def test_full_width_parameter_counts_in_readme() -> None:
    with torch.device("meta"):
        counts = (
            parameters(LandmarkTransformer()),
            parameters(AlignmentModel(RenderConfig.for_size(128))),
            parameters(RenderingModel(RenderConfig.for_size(128))),
            parameters(MultiscaleDiscriminator()),
        )
    assert counts == (13_697_718, 11_766_243, 12_738_944, 5_529_474)


# --- warp, alignment, rendering ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", (32, 64, 128, 256))
def test_zero_flow_returns_the_input_exactly(size: int) -> None:
    image = torch.rand(2, 5, size, size)
    assert torch.equal(warp(image, torch.zeros(2, 2, size, size)), image)


def test_whole_pixel_flow_shifts() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 0] = 1.0  # read one pixel to the right
    out = warp(image, flow)
    expected = torch.tensor([[1.0, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0], [13, 14, 15, 0]])
    torch.testing.assert_close(out[0, 0], expected)
    half = resize_flow(flow, 2)
    torch.testing.assert_close(half, torch.full_like(half, 0.5) * torch.tensor([1.0, 0]).view(1, 2, 1, 1))


def test_weight_normalisation() -> None:
    weights = torch.tensor([1.0, 3.0, 1e-4, 3e-4]).view(2, 2, 1, 1, 1)
    expected = torch.tensor([0.25, 0.75, 0.25, 0.75])
    torch.testing.assert_close(normalise_weights(weights).flatten(), expected, rtol=1e-6, atol=0)
    assert normalise_weights(torch.zeros(1, 2, 1, 1, 1)).abs().max() == 0  # a zero sum gives zeros, not NaN


def _frame(size: int, references: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "masked": torch.rand(1, 3, size, size, generator=generator),
        "sketches": torch.rand(1, 15, size, size, generator=generator),
        "references": torch.rand(1, references, 3, size, size, generator=generator),
        "reference_sketches": torch.rand(1, references, 3, size, size, generator=generator),
    }


@pytest.mark.parametrize("size", SIZES)
def test_alignment_shapes_and_weights(size: int) -> None:
    torch.manual_seed(0)
    config = RenderConfig.tiny(size)
    model = AlignmentModel(config)
    x = _frame(size, 3)
    out = model(x["masked"], x["sketches"], x["references"], x["reference_sketches"])
    half = size // 2
    assert out.image.shape == (1, 3, size, size)
    assert out.guide_image.shape == (1, 6, size, size)
    assert out.guide_full.shape == (1, 2 * config.full_channels, size, size)
    assert out.guide_half.shape == (1, 2 * config.half_channels, half, half)
    assert out.flows.shape == (1, 3, 2, size, size) and out.weights.shape == (1, 3, 1, size, size)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(1, 1, size, size), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.guide_image[:, :3], x["masked"])
    out.image.mean().backward()
    assert model.flow_head.weight.grad is not None and model.flow_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", SIZES)
def test_renderer_shapes(size: int) -> None:
    torch.manual_seed(0)
    config = RenderConfig.tiny(size)
    x = _frame(size, 2)
    alignment = AlignmentModel(config)(x["masked"], x["sketches"], x["references"], x["reference_sketches"])
    lips = torch.rand(1, 5, 3, size, size)
    out = RenderingModel(config)(x["masked"], x["sketches"], lips, lips, torch.randn(1, 1, 80, 16), alignment)
    assert out.shape == (1, 3, size, size)
    assert out.min() >= 0 and out.max() <= 1


def test_configurations() -> None:
    assert RenderConfig.for_size(256).face_size == 256
    assert RenderConfig.for_size(128).upsampled_channels == 64
    with pytest.raises(ValueError):
        RenderConfig.for_size(96)


def test_narrowed_widths_divide_the_full_ones() -> None:
    narrow = RenderConfig.narrowed(128, 8)
    assert (narrow.full_channels, narrow.half_channels, narrow.spade_hidden) == (4, 32, 32)
    assert (narrow.weight_hidden, narrow.attention_channels, narrow.audio_width_divisor) == (4, 4, 8)
    assert narrow.fusion_blocks == RenderConfig().fusion_blocks and narrow.upsampled_channels == 8
    assert RenderConfig.narrowed(256, 1) == RenderConfig.for_size(256)
    with pytest.raises(ValueError, match="width divisor 3"):
        RenderConfig.narrowed(128, 3)
    full = parameters(RenderingModel(RenderConfig()))
    assert parameters(RenderingModel(narrow)) < full / 32  # convolutions shrink with the square of width


def test_one_spade_map_modulates_its_run_of_rows_as_if_repeated() -> None:
    torch.manual_seed(0)
    norm = SpadeNorm(channels=4, modulation_channels=3, hidden=5)
    x, maps = torch.randn(6, 4, 8, 8), torch.rand(2, 3, 16, 16)  # 2 frames × 3 references
    with torch.no_grad():
        shared = norm(x, maps)
        repeated = norm(x, maps.repeat_interleave(3, dim=0))
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-6)
    assert not torch.allclose(shared[0], shared[3])  # the second frame's map, not the first's
    with pytest.raises(ValueError, match="5 feature rows cannot share 2 modulation maps"):
        norm(x[:5], maps)


def test_encoded_references_give_what_the_models_compute_themselves() -> None:
    """A generator encodes its reference set once (E_r, the lip encoder) and passes the encodings in."""
    torch.manual_seed(0)
    config = RenderConfig.tiny(128)
    alignment, renderer = AlignmentModel(config), RenderingModel(config)
    x = _frame(128, 3)
    lips = torch.rand(1, 2, 3, 128, 128)
    lip_sketches = torch.rand(1, 2, 3, 128, 128)
    mel = torch.randn(1, 1, 80, 16)
    with torch.no_grad():
        inputs = (x["masked"], x["sketches"], x["references"], x["reference_sketches"])
        direct = alignment(*inputs)
        features = alignment.encode_references(x["references"][0], x["reference_sketches"][0])
        assert features.full.shape == (3, config.full_channels, 128, 128)
        assert features.half.shape == (3, config.half_channels, 64, 64)
        given = alignment(*inputs, type(features)(features.full[None], features.half[None]))
        torch.testing.assert_close(given.image, direct.image, rtol=0, atol=1e-6)
        torch.testing.assert_close(given.guide_half, direct.guide_half, rtol=0, atol=1e-6)
        lip_features = renderer.encode_lips(lips, lip_sketches)
        assert lip_features is not None and lip_features.shape == (1, 2, config.half_channels, 64, 64)
        drawn = renderer(x["masked"], x["sketches"], lips, lip_sketches, mel, direct)
        drawn_given = renderer(x["masked"], x["sketches"], lips, lip_sketches, mel, direct, lip_features)
        torch.testing.assert_close(drawn_given, drawn, rtol=0, atol=1e-6)
    no_lips = dataclasses.replace(RenderConfig.tiny(128), without_lip_module=True)
    assert RenderingModel(no_lips).encode_lips(lips, lips) is None


def test_cross_attention_by_hand() -> None:
    # two visual positions with queries 0 and ln 3; two audio positions with keys 0 and 1, values 2 and 6.
    query = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    key = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    value = torch.tensor([2.0, 6.0]).view(1, 1, 1, 2)
    # position 0: softmax(0, 0) = (1/2, 1/2) → 4; position 1: softmax(0, ln 3) = (1/4, 3/4) → 5
    torch.testing.assert_close(cross_attention(query, key, value), torch.tensor([4.0, 5.0]).view(1, 1, 1, 2))


def test_attention_module_adds_attended_audio_to_the_lip_features() -> None:
    module = AudioCrossAttention(visual_channels=1, audio_channels=1, attention_channels=1)
    with torch.no_grad():
        for conv in (module.query, module.key, module.value):
            conv.weight.fill_(1.0)
            assert conv.bias is not None
            conv.bias.zero_()
        module.value.weight.fill_(2.0)  # values 2·audio
    visual = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    audio = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 2, 2)  # keys 0, 1, 0, 1; values 0, 2, 0, 2
    # position 0: uniform → 1; position 1: weights (1, 3, 1, 3)/8 → 12/8 = 1.5; plus the visual input
    expected = torch.tensor([1.0, math.log(3.0) + 1.5]).view(1, 1, 1, 2)
    torch.testing.assert_close(module(visual, audio), expected)


# --- losses ------------------------------------------------------------------------------------------------
def test_gram_and_style_by_hand() -> None:
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)
    # F Fᵀ = [[5, 11], [11, 25]], / (C·H·W = 4)
    torch.testing.assert_close(gram_matrix(features), torch.tensor([[[1.25, 2.75], [2.75, 6.25]]]))
    other = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(1, 2, 1, 2)  # Gram [[0.25, 0], [0, 1]]
    # layer 1: mean |[[1, 2.75], [2.75, 5.25]]| = 11.75 / 4; layer 2: mean of a 1 × 1 Gram, |4 − 0| / 1
    single = torch.tensor([2.0]).view(1, 1, 1, 1)
    got = style_distance([features, single], [other, torch.zeros(1, 1, 1, 1)])
    torch.testing.assert_close(got, torch.tensor(11.75 / 4 + 4.0))


def test_vgg_losses_are_zero_on_equal_images_and_train_the_prediction_only() -> None:
    torch.manual_seed(0)
    losses = VGGLosses(VGG19Features(width_divisor=16))
    target = torch.rand(1, 3, 32, 32)
    perceptual, style = losses.perceptual_and_style(target, target)
    assert perceptual.item() == 0.0 and style.item() == 0.0
    prediction = torch.rand(1, 3, 32, 32, requires_grad=True)
    perceptual, style = losses.perceptual_and_style(prediction, target)
    assert perceptual.item() > 0 and style.item() > 0
    (perceptual + style).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert all(p.grad is None for p in losses.vgg.parameters())
    torch.testing.assert_close(losses.perceptual(prediction, target), perceptual)


def test_discriminator_layout_and_parameters() -> None:
    disc = MultiscaleDiscriminator()
    # per scale, k4 convs: 3→64, 64→128, 128→256, 256→512, 512→1, with biases; affine-free norms
    per_scale = sum(i * o * 16 + o for i, o in ((3, 64), (64, 128), (128, 256), (256, 512), (512, 1)))
    assert parameters(disc) == 2 * per_scale == 5_529_474
    with torch.device("meta"):
        maps = disc.to("meta")(torch.empty(1, 3, 128, 128))
    # k4 p2: s2 → ⌊(n + 4 − 4)/2⌋ + 1, s1 → n + 1
    assert [tuple(m.shape[1:]) for m in maps[0]] == [
        (64, 65, 65),
        (128, 33, 33),
        (256, 17, 17),
        (512, 18, 18),
        (1, 19, 19),
    ]
    assert [tuple(m.shape[1:]) for m in maps[1]][-1] == (1, 11, 11)


def test_gan_losses_by_hand() -> None:
    def maps(value: float) -> list[list[torch.Tensor]]:
        return [[torch.full((1, 2, 2, 2), value), torch.full((1, 1, 3, 3), value)] for _ in range(2)]

    # generator: Σ over 2 scales of (1 − 0.5)² = 0.5
    torch.testing.assert_close(gan_generator_loss(maps(0.5)), torch.tensor(0.5))
    # discriminator: ½ Σ_scales [(1 − 0.75)² + 0.5²] = ½ · 2 · 0.3125
    torch.testing.assert_close(gan_discriminator_loss(maps(0.75), maps(0.5)), torch.tensor(0.3125))
    # feature matching: 2 scales × ½ · |1 − 0.5| on the one intermediate map each = 0.5
    torch.testing.assert_close(gan_feature_matching_loss(maps(1.0), maps(0.5)), torch.tensor(0.5))


def test_loss_weights() -> None:
    assert (PAPER_WEIGHTS.warp, PAPER_WEIGHTS.reconstruction, PAPER_WEIGHTS.style) == (2.5, 4.0, 1000.0)
    assert (PAPER_WEIGHTS.gan, PAPER_WEIGHTS.feature_matching) == (0.25, 2.5)
    one = torch.tensor(1.0)
    terms = LossTerms(warp=one, reconstruction=2 * one, style=0.001 * one, gan=4 * one, feature_matching=one)
    torch.testing.assert_close(total_loss(terms), torch.tensor(2.5 + 8 + 1 + 1 + 2.5))
