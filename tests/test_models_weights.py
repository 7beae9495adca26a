"""The weights folder: checks, scaffolds, and strict loading (with tiny scaffolded weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lipsync.errors import WeightsError
from lipsync.models.checkpoint import read_state_dict
from lipsync.models.musetalk.loading import load_models
from lipsync.models.musetalk.vae import convert_legacy_vae_keys, to_legacy_vae_keys
from lipsync.models.musetalk.weights import WeightsLayout, check_weights, scaffold_weights
from lipsync.models.weights import UNTRAINED_MARKER, WEIGHTS_MANIFEST, is_untrained

CPU = torch.device("cpu")


@pytest.fixture
def weights_copy(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny weights that a test may damage."""
    return Path(shutil.copytree(tiny_weights, tmp_path / "weights"))


def status_of(root: Path, path: Path) -> tuple[str, str]:
    check = next(f for f in check_weights(root).files if f.path == path)
    return check.status, check.detail


def test_scaffold_layout_is_complete_and_marked(tiny_weights: Path) -> None:
    report = check_weights(tiny_weights)
    assert report.ok, report.format()
    assert report.untrained and is_untrained(tiny_weights)
    assert report.family == "musetalk" and report.title == "MuseTalk v1.0, v1.5"
    for version in ("v1", "v15"):
        for path in WeightsLayout(tiny_weights, version).required_files():
            assert path.is_file(), path
    manifest = json.loads((tiny_weights / WEIGHTS_MANIFEST).read_text())
    assert manifest["format"] == "lipsync-weights"
    assert manifest["models"]["musetalk"] == {
        "size": "tiny",
        "training": {},
        "untrained": True,
        "version": "v15",
    }
    assert not (tiny_weights / UNTRAINED_MARKER).exists()
    unet = json.loads((tiny_weights / "musetalkV15" / "musetalk.json").read_text())
    assert unet["_class_name"] == "UNet2DConditionModel" and unet["in_channels"] == 8


def test_is_untrained_false_without_marker(tmp_path: Path) -> None:
    assert not is_untrained(tmp_path)
    (tmp_path / UNTRAINED_MARKER).write_text('{"untrained": true}')  # scaffolds made before lipsync.json
    assert is_untrained(tmp_path)


def test_check_reports_missing_with_sources(weights_copy: Path) -> None:
    layout = WeightsLayout(weights_copy, "v15")
    layout.unet_weights.unlink()
    report = check_weights(weights_copy)
    assert not report.ok
    assert status_of(weights_copy, layout.unet_weights) == ("missing", "")
    text = report.format()
    assert "missing" in text and "TMElyralab/MuseTalk" in text and "lipsync weights scaffold" in text
    assert check_weights(weights_copy, "v1").ok  # v1.0 alone is still complete


def test_check_detects_truncated_torch_file(weights_copy: Path) -> None:
    path = WeightsLayout(weights_copy, "v1").unet_weights
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    status, detail = status_of(weights_copy, path)
    assert status == "malformed" and "truncated" in detail


def test_check_detects_empty_lfs_pointer_and_garbage(weights_copy: Path) -> None:
    path = WeightsLayout(weights_copy, "v1").vae_weights
    for content, expected in [
        (b"", "empty"),
        (b"version https://git-lfs.github.com/spec/v1\n", "LFS"),
        (b"<html>not found</html>", "not a PyTorch"),
    ]:
        path.write_bytes(content)
        status, detail = status_of(weights_copy, path)
        assert status == "malformed" and expected in detail


def test_check_detects_bad_json_and_wrong_fields(weights_copy: Path) -> None:
    layout = WeightsLayout(weights_copy, "v15")
    layout.unet_config.write_text("{not json")
    assert status_of(weights_copy, layout.unet_config)[0] == "malformed"
    config = json.loads((WeightsLayout(weights_copy, "v1").unet_config).read_text())
    layout.unet_config.write_text(json.dumps(config | {"in_channels": 4}))
    status, detail = status_of(weights_copy, layout.unet_config)
    assert status == "malformed" and "in_channels" in detail
    vae = json.loads(layout.vae_config.read_text())
    layout.vae_config.write_text(json.dumps(vae | {"latent_channels": 16}))
    assert status_of(weights_copy, layout.vae_config) == ("malformed", "latent_channels=16 (expected 4)")


