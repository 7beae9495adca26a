"""What makes the stabilized-sync generator fast on a CPU changes nothing it draws: batch norms folded into
the convolutions before them, and G_L's encoder features kept per source frame."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lipsync.models.batch_norm_folding import fold_batch_norms
from lipsync.models.encoder_cache import EncoderCache, entry_bytes, frame_key
from lipsync.models.generator import GenerationRequest
from lipsync.models.stabilized_sync import scaffold
from lipsync.models.stabilized_sync.generator import FACE, IDENTITY, StabilizedSyncGenerator
from lipsync.models.stabilized_sync.generator_net import GeneratorConfig, TalkingFaceGenerator
from lipsync.models.stabilized_sync.mel import silent_mel_window
from lipsync.timing import StageTimes


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def with_random_statistics(network: nn.Module) -> nn.Module:
    """Batch norms that are not the identity, as after training."""
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.2)
    return network.eval()


def test_folding_keeps_the_generator_and_removes_every_batch_norm() -> None:
    network = with_random_statistics(TalkingFaceGenerator(GeneratorConfig.tiny(96)))
    folded = copy.deepcopy(network)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    assert fold_batch_norms(folded) == batch_norms > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    faces = torch.rand(3, 3, 96, 96) * 2 - 1
    audio = torch.rand(3, 512)
    with torch.no_grad():
        torch.testing.assert_close(
            folded(faces, faces, audio), network(faces, faces, audio), atol=1e-5, rtol=0
        )


def test_a_batch_norm_after_an_activation_is_not_folded() -> None:
    sequence = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    network = with_random_statistics(sequence)
    before = copy.deepcopy(network)
    assert fold_batch_norms(network) == 0
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(network(x), before(x))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


def levels(rows: list[int], tag: float = 0.0) -> list[torch.Tensor]:
    """A stand-in encoder output: two levels, row r filled with r + tag."""
    values = torch.tensor(rows, dtype=torch.float32) + tag
    return [values[:, None, None, None].expand(-1, 2, 2, 2).clone(), values[:, None, None, None].clone()]


def test_the_cache_encodes_only_what_it_does_not_hold_and_forgets_the_oldest() -> None:
    keys = [bytes([k]) for k in range(4)]
    per_frame = entry_bytes([t[:1] for t in levels([0])])
    cache = EncoderCache(budget_bytes=3 * per_frame)
    asked: list[list[int]] = []

    def encode(rows: list[int]) -> list[torch.Tensor]:
        asked.append(rows)
        return levels(rows)

    first = cache.encoded(keys[:2], encode)
    assert asked == [[0, 1]] and (cache.hits, cache.misses) == (0, 2)
    assert torch.equal(first[1][:, 0, 0, 0], torch.tensor([0.0, 1.0]))
    again = cache.encoded([keys[1], keys[2], keys[0]], encode)
    assert asked[-1] == [1]  # only key 2 (row 1 of this batch) was new
    assert torch.equal(again[1][:, 0, 0, 0], torch.tensor([1.0, 1.0, 0.0]))  # key 2 holds what row 1 got
    cache.encoded([keys[3]], encode)  # a 4th frame: the least recently used (key 1) goes
    assert len(cache) == 3 and cache.bytes == 3 * per_frame
    cache.encoded([keys[1]], encode)
    assert asked[-1] == [0]
    assert not cache.fill([bytes([9]), bytes([8])], lambda rows: levels(rows))  # fill never pushes out
    assert len(cache) == 3


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> StabilizedSyncGenerator:
    root: Path = tmp_path_factory.mktemp("weights")
    scaffold(root, tiny=True)
    return StabilizedSyncGenerator.from_pretrained(root, torch.device("cpu"), torch.float32)


def test_faces_from_kept_features_equal_faces_computed_afresh(generator: StabilizedSyncGenerator) -> None:
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    identity = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    mels = np.repeat(silent_mel_window()[None], 5, axis=0) + rng.normal(0, 1, (5, 1, 80, 16)).astype(
        np.float32
    )

    def faces(rows: list[int]) -> np.ndarray:
        prepared = {FACE: crops[rows], IDENTITY: identity[rows]}
        return generator.generate(GenerationRequest(prepared, {}, mels[rows]), StageTimes())

    generator.encoder_cache.clear()
    fresh = faces([0, 1, 2, 3])
    generator.encoder_cache.clear()
    faces([2])  # a lone miss, then a batch mixing kept and new frames
    generator.prime({FACE: crops, IDENTITY: identity}, [0, 4], {})
    assert len(generator.encoder_cache) == 3
    misses = generator.encoder_cache.misses
    mixed = faces([0, 1, 2, 3])
    assert generator.encoder_cache.misses == misses + 2  # frames 1 and 3
    assert np.array_equal(mixed, fresh)
    assert frame_key(identity[0], crops[0]) != frame_key(identity[1], crops[0])
