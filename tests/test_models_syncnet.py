"""SyncNet models: LatentSync's stable syncnet layout, our Wav2Lip-style net, files, and the sync loss."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lipsync.errors import WeightsError
from lipsync.models.syncnet import (
    SPEC_KEY,
    StableSyncNet,
    SyncNetSpec,
    Wav2LipSyncNet,
    build_syncnet,
    load_syncnet,
    prepare_faces,
    save_syncnet,
    sync_probability,
)
from lipsync.train.losses.sync import SyncLoss, binary_cross_entropy

# LatentSync's configs/syncnet/syncnet_16_pixel.yaml, written out independently of the model code.
LATENTSYNC_AUDIO = ((32, 64, 128, 256, 512, 1024, 2048), ((2, 1), 2, 2, 1, 2, 2, (2, 3)))
LATENTSYNC_VISUAL = ((64, 128, 256, 256, 512, 1024, 2048, 2048), ((1, 2), 2, 2, 2, 2, 2, 2, 2))
TINY_STABLE = SyncNetSpec.stable(width_divisor=16)
TINY_WAV2LIP = SyncNetSpec("wav2lip", frames=5, image_size=32, width_divisor=8)


def latentsync_keys(prefix: str, in_channels: int, channels: tuple[int, ...], factors: tuple) -> dict:
    """Expected {name: shape} of one LatentSync DownEncoder2D without attention blocks."""
    keys = {
        f"{prefix}.conv_in.weight": (channels[0], in_channels, 3, 3),
        f"{prefix}.conv_in.bias": (channels[0],),
    }
    previous = channels[0]
    for i, (out, factor) in enumerate(zip(channels, factors, strict=True)):
        block = f"{prefix}.down_blocks.{i}"
        keys.update(
            {
                f"{block}.norm1.weight": (previous,),
                f"{block}.norm1.bias": (previous,),
                f"{block}.conv1.weight": (out, previous, 3, 3),
                f"{block}.conv1.bias": (out,),
                f"{block}.norm2.weight": (out,),
                f"{block}.norm2.bias": (out,),
                f"{block}.conv2.weight": (out, out, 3, 3),
                f"{block}.conv2.bias": (out,),
            }
        )
        if previous != out:
            keys[f"{block}.conv_shortcut.weight"] = (out, previous, 1, 1)
            keys[f"{block}.conv_shortcut.bias"] = (out,)
        if factor != 1:
            keys[f"{block}.downsample_conv.weight"] = (out, out, 3, 3)
            keys[f"{block}.downsample_conv.bias"] = (out,)
        previous = out
    keys[f"{prefix}.norm_out.weight"] = (channels[-1],)
    keys[f"{prefix}.norm_out.bias"] = (channels[-1],)
    return keys


def test_stable_syncnet_has_latentsync_key_layout() -> None:
    with torch.device("meta"):
        model = StableSyncNet()
    expected = latentsync_keys("audio_encoder", 1, *LATENTSYNC_AUDIO)
    expected.update(latentsync_keys("visual_encoder", 48, *LATENTSYNC_VISUAL))
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert actual == expected
    assert model.spec.embed_dim == 2048


def test_stable_syncnet_full_size_shapes_on_meta() -> None:
    with torch.device("meta"):
        model = StableSyncNet()
        audio = model.audio_encoder(torch.empty(2, 1, 80, 52))
        visual = model.visual_encoder(torch.empty(2, 48, 128, 256))
        vision, audio_emb = model(torch.empty(2, 48, 128, 256), torch.empty(2, 1, 80, 52))
    assert tuple(audio.shape) == (2, 2048, 1, 1)
    assert tuple(visual.shape) == (2, 2048, 1, 1)
    assert tuple(vision.shape) == tuple(audio_emb.shape) == (2, 2048)


def test_stable_syncnet_pads_like_latentsync() -> None:
    """Zero padding before each strided conv: one at the end of a strided axis, one each side otherwise."""
    model = StableSyncNet(TINY_STABLE)
    audio_pads = [block.pad for block in model.audio_encoder.down_blocks if block.downsample_conv]
    visual_pads = [block.pad for block in model.visual_encoder.down_blocks]
    assert audio_pads == [(1, 1, 0, 1)] + [(0, 1, 0, 1)] * 5  # (2, 1) first, block 3 has no downsample
    assert visual_pads == [(0, 1, 1, 1)] + [(0, 1, 0, 1)] * 7  # (1, 2) first

    sizes: list[tuple[int, int]] = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
        for block in (*model.audio_encoder.down_blocks, *model.visual_encoder.down_blocks)
    ]
    model.audio_encoder(torch.randn(1, 1, 80, 52))
    model.visual_encoder(torch.randn(1, 48, 128, 256))
    for hook in hooks:
        hook.remove()
    assert sizes[:7] == [(40, 52), (20, 26), (10, 13), (10, 13), (5, 6), (2, 3), (1, 1)]
    assert sizes[7:] == [(128, 128), (64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


@pytest.mark.parametrize("spec", [TINY_STABLE, TINY_WAV2LIP, SyncNetSpec("wav2lip", 16, 96, 8)])
def test_embeddings_are_unit_and_non_negative(spec: SyncNetSpec) -> None:
    model = build_syncnet(spec).eval()
    vision, audio = model(torch.randn(3, *spec.face_shape), torch.randn(3, *spec.mel_shape))
    for emb in (vision, audio):
        assert tuple(emb.shape) == (3, spec.embed_dim)
        assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
        assert (emb >= 0).all()
    probability = sync_probability(vision, audio)
    assert ((probability >= 0) & (probability <= 1)).all()


def test_wav2lip_full_size_spec() -> None:
    spec = SyncNetSpec()
    assert (spec.frames, spec.image_size, spec.mel_steps) == (5, 96, 16)
    assert spec.face_shape == (15, 48, 96)
    with torch.device("meta"):
        model = Wav2LipSyncNet(spec)
        vision, audio = model(torch.empty(2, *spec.face_shape), torch.empty(2, *spec.mel_shape))
    assert tuple(vision.shape) == tuple(audio.shape) == (2, spec.embed_dim)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="16 frames of 256 px"):
        build_syncnet(SyncNetSpec("stable", 5, 96))
    with pytest.raises(ValueError, match="width_divisor"):
        build_syncnet(SyncNetSpec("wav2lip", 5, 96, 3))


def test_prepare_faces_resizes_and_keeps_frame_major_lower_halves() -> None:
    faces = torch.rand(2, 5, 3, 256, 256) * 2 - 1
    prepared = prepare_faces(faces, TINY_WAV2LIP)
    assert tuple(prepared.shape) == (2, 15, 16, 32)
    frame1 = F.interpolate(faces[:, 1], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(prepared[:, 3:6], frame1[:, :, 16:])
    stable = prepare_faces(torch.rand(1, 16, 3, 256, 256), TINY_STABLE)
    assert tuple(stable.shape) == (1, 48, 128, 256)
    with pytest.raises(ValueError, match="5 frames"):
        prepare_faces(torch.rand(1, 4, 3, 256, 256), TINY_WAV2LIP)


def write_latentsync_file(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"state_dict": state, "global_step": 1234}, path)
    return path


def test_latentsync_layout_checkpoint_loads_strictly(tmp_path: Path) -> None:
    source = StableSyncNet(TINY_STABLE)
    path = write_latentsync_file(tmp_path / "latentsync_syncnet.pt", source.state_dict())
    model, spec = load_syncnet(path)
    assert spec == TINY_STABLE
    assert isinstance(model, StableSyncNet) and not model.training
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert load_syncnet(path, kind="stable")[1] == TINY_STABLE
    with pytest.raises(WeightsError, match="'stable' SyncNet, not the 'wav2lip'"):
        load_syncnet(path, kind="wav2lip")


def test_checkpoint_with_a_missing_key_names_it(tmp_path: Path) -> None:
    state = StableSyncNet(TINY_STABLE).state_dict()
    del state["visual_encoder.down_blocks.3.conv2.bias"]
    path = write_latentsync_file(tmp_path / "partial.pt", state)
    with pytest.raises(WeightsError, match=r"missing \(1\): visual_encoder\.down_blocks\.3\.conv2\.bias"):
        load_syncnet(path)


def test_wrong_files_give_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_syncnet(tmp_path / "nothing.pt")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, other)
    with pytest.raises(WeightsError, match="not a LatentSync stable SyncNet"):
        load_syncnet(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read"):
        load_syncnet(garbage)


@pytest.mark.parametrize("spec", [TINY_WAV2LIP, TINY_STABLE])
def test_save_load_round_trip(tmp_path: Path, spec: SyncNetSpec) -> None:
    model = build_syncnet(spec).eval()
    path = save_syncnet(model, spec, tmp_path / "syncnet.pt")
    raw = torch.load(path, weights_only=True)  # plain tensors and a dict: no pickled code needed
    assert raw[SPEC_KEY] == asdict(spec)
    loaded, loaded_spec = load_syncnet(path)
    assert loaded_spec == spec
    faces, mels = torch.randn(2, *spec.face_shape), torch.randn(2, *spec.mel_shape)
    with torch.no_grad():
        for a, b in zip(model(faces, mels), loaded(faces, mels), strict=True):
            assert torch.equal(a, b)


def test_sync_loss_reaches_faces_not_the_syncnet() -> None:
    torch.manual_seed(0)
    loss_fn = SyncLoss(build_syncnet(TINY_WAV2LIP), TINY_WAV2LIP)
    loss_fn.train()  # a parent module's .train() must not wake the expert
    assert not loss_fn.syncnet.training
    faces = (torch.rand(2, 5, 3, 256, 256) * 2 - 1).requires_grad_(True)
    mels = torch.randn(2, 1, 80, 16)
    loss = loss_fn(faces, mels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert faces.grad is not None and faces.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss_fn.syncnet.parameters())

    probability = loss_fn.probabilities(faces.detach(), mels)
    assert torch.allclose(loss.detach(), -probability.clamp(min=1e-7).log().mean(), atol=1e-6)
    with pytest.raises(ValueError, match="mels must be"):
        loss_fn(faces, torch.randn(2, 1, 80, 52))


def test_binary_cross_entropy_matches_torch_and_stays_finite() -> None:
    p = torch.tensor([0.2, 0.7, 0.5, 0.9])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert torch.allclose(binary_cross_entropy(p, y), F.binary_cross_entropy(p, y))
    edge = torch.tensor([0.0, 1.0], requires_grad=True)
    loss = binary_cross_entropy(edge, torch.tensor([1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(edge.grad).all()  # type: ignore[arg-type]