def test_check_accepts_and_validates_safetensors(weights_copy: Path) -> None:
    layout = WeightsLayout(weights_copy, "v1")
    state = read_state_dict(layout.vae_weights)
    layout.vae_weights.unlink()
    target = layout.vae_dir / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, target)
    assert layout.vae_weights == target
    assert status_of(weights_copy, target) == ("present", "")
    load_models(weights_copy, "v1", CPU, torch.float32)  # loads from the safetensors file
    target.write_bytes(target.read_bytes()[:-100])
    status, detail = status_of(weights_copy, target)
    assert status == "malformed" and "truncated" in detail


def test_scaffold_refuses_real_weights(tmp_path: Path) -> None:
    whisper = tmp_path / "whisper"
    whisper.mkdir()
    (whisper / "pytorch_model.bin").write_bytes(b"user's real weights")
    with pytest.raises(WeightsError, match="not overwriting"):
        scaffold_weights(tmp_path, tiny=True)
    assert (whisper / "pytorch_model.bin").read_bytes() == b"user's real weights"


def test_scaffold_may_overwrite_its_own_scaffold(weights_copy: Path) -> None:
    scaffold_weights(weights_copy, tiny=True, versions=("v1",), seed=1)
    assert check_weights(weights_copy).ok


def test_scaffold_writes_legacy_vae_names(tiny_weights: Path) -> None:
    state = read_state_dict(WeightsLayout(tiny_weights, "v1").vae_weights)
    for part in ("encoder", "decoder"):
        for name in ("query", "key", "value", "proj_attn", "group_norm"):
            assert f"{part}.mid_block.attentions.0.{name}.weight" in state
    assert not any(".to_q." in k or ".to_out." in k for k in state)


def test_legacy_vae_conversion_handles_conv_shaped_weights() -> None:
    prefix = "decoder.mid_block.attentions.0"
    legacy = {
        f"{prefix}.query.weight": torch.randn(8, 8, 1, 1),
        f"{prefix}.proj_attn.weight": torch.randn(8, 8),
        f"{prefix}.proj_attn.bias": torch.randn(8),
        f"{prefix}.group_norm.weight": torch.randn(8),
        "decoder.conv_in.weight": torch.randn(8, 4, 3, 3),
    }
    current = convert_legacy_vae_keys(legacy)
    assert sorted(current) == sorted(
        [
            f"{prefix}.to_q.weight",
            f"{prefix}.to_out.0.weight",
            f"{prefix}.to_out.0.bias",
            f"{prefix}.group_norm.weight",
            "decoder.conv_in.weight",
        ]
    )
    assert current[f"{prefix}.to_q.weight"].shape == (8, 8)
    assert torch.equal(current[f"{prefix}.to_q.weight"], legacy[f"{prefix}.query.weight"][:, :, 0, 0])
    assert current["decoder.conv_in.weight"].shape == (8, 4, 3, 3)
    assert convert_legacy_vae_keys(current) == current  # current names pass through
    assert set(to_legacy_vae_keys(current)) == {k for k in legacy}


