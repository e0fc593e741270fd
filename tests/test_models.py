"""Model registry: every network builds, parameter counts match the papers, weights files load or fail cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tv_models

from prunelens.config import ModelConfig
from prunelens.errors import PrunelensError
from prunelens.models import MODELS, build_model, classifier_name
from prunelens.models.zoo import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, TORCHVISION_MIN_SIZE, efficientnet_lite0_weights

SMALL_SIZE = {"lenet_300_100": 28, "conv2": 16, "conv4": 16, "conv6": 16}
"""Input side per model for the build test; the rest use max(32, their minimum)."""


def build(name: str, num_classes: int = 7, in_channels: int = 3, size: int = 32, **options) -> nn.Module:
    return build_model(ModelConfig(name=name, options=options), num_classes, in_channels, (size, size))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(c_in: int, c_out: int) -> int:
    """Parameters of a 3×3 conv with bias."""
    return 9 * c_in * c_out + c_out


def fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


BUILD_CASES = [
    (name, in_channels)
    for name in MODELS.names()
    for in_channels in ((1,) if name in TORCHVISION_MIN_SIZE else (1, 3))
]
"""torchvision models with 3 channels are torchvision's own (and covered by the weights tests below): 1 only."""


@pytest.mark.parametrize(("name", "in_channels"), BUILD_CASES)
def test_every_model_gives_logits(name: str, in_channels: int) -> None:
    size = SMALL_SIZE.get(name, max(32, TORCHVISION_MIN_SIZE.get(name, 0)))
    model = build(name, in_channels=in_channels, size=size).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    head = model.get_submodule(classifier_name(model))
    assert isinstance(head, nn.Linear) and head.out_features == 7


def test_lenet_300_100_parameter_count() -> None:
    model = build("lenet_300_100", num_classes=10, in_channels=1, size=28)
    assert n_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


@pytest.mark.parametrize(
    ("name", "widths", "paper_total_m", "paper_conv_k"),
    [("conv2", [64, 64], 4.3, 38), ("conv4", [64, 64, 128, 128], 2.4, 260), ("conv6", [64, 64, 128, 128, 256, 256], 2.3, 1100)],
)
def test_conv_n_parameter_counts(name: str, widths: list[int], paper_total_m: float, paper_conv_k: int) -> None:
    """Frankle & Carbin Fig. 2 (32×32 RGB, 10 classes). The paper prints 1.7M for Conv-6, which its own layer
    list contradicts (4·4·256·256 fc weights + 1.1M conv weights = 2.26M), so Conv-6 is checked at 2.3M."""
    model = build(name, num_classes=10, in_channels=3, size=32)
    convs = sum(conv(c_in, c_out) for c_in, c_out in zip([3, *widths], widths))
    side = 32 // 2 ** (len(widths) // 2)
    assert n_params(model) == convs + fc(side * side * widths[-1], 256) + fc(256, 256) + fc(256, 10)
    assert round(n_params(model) / 1e6, 1) == paper_total_m
    conv_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert abs(conv_weights / 1e3 - paper_conv_k) / paper_conv_k < 0.05


@pytest.mark.parametrize("name", ["cifar_resnet", "cifar_resnet_20"])
def test_cifar_resnet_20_matches_openlth(name: str) -> None:
    assert n_params(build(name, num_classes=10)) == 272_474  # OpenLTH cifar_resnet_20 (1×1 conv + BN shortcuts)


def test_cifar_vgg_16_matches_openlth() -> None:
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    hand = sum(conv(c_in, c_out) + 2 * c_out for c_in, c_out in zip([3, *widths], widths)) + fc(512, 10)
    assert n_params(build("cifar_vgg_16", num_classes=10)) == hand == 14_728_266


def test_width_option_shrinks_models() -> None:
    assert n_params(build("conv4", width=0.25)) < n_params(build("conv4")) / 10
    assert n_params(build("cifar_resnet", depth=8, width=4)) < 10_000


def test_init_is_kaiming_with_zero_bias() -> None:
    model = build("conv2", num_classes=10, size=32)
    first = model.features[0]
    assert torch.all(first.bias == 0)
    assert first.weight.std().item() == pytest.approx((2 / 27) ** 0.5, rel=0.1)


@pytest.mark.parametrize(("name", "options"), [("conv2", {"width": 0.25}), ("cifar_resnet_20", {"width": 4}), ("cifar_vgg_11", {"width": 0.25})])
def test_state_dict_round_trip(name: str, options: dict, tmp_path: Path) -> None:
    model = build(name, **options)
    model.train()(torch.randn(4, 3, 32, 32))  # move BN running stats away from their defaults
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = build_model(ModelConfig(name=name, weights=path, options=options), 7, 3, (32, 32))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_with_wrong_shapes_fail_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "narrow.pt"
    torch.save(build("conv2", width=0.25).state_dict(), path)
    with pytest.raises(PrunelensError, match="narrow.pt.*shape mismatch") as err:
        build_model(ModelConfig(name="conv2", weights=path, options={"width": 0.5}), 7, 3, (32, 32))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04" + bytes(100)])
def test_corrupted_weights_fail_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(PrunelensError, match="broken.pt") as err:
        build_model(ModelConfig(name="lenet_300_100", weights=path), 7, 1, (28, 28))
    assert "\n" not in str(err.value)


