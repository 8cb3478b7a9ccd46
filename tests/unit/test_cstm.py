"""The CSTM network: shapes, size checks, the self-readout forward, gradient flow and frozen BatchNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from torch import nn

from helpers import CONFIGS, TINY_CSTM
from scripts.engines import propagate_triplet
from scripts.inferers.propagation import crop_padding, pad_to_multiple
from scripts.networks.cstm import CSTM, build_cstm, stack_memory


def small_net(**kwargs) -> CSTM:
    torch.manual_seed(0)
    return CSTM(**{**TINY_CSTM, **kwargs})


@pytest.fixture(scope="module")
def net() -> CSTM:
    return small_net().eval()


def random_mask(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    labels = torch.randint(0, 4, (b, h, w), generator=torch.Generator().manual_seed(seed))
    return F.one_hot(labels, 4).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("size, t", [((96, 96), 1), ((144, 96), 2), ((96, 144), 3)])
def test_segment_with_t_memory_frames(net: CSTM, size: tuple[int, int], t: int) -> None:
    b, (h, w) = 2, size
    g = torch.Generator().manual_seed(t)
    images = [torch.rand(b, 1, h, w, generator=g) for _ in range(t + 1)]
    with torch.no_grad():
        keys = [net.encode_key(img) for img in images]
        values = [
            net.encode_value(img, random_mask(b, h, w, i), key)
            for i, (img, key) in enumerate(zip(images[:t], keys[:t], strict=True))
        ]
        memory = stack_memory(keys[:t], values)
        logits = net.segment(keys[t], memory)
    assert keys[0].key16.shape == (b, 32, h // 16, w // 16) and keys[0].key8.shape == (b, 32, h // 8, w // 8)
    assert memory.key16.shape == (b, 32, t, h // 16, w // 16)
    assert memory.value16.shape == (b, 32, t, h // 16, w // 16) and memory.value8.shape == (b, 16, t, h // 8, w // 8)
    assert logits.shape == (b, 4, h, w)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size, t", [((50, 61), 1), ((97, 130), 2), ((145, 100), 3)])
def test_odd_sizes_are_padded_to_the_patch_grid_and_cropped_back(net: CSTM, size: tuple[int, int], t: int) -> None:
    """Inputs of any size: pad to a multiple of 48 (at least 96) so that the stride-16 and stride-8 patch grids align."""
    b, (h, w) = 1, size
    g = torch.Generator().manual_seed(10 + t)
    images, pad = pad_to_multiple(torch.rand(b, t + 1, h, w, generator=g), net.size_multiple, net.matcher.min_size)
    padded = images.shape[-2:]
    assert all(s % 48 == 0 and s >= 96 for s in padded) and padded[0] - h < 48 and padded[1] - w < 48
    frames = [images[:, i : i + 1] for i in range(t + 1)]
    with torch.no_grad():
        keys = [net.encode_key(frame) for frame in frames]
        values = [net.encode_value(frames[i], random_mask(b, *padded, i), keys[i]) for i in range(t)]
        logits = crop_padding(net.segment(keys[t], stack_memory(keys[:t], values)), pad)
    assert logits.shape == (b, 4, h, w)
    assert torch.isfinite(logits).all()


def test_logits_depend_on_the_memory_mask(net: CSTM) -> None:
    g = torch.Generator().manual_seed(1)
    memory_image, query_image = torch.rand(1, 1, 96, 96, generator=g), torch.rand(1, 1, 96, 96, generator=g)
    with torch.no_grad():
        key, query = net.encode_key(memory_image), net.encode_key(query_image)
        out = [
            net.segment(query, stack_memory([key], [net.encode_value(memory_image, random_mask(1, 96, 96, s), key)]))
            for s in (0, 1)
        ]
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("size", [(100, 96), (96, 120), (48, 96)])
def test_sizes_off_the_grid_are_rejected(net: CSTM, size: tuple[int, int]) -> None:
    assert net.size_multiple == 48
    with pytest.raises(ValueError, match=r"multiples of 48 and at least 96"):
        net.encode_key(torch.rand(1, 1, *size))


def test_bad_image_and_mask_shapes_are_rejected(net: CSTM) -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net.encode_key(torch.rand(1, 2, 96, 96))
    image = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        key = net.encode_key(image)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        net.encode_value(image, torch.rand(1, 3, 96, 96), key)


def test_forward_is_the_self_readout(net: CSTM) -> None:
    x = torch.cat([torch.rand(2, 1, 96, 144), random_mask(2, 96, 144, 3)], 1)
    with torch.no_grad():
        logits = net(x)
        key = net.encode_key(x[:, :1])
        expected = net.segment(key, stack_memory([key], [net.encode_value(x[:, :1], x[:, 1:], key)]))
    assert logits.shape == (2, 4, 96, 144)
    torch.testing.assert_close(logits, expected)


def test_gradients_reach_encoders_and_decoder() -> None:
    net = small_net().train()
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(2, 3, 1, 96, 96, generator=g)
    masks = torch.randint(0, 4, (2, 3, 96, 96), generator=g)
    logits2, logits3 = propagate_triplet(net, frames, masks[:, 0])
    assert logits2.shape == logits3.shape == (2, 4, 96, 96)
    (F.cross_entropy(logits2, masks[:, 1]) + F.cross_entropy(logits3, masks[:, 2])).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing
    for part in ("key_encoder", "key_proj16", "key_proj8", "value_encoder", "value_fuse16", "value_fuse8", "decoder"):
        grads = [p.grad for name, p in net.named_parameters() if name.startswith(part + ".")]
        assert grads and all(torch.isfinite(gr).all() for gr in grads), part
        assert sum(gr.abs().sum() for gr in grads) > 0, part


def test_frame_3_logits_depend_on_frame_2_through_memory() -> None:
    """Frame 3 reads frame 2's predicted probabilities: changing frame 2's image changes frame 3's logits."""
    net = small_net().eval()
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(1, 3, 1, 96, 96, generator=g)
    mask = torch.randint(0, 4, (1, 96, 96), generator=g)
    other = frames.clone()
    other[:, 1] = torch.rand(1, 1, 96, 96, generator=g)
    with torch.no_grad():
        _, a = propagate_triplet(net, frames, mask)
        _, b = propagate_triplet(net, other, mask)
    assert not torch.allclose(a, b)