def test_load_tiny_models(tiny_weights: Path) -> None:
    v1 = load_models(tiny_weights, "v1", CPU, torch.bfloat16)
    v15 = load_models(tiny_weights, "v15", CPU, torch.bfloat16)
    assert v15.version == "v15" and v15.untrained and v15.dtype == torch.bfloat16
    for model in (v15.unet, v15.vae, v15.audio_encoder):
        assert not model.training
        assert all(not p.requires_grad and not p.is_meta and p.device == CPU for p in model.parameters())
    assert v15.unet.conv_in.weight.dtype == torch.bfloat16
    assert v15.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert v15.audio_encoder.conv1.weight.dtype == torch.float32  # whisper stays fp32 on the CPU
    assert not torch.equal(v1.unet.conv_in.weight, v15.unet.conv_in.weight)  # each version its own file
    assert torch.equal(v1.vae.encoder.conv_in.weight, v15.vae.encoder.conv_in.weight)
    # the legacy-named mid-block attention really landed in the current modules
    legacy = read_state_dict(WeightsLayout(tiny_weights, "v1").vae_weights)
    torch.testing.assert_close(
        v1.vae.decoder.mid_block.attentions[0].to_v.weight.float(),
        legacy["decoder.mid_block.attentions.0.value.weight"].to(torch.bfloat16).float(),
    )


def test_load_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_models(tmp_path, "v15", CPU, torch.float32)
    text = str(info.value)
    assert "musetalkV15/unet.pth" in text and "stabilityai/sd-vae-ft-mse" in text
    assert "openai/whisper-tiny" in text and "lipsync weights scaffold" in text


def test_load_is_strict_about_keys(weights_copy: Path) -> None:
    path = WeightsLayout(weights_copy, "v15").unet_weights
    state = read_state_dict(path)
    path.unlink()  # the tensors are memory-mapped from it: never rewrite the file in place
    torch.save({**state, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=r"unexpected \(1\): extra.weight"):
        load_models(weights_copy, "v15", CPU, torch.float32)
    del state["conv_in.bias"]
    path.unlink()
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"missing \(1\): conv_in.bias"):
        load_models(weights_copy, "v15", CPU, torch.float32)


def test_load_is_strict_about_shapes(weights_copy: Path) -> None:
    path = WeightsLayout(weights_copy, "v1").whisper_weights
    state = read_state_dict(path)
    state["model.encoder.conv1.bias"] = torch.zeros(7)
    path.unlink()
    torch.save(state, path)
    with pytest.raises(WeightsError, match="wrong shape"):
        load_models(weights_copy, "v1", CPU, torch.float32)


def test_load_accepts_legacy_torch_format(weights_copy: Path) -> None:
    path = WeightsLayout(weights_copy, "v1").whisper_weights
    state = {k: v.clone() for k, v in read_state_dict(path).items()}
    path.unlink()
    torch.save(state, path, _use_new_zipfile_serialization=False)  # pre-1.6 pickle format: no mmap
    assert status_of(weights_copy, path) == ("present", "")
    models = load_models(weights_copy, "v1", CPU, torch.float32)
    assert torch.equal(models.audio_encoder.conv1.weight, state["model.encoder.conv1.weight"])


def test_load_refuses_pickled_code(weights_copy: Path) -> None:
    path = WeightsLayout(weights_copy, "v1").unet_weights
    path.unlink()
    torch.save({"conv_in.weight": Path("not a tensor")}, path)
    with pytest.raises(WeightsError, match="cannot read"):
        load_models(weights_copy, "v1", CPU, torch.float32)


def test_a_safetensors_file_that_cannot_be_read_is_a_weights_error(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    save_file({"weight": torch.zeros(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:-1000])  # its tensor data cut short
    with pytest.raises(WeightsError, match=f"cannot read {path}") as caught:
        read_state_dict(path)
    assert caught.value.fix == "download the file again"


def test_a_preprocessor_config_with_another_fft_size_is_refused_before_it_is_read(weights_copy: Path) -> None:
    """The feature extractor builds its filter bank from n_fft when the file is read (4e6: 6 GB, 40 s)."""
    path = WeightsLayout(weights_copy, "v15").whisper_preprocessor
    path.write_text(json.dumps(json.loads(path.read_text()) | {"n_fft": 4_000_000}))
    assert status_of(weights_copy, path) == ("malformed", "n_fft=4000000 (expected 400)")
    with pytest.raises(WeightsError, match=r"malformed +whisper/preprocessor_config.json"):
        load_models(weights_copy, "v15", CPU, torch.float32)