def test_truncated_torchvision_weights_fail_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(tv_models.resnet18(weights=None).state_dict(), path)
    path.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(PrunelensError, match="resnet18.pth"):
        build_model(ModelConfig(name="resnet18", weights=path), 7, 3, (32, 32))


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(tv_models.resnet18(weights=None).state_dict(), path)
    return path


def test_torchvision_weights_load_before_new_head(resnet18_file: Path) -> None:
    state = torch.load(resnet18_file, weights_only=True)
    model = build_model(ModelConfig(name="resnet18", weights=resnet18_file), 7, 3, (32, 32))
    assert model.fc.out_features == 7 and model.fc.in_features == 512
    own = model.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert set(own) == set(state) and len(backbone) == len(state) - 2
    assert all(torch.equal(own[k], state[k]) for k in backbone)


def test_torchvision_pretrained_stem_adapts_to_grey(resnet18_file: Path) -> None:
    rgb = torch.load(resnet18_file, weights_only=True)["conv1.weight"]
    model = build_model(ModelConfig(name="resnet18", weights=resnet18_file), 1000, 1, (32, 32))
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.conv1.weight, rgb.sum(1, keepdim=True), atol=1e-6)
    assert model.fc.out_features == 1000


def test_torchvision_weights_of_another_head_fail(tmp_path: Path) -> None:
    path = tmp_path / "ten_class.pth"
    torch.save(tv_models.resnet18(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(PrunelensError, match="ten_class.pth.*fc.weight"):
        build_model(ModelConfig(name="resnet18", weights=path), 10, 3, (32, 32))


def test_googlenet_weights_with_aux_heads_load(tmp_path: Path) -> None:
    path = tmp_path / "googlenet.pth"
    torch.save(tv_models.googlenet(weights=None, aux_logits=True, init_weights=True).state_dict(), path)
    model = build_model(ModelConfig(name="googlenet", weights=path), 7, 3, (32, 32))
    assert model.aux1 is None and model.transform_input
    assert torch.equal(model.conv1.conv.weight, torch.load(path, weights_only=True)["conv1.conv.weight"])


def test_efficientnet_lite0_loads_shipped_weights() -> None:
    shipped = torch.load(efficientnet_lite0_weights(), weights_only=True)
    model = build("efficientnet_lite0", size=64).eval()
    assert torch.equal(model._conv_stem.weight, shipped["_conv_stem.weight"])
    assert torch.equal(model._bn1.running_var, shipped["_bn1.running_var"])
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    scratch = build("efficientnet_lite0", size=64, pretrained=False)
    assert not torch.equal(scratch._conv_stem.weight, shipped["_conv_stem.weight"])


def test_efficientnet_lite0_predicts_a_cat() -> None:
    """The shipped ImageNet weights, normalised as documented, recognise scikit-image's cat photo."""
    data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(data.chelsea().copy()).permute(2, 0, 1).float() / 255  # 300×451 RGB
    image = nn.functional.interpolate(image[None, :, :, 75:375], size=(224, 224), mode="bilinear", antialias=True)
    image = (image - torch.tensor(EFFICIENTNET_LITE_MEAN).view(3, 1, 1)) / torch.tensor(EFFICIENTNET_LITE_STD).view(3, 1, 1)
    model = build("efficientnet_lite0", num_classes=1000, size=224).eval()
    with torch.no_grad():
        probs = model(image).softmax(1)[0]
    assert probs.argmax().item() in range(281, 286)  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert probs[281:286].sum() > 0.5


@pytest.mark.parametrize(("name", "expected"), [("lenet_300_100", "fc"), ("conv2", "fc"), ("resnet18", "fc"), ("vgg11", "classifier.6")])
def test_classifier_name(name: str, expected: str) -> None:
    assert classifier_name(build(name, size=32)) == expected


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(PrunelensError, match=r"unknown model 'resnet9000'.*conv2.*resnet18"):
        build("resnet9000")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("conv2", {"depth": 3}, r"model\.options\.depth: unknown option for model 'conv2' \(known: width\)"),
        ("resnet18", {"width": 2}, r"model\.options\.width: unknown option .*known: none"),
        ("cifar_resnet", {"depth": 21}, r"model\.options\.depth: 21 is not 6n\+2"),
        ("cifar_resnet", {"depth": "20"}, r"model\.options\.depth: expected int"),
        ("conv4", {"width": 0}, r"model\.options\.width: 0.0 is not in \(0, 16\]"),
        ("conv2", {"width": 1e9}, r"model\.options\.width: 1000000000.0 is not in \(0, 16\]"),
        ("cifar_vgg", {"depth": 12}, r"model\.options\.depth: 12 is not one of"),
        ("efficientnet_lite0", {"pretrained": "yes"}, r"model\.options\.pretrained: expected bool"),
    ],
)
def test_bad_options(name: str, options: dict, message: str) -> None:
    with pytest.raises(PrunelensError, match=message):
        build(name, **options)


@pytest.mark.parametrize(("name", "size", "minimum"), [("inception_v3", 64, 75), ("conv6", 7, 8), ("cifar_vgg_16", 8, 16)])
def test_too_small_inputs_are_refused(name: str, size: int, minimum: int) -> None:
    with pytest.raises(PrunelensError, match=rf"{name}.*at least {minimum}×{minimum}"):
        build(name, size=size)