def test_encoder_batchnorm_stays_frozen_in_training_mode() -> None:
    net = small_net(encoder_norm="frozen_batch")  # the encoders of the 0.4 weights
    with torch.no_grad():  # give the statistics non-default values, so an update cannot go unnoticed
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    net.train()
    norms = {name: m for name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert norms and all(name.startswith(("key_encoder.", "value_encoder.")) for name in norms)
    assert net.training and net.key_encoder.training and net.value_encoder.training and net.decoder.training
    assert not any(m.training for m in norms.values())
    before = {
        name: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for name, m in norms.items()
    }
    x = torch.cat([torch.rand(2, 1, 96, 96) * 5 + 3, random_mask(2, 96, 96)], 1)
    net(x).sum().backward()
    for name, m in norms.items():
        torch.testing.assert_close(m.running_mean, before[name][0])
        torch.testing.assert_close(m.running_var, before[name][1])
        assert int(m.num_batches_tracked) == before[name][2]


@pytest.mark.parametrize("mode, size", [("plm", (96, 144)), ("dense", (32, 48)), ("dense", (96, 96))])
def test_matching_modes_give_finite_logits(mode: str, size: tuple[int, int]) -> None:
    net = small_net(matching_mode=mode).eval()
    assert net.size_multiple == (48 if mode == "plm" else 16)
    x = torch.cat([torch.rand(1, 1, *size), random_mask(1, *size)], 1)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (1, 4, *size)
    assert torch.isfinite(logits).all()


def test_dense_mode_rejects_sizes_off_its_grid() -> None:
    net = small_net(matching_mode="dense")
    with pytest.raises(ValueError, match="multiples of 16"):
        net.encode_key(torch.rand(1, 1, 40, 48))


@pytest.mark.parametrize("strides", [(16,), (8,)])
def test_single_stride_matching(strides: tuple[int, ...]) -> None:
    net = small_net(matching_strides=strides).eval()
    x = torch.cat([torch.rand(1, 1, 96, 96), random_mask(1, 96, 96)], 1)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (1, 4, 96, 96) and torch.isfinite(logits).all()


def test_full_variant_parameter_count() -> None:
    full = build_cstm("full")
    count = sum(p.numel() for p in full.parameters())
    assert 30_000_000 < count < 60_000_000
    assert full.size_multiple == 48
    small = build_cstm("small")
    assert sum(p.numel() for p in small.parameters()) < count / 10


def test_unknown_variant_and_bad_class_count_are_rejected() -> None:
    with pytest.raises(ValueError, match="huge"):
        build_cstm("huge")
    with pytest.raises(ValueError, match="num_classes"):
        CSTM(num_classes=1, **TINY_CSTM)


def _network_from_config(config: str, **overrides: object) -> CSTM:
    """``network_def`` of a bundle config with overrides, as ``--network_def#top_k 2`` or ``--top_k 2`` would give."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update(overrides)
    torch.manual_seed(0)
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize("config", ["train.json"])  # inference.json builds what its checkpoint records: test_weights.py
def test_config_overrides_change_the_matcher(config: str) -> None:
    default = _network_from_config(config)
    assert (default.matcher.mode, default.matcher.patch_size, default.matcher.top_k) == ("plm", 6, 4)
    assert default.matcher.strides == (16, 8)
    top_k = _network_from_config(config, **{"network_def#top_k": 2})
    assert top_k.matcher.top_k == 2
    top_k.load_state_dict(default.state_dict())  # same weights: K alone changes the logits (9 memory patches at 192)
    x = torch.cat([torch.rand(1, 1, 192, 192, generator=torch.Generator().manual_seed(4)), random_mask(1, 192, 192)], 1)
    with torch.no_grad():
        assert not torch.allclose(top_k.eval()(x), default.eval()(x))
    ablation = _network_from_config(config, matching_mode="dense", patch_size=4, matching_strides=[16])
    assert (ablation.matcher.mode, ablation.matcher.patch_size, ablation.matcher.strides) == ("dense", 4, (16,))
    assert ablation.size_multiple == 16
    # the decoder drops the stride-8 readout: its stride-8 skip takes the key features only
    assert ablation.decoder.up16_8.skip_conv.in_channels == default.key_encoder.channels[1]
    assert default.decoder.up16_8.skip_conv.in_channels > default.key_encoder.channels[1]
