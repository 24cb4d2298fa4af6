"""RIFE HDv3 IFNet, warp, mid-frame helpers and the flownet.pkl converter (compat §7.1, 8)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from portrait.errors import WeightsError
from portrait.models.interpolation import IFNet, check_size, midframes, warp
from portrait.weights.rife import convert_flownet

TINY = 8  # IFNet channels of the tiny test model
SIZE = 32  # frame height/width (multiple of 16)


def _tiny(seed: int = 0, scale: float = 0.2, teacher: bool = True) -> IFNet:
    """Tiny IFNet with every parameter redrawn as N(0, scale²) (so flows and masks are non-trivial)."""
    torch.manual_seed(seed)
    model = IFNet(channels=TINY, teacher=teacher).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def _frames(n: int, seed: int = 3, h: int = SIZE, w: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _zero_heads(model: IFNet, flow_bias: tuple[float, ...] = (0, 0, 0, 0), mask_bias: float = 0.0) -> None:
    """Make every student block output a constant flow / mask logit (last transposed convs zeroed)."""
    with torch.no_grad():
        for block in (model.block0, model.block1, model.block2):
            block.conv1[2].weight.zero_()
            block.conv1[2].bias.copy_(torch.tensor(flow_bias))
            block.conv2[2].weight.zero_()
            block.conv2[2].bias.fill_(mask_bias)


def _release_keys() -> set[str]:
    """The flownet.pkl key pattern of spec section 8 (after stripping ``module.``)."""
    unit = ("0.weight", "0.bias", "1.weight")
    head = ("0.weight", "0.bias", "1.weight", "2.weight", "2.bias")
    keys = set()
    for block in ("block0", "block1", "block2", "block_tea"):
        keys |= {f"{block}.conv0.{i}.{k}" for i in (0, 1) for k in unit}
        keys |= {f"{block}.convblock{j}.{i}.{k}" for j in range(4) for i in (0, 1) for k in unit}
        keys |= {f"{block}.{conv}.{k}" for conv in ("conv1", "conv2") for k in head}
    return keys


# ------------------------------------------------------------------------------------ release sizes


def test_release_size_and_keys_on_meta() -> None:
    with torch.device("meta"):
        model = IFNet()
    state = model.state_dict()
    assert len(state) == 160
    assert sum(p.numel() for p in model.parameters()) == 3_038_015
    assert set(state) == _release_keys()
    assert state["block0.conv0.0.0.weight"].shape == (45, 11, 3, 3)
    assert state["block0.conv1.0.weight"].shape == (90, 45, 4, 4)
    assert state["block0.conv1.2.weight"].shape == (45, 4, 4, 4)
    assert state["block0.conv2.2.weight"].shape == (45, 1, 4, 4)
    assert state["block_tea.conv0.0.0.weight"].shape == (45, 14, 3, 3)
    assert state["block1.convblock3.1.1.weight"].shape == (90,)


def test_without_teacher_and_bad_width() -> None:
    with torch.device("meta"):
        model = IFNet(teacher=False)
    assert not any(k.startswith("block_tea.") for k in model.state_dict())
    assert len(model.state_dict()) == 120
    with pytest.raises(ValueError, match="even"):
        IFNet(channels=9)


# ----------------------------------------------------------------------------------------- warp


def test_warp_zero_flow_is_identity() -> None:
    image = _frames(2)
    out = warp(image, torch.zeros(2, 2, SIZE, SIZE))
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)


def test_warp_constant_flow_shifts_with_border_padding() -> None:
    image = _frames(1, h=16, w=24)
    flow = torch.zeros(1, 2, 16, 24)
    flow[:, 0] = 2.0  # sample 2 px to the right
    flow[:, 1] = -1.0  # and 1 px up
    out = warp(image, flow)
    # interior: out[y, x] = image[y - 1, x + 2]
    torch.testing.assert_close(out[..., 1:, :-2], image[..., :-1, 2:], atol=1e-5, rtol=0)
    # right border clamps to the last column, top border to the first row
    torch.testing.assert_close(out[..., 1:, -1], image[..., :-1, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., 0, :-2], image[..., 0, 2:], atol=1e-5, rtol=0)


def test_warp_half_pixel_is_bilinear() -> None:
    image = _frames(1, h=8, w=8)
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = 0.5
    out = warp(image, flow)
    torch.testing.assert_close(out[..., :-1], (image[..., :-1] + image[..., 1:]) / 2, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- IFNet


def test_forward_shape_and_range() -> None:
    model = _tiny()
    a, b = _frames(2, seed=1), _frames(2, seed=2)
    with torch.no_grad():
        out = model(a, b)
    assert out.shape == (2, 3, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6  # convex blend of warped [0, 1] frames
    with torch.no_grad():
        wide = model(_frames(1, h=16, w=48), _frames(1, seed=4, h=16, w=48))
    assert wide.shape == (1, 3, 16, 48)


def test_forward_is_symmetric_in_its_inputs() -> None:
    """Swapping the frames swaps flow halves and negates the mask at every level, so the blend is equal."""
    model = _tiny(seed=5, scale=0.3)
    a, b = _frames(1, seed=6), _frames(1, seed=7)
    with torch.no_grad():
        ab, ba = model(a, b), model(b, a)
        x = torch.cat((a, b, torch.zeros(1, 1, SIZE, SIZE)), 1)
        flow_probe = model.block0(x, torch.zeros(1, 4, SIZE, SIZE), 4)
    assert flow_probe[0].abs().max() > 1e-2  # the random blocks do predict motion
    assert (ab - 0.5 * (a + b)).abs().max() > 1e-3  # ... so the result is not the plain average
    torch.testing.assert_close(ab, ba, atol=1e-5, rtol=0)


def test_zero_heads_identical_frames_give_the_frame() -> None:
    model = _tiny(seed=8)
    _zero_heads(model)
    frame = _frames(2, seed=9)
    with torch.no_grad():
        out = model(frame, frame.clone())
    torch.testing.assert_close(out, frame, atol=1e-5, rtol=0)


def test_zero_heads_blend_is_the_average() -> None:
    model = _tiny(seed=10)
    _zero_heads(model)
    a, b = _frames(1, seed=11), _frames(1, seed=12)
    with torch.no_grad():
        out = model(a, b)
    torch.testing.assert_close(out, (a + b) / 2, atol=1e-5, rtol=0)


def test_first_level_alone_matches_the_spec_formulas() -> None:
    """Only block0 predicts anything (compat §7.1 written out for one level).

    flow F = (f(a, b) + swap(f(b, a))) / 2, mask M = (m(a, b) − m(b, a)) / 2,
    merged = warp(a, F[:, :2])·σ(M) + warp(b, F[:, 2:])·(1 − σ(M)).
    """
    model = _tiny(seed=21, scale=0.3)
    with torch.no_grad():
        for block in (model.block1, model.block2):
            for head in (block.conv1[2], block.conv2[2]):
                head.weight.zero_()
                head.bias.zero_()
        a, b = _frames(1, seed=22), _frames(1, seed=23)
        zero_mask, zero_flow = torch.zeros(1, 1, SIZE, SIZE), torch.zeros(1, 4, SIZE, SIZE)
        f_ab, m_ab = model.block0(torch.cat((a, b, zero_mask), 1), zero_flow, 4)
        f_ba, m_ba = model.block0(torch.cat((b, a, zero_mask), 1), zero_flow, 4)
        flow = (f_ab + torch.cat((f_ba[:, 2:], f_ba[:, :2]), 1)) / 2
        weight = torch.sigmoid((m_ab - m_ba) / 2)
        expected = warp(a, flow[:, :2]) * weight + warp(b, flow[:, 2:]) * (1 - weight)
        out = model(a, b)
    assert (weight - 0.5).abs().max() > 0.05  # the mask is far from neutral
    assert (flow[:, :2] - flow[:, 2:]).abs().max() > 0.1  # the two flows differ
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_constant_block_flow_accumulates_over_scales() -> None:
    """Each level adds its flow × scale: a block flow of (1, 0, 1, 0) totals 4 + 2 + 1 = 7 px."""
    model = _tiny(seed=13)
    _zero_heads(model, flow_bias=(1.0, 0.0, 1.0, 0.0), mask_bias=3.0)  # m0 − m1 cancels: mask stays 0
    a, b = _frames(1, seed=14), _frames(1, seed=15)
    with torch.no_grad():
        out = model(a, b)
    expected = (a[..., 7:] + b[..., 7:]) / 2
    torch.testing.assert_close(out[..., : SIZE - 7], expected, atol=1e-5, rtol=0)


def test_scale_list_and_size_checks() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(_frames(1, h=40, w=32), _frames(1, h=40, w=32))
    with pytest.raises(ValueError, match="equal shape"):
        model(_frames(1), _frames(1, h=16))
    with pytest.raises(ValueError, match="one scale per student block"):
        model(_frames(1), _frames(1), scale_list=(2, 1))
    check_size(64, 128)
    check_size(8, 8, (2, 1, 0.5))
    with pytest.raises(ValueError):
        check_size(8, 8)


# ------------------------------------------------------------------------------------- helpers


def test_interpolated_keeps_originals_at_even_positions() -> None:
    from portrait.generate import interpolated  # the render's way to insert midframes

    model = _tiny(seed=16)
    frames = _frames(4, seed=17)
    out = torch.cat(list(interpolated(iter([frames]), model, hold_last=False)))
    assert out.shape == (7, 3, SIZE, SIZE)
    assert torch.equal(out[0::2], frames)
    assert out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        second_mid = model(frames[1:2], frames[2:3]).clamp(0, 1)
    # batching changes the conv reduction order a little (float32 round-off amplified by the flows)
    torch.testing.assert_close(out[3:4], second_mid, atol=1e-4, rtol=0)
    batched = midframes(model, frames[:-1], frames[1:], batch=2)
    torch.testing.assert_close(batched, midframes(model, frames[:-1], frames[1:], batch=1), atol=1e-4, rtol=0)


def test_interpolated_single_frame_and_errors() -> None:
    from portrait.generate import interpolated

    model = _tiny()
    one = _frames(1)
    assert torch.equal(torch.cat(list(interpolated(iter([one]), model, hold_last=False))), one)
    with pytest.raises(ValueError):
        midframes(model, _frames(2), _frames(3))


def test_midframes_clamps_and_keeps_input_dtype() -> None:
    model = _tiny(seed=18)
    _zero_heads(model)
    a = torch.full((2, 3, SIZE, SIZE), 1.5, dtype=torch.float64)
    out = midframes(model, a, a)
    assert out.dtype == torch.float64 and out.shape == a.shape
    assert torch.equal(out, torch.ones_like(a))


# ------------------------------------------------------------------------------------ converter


def _release_file(tmp_path: Path, model: IFNet, extra: dict | None = None, drop: str | None = None) -> Path:
    state = collections.OrderedDict((f"module.{k}", v.clone()) for k, v in model.state_dict().items())
    if drop is not None:
        del state[f"module.{drop}"]
    state.update(extra or {})
    path = tmp_path / "flownet.pkl"
    torch.save(state, path)
    return path


def test_convert_round_trip(tmp_path: Path) -> None:
    model = _tiny(seed=19)
    src = _release_file(tmp_path, model, extra={"epoch_counter": torch.tensor(3)})  # no module.: ignored
    dst = tmp_path / "interpolation"
    convert_flownet(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = IFNet.from_pretrained(dst)
    assert loaded.config.channels == TINY and loaded.config.teacher is True
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    frames = _frames(2, seed=20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames[:1], frames[1:]), model(frames[:1], frames[1:]))


def test_convert_missing_key_is_named(tmp_path: Path) -> None:
    src = _release_file(tmp_path, _tiny(), drop="block_tea.conv2.2.bias")
    with pytest.raises(WeightsError, match=r"missing keys: block_tea\.conv2\.2\.bias"):
        convert_flownet(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    model = _tiny()
    src = _release_file(tmp_path, model, extra={"module.block0.extra.weight": torch.zeros(2)})
    with pytest.raises(WeightsError, match=r"unexpected keys: block0\.extra\.weight"):
        convert_flownet(src, tmp_path / "out")
    src = _release_file(tmp_path, model, extra={"module.block1.conv1.2.bias": torch.zeros(5)})
    with pytest.raises(WeightsError, match=r"block1\.conv1\.2\.bias \(5,\) != \(4,\)"):
        convert_flownet(src, tmp_path / "out")


_CALLS: list[str] = []


def _record(tag: str) -> str:
    _CALLS.append(tag)
    return tag


class _Payload:
    """Unpickles by calling ``_record``: ``weights_only`` must refuse to run it."""

    def __reduce__(self):
        return (_record, ("executed",))


def test_convert_refuses_pickled_objects(tmp_path: Path) -> None:
    src = tmp_path / "flownet.pkl"
    torch.save({"module.block0.conv0.0.0.weight": _Payload()}, src)
    with pytest.raises(WeightsError, match="weights_only=True"):
        convert_flownet(src, tmp_path / "out")
    assert _CALLS == []
    torch.save({"module.block0.conv0.0.0.weight": 3}, src)  # allowed by weights_only, but not a tensor
    with pytest.raises(WeightsError, match="not a tensor"):
        convert_flownet(src, tmp_path / "out")
    torch.save({"block0.conv0.0.0.weight": torch.zeros(4, 11, 3, 3)}, src)
    with pytest.raises(WeightsError, match="no key contains 'module.'"):
        convert_flownet(src, tmp_path / "out")
