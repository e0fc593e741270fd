"""Training loop pieces: LR schedules, batching from any step, augmentation, evaluation."""

import math

import pytest
import torch
from torch import nn

from prunelens.config import TrainingConfig
from prunelens.data.base import TensorSplit
from prunelens.data.loader import Loader, augment
from prunelens.seeding import generator
from prunelens.train import evaluate, lr_factor, train


def split(n=50):
    gen = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=gen), torch.arange(n) % 3)


@pytest.mark.parametrize(
    "cfg, step, expected",
    [
        (TrainingConfig(schedule="constant"), 57, 1.0),
        (TrainingConfig(schedule="step", milestones=[2, 4], gamma=0.1), 19, 1.0),  # epoch 1
        (TrainingConfig(schedule="step", milestones=[2, 4], gamma=0.1), 20, 0.1),  # epoch 2
        (TrainingConfig(schedule="step", milestones=[2, 4], gamma=0.1), 45, 0.01),
        (TrainingConfig(schedule="exponential", gamma=0.5), 35, 0.125),
        (TrainingConfig(schedule="cosine"), 50, 0.5),
        (TrainingConfig(schedule="cosine", warmup_steps=10), 4, 0.5 * (1 + math.cos(math.pi * 4 / 100)) * 0.5),
    ],
)
def test_lr_factor(cfg, step, expected):
    # 10 steps per epoch, 100 steps in all
    assert lr_factor(step, cfg, 10, 100) == pytest.approx(expected)


def test_epoch_from_any_step_equals_tail_of_full_epoch():
    loader = Loader(split(), 8, mean=(0.5,), std=(0.25,), shuffle=True, seed=3, augment=True)
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start=4))
    assert len(full) == 7 and len(tail) == 3
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(full[0][1], list(loader.epoch(3))[0][1])  # a new order each epoch


def test_normalisation():
    s = split()
    loader = Loader(s, 50, mean=(0.5,), std=(0.25,))
    x, y = next(loader.epoch())
    assert torch.allclose(x, (s.images.float() / 255 - 0.5) / 0.25, atol=1e-6)
    assert torch.equal(y, s.labels)


def test_augment_crops_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    out = augment(x, generator(0, "augment"), pad=2)
    assert out.shape == x.shape
    for i in range(2):  # every output is a shifted (possibly flipped) window of the zero-padded input
        padded = nn.functional.pad(x[i], (2, 2, 2, 2))
        windows = [padded[:, r : r + 4, c : c + 4] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_training_from_step_k_continues_identically():
    """Training 0→T equals training 0→k, then k→T with a fresh optimiser when the optimiser is stateless (plain SGD)."""
    cfg = TrainingConfig(optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.1, epochs=2, schedule="cosine")
    loader = Loader(split(), 8, mean=(0.5,), std=(0.25,), shuffle=True, seed=1)
    torch.manual_seed(0)
    a = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    b = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    b.load_state_dict(a.state_dict())
    total = 2 * len(loader)
    train(a, loader, cfg, None, start_step=0, end_step=total)
    train(b, loader, cfg, None, start_step=0, end_step=5)
    train(b, loader, cfg, None, start_step=5, end_step=total)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_evaluate_top1_top5():
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.arange(6.0, 0.0, -1.0).expand(len(x), 6)  # ranks classes 0 > 1 > … > 5

    s = TensorSplit(torch.zeros(4, 1, 2, 2), torch.tensor([0, 0, 1, 5]))
    out = evaluate(Fixed(), Loader(s, 3, mean=(0.0,), std=(1.0,)))
    assert out["top1"] == 0.5 and out["top5"] == 0.75  # label 5 is ranked sixth
    assert out["loss"] == pytest.approx(float(nn.functional.cross_entropy(Fixed()(torch.zeros(4)), s.labels)))


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))


def trained(cfg: TrainingConfig) -> tuple[nn.Module, dict[str, float]]:
    model = conv_net()
    fit = train(model, Loader(split(), 10, mean=(0.5,), std=(0.25,), shuffle=True, seed=1), cfg, None, start_step=0, end_step=10)
    return model, fit


def test_channels_last_trains_the_same_weights_and_stores_them_contiguous():
    plain, _ = trained(TrainingConfig(epochs=2, lr=0.05))
    fast, _ = trained(TrainingConfig(epochs=2, lr=0.05, channels_last=True))
    for p, q in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
        assert q.is_contiguous()


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights():
    seen = []
    model = conv_net()
    model[3].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    cfg = TrainingConfig(epochs=2, lr=0.05, precision="bf16")
    fit = train(model, Loader(split(), 10, mean=(0.5,), std=(0.25,), shuffle=True, seed=1), cfg, None, start_step=0, end_step=10)
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _, reference = trained(TrainingConfig(epochs=2, lr=0.05))
    assert fit["train_loss"] == pytest.approx(reference["train_loss"], rel=0.05)  # bf16 keeps ~3 significant digits


def test_compiled_training_equals_eager():
    eager, fit_eager = trained(TrainingConfig(epochs=2, lr=0.05))
    compiled, fit_compiled = trained(TrainingConfig(epochs=2, lr=0.05, compile=True))
    for p, q in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    assert fit_compiled["train_loss"] == pytest.approx(fit_eager["train_loss"], rel=1e-5)
