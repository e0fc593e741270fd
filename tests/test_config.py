"""Config validation (one-line errors naming the field), YAML loading and the canonical hash."""

import pytest

from prunelens import config
from prunelens.errors import PrunelensError


def test_defaults_and_hash_ignore_defaults():
    base = config.ExperimentConfig()
    assert base.canonical() == {}
    explicit = config.from_dict({"seed": 0, "pruning": {"fraction": 0.2}, "training": {"lr": 0.05}})
    assert explicit.run_id == base.run_id
    assert config.from_dict({"seed": 1}).run_id != base.run_id


def test_hash_ignores_rounds_name_and_output_dir():
    a = config.from_dict({"pruning": {"rounds": 2}, "name": "a", "output_dir": "x"})
    b = config.from_dict({"pruning": {"rounds": 9}, "name": "b", "output_dir": "y"})
    assert a.run_id == b.run_id


@pytest.mark.parametrize(
    "data, message",
    [
        ({"pruning": {"fraction": 1.3}}, "pruning.fraction: 1.3 is not in (0, 1)"),
        ({"pruning": {"fraction": 0}}, "pruning.fraction: 0 is not in (0, 1)"),
        ({"pruning": {"fractoin": 0.2}}, "pruning.fractoin: unknown field"),
        ({"training": {"optimizer": "rmsprop"}}, "training.optimizer: 'rmsprop'"),
        ({"training": {"lr": -1}}, "training.lr: -1"),
        ({"pruning": {"rounds": -2}}, "pruning.rounds: -2"),
        ({"seed": "abc"}, "seed: 'abc'"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_validation_is_one_line_naming_the_field(data, message):
    with pytest.raises(PrunelensError) as err:
        config.from_dict(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_roundtrip_and_errors(tmp_path):
    cfg = config.from_dict({"seed": 3, "pruning": {"scope": "layerwise"}})
    path = tmp_path / "c.yaml"
    path.write_text(config.dump(cfg))
    assert config.load(path) == cfg
    path.write_text("pruning: {fraction: [\n")
    with pytest.raises(PrunelensError, match="invalid YAML"):
        config.load(path)
    with pytest.raises(PrunelensError, match="config file not found"):
        config.load(tmp_path / "missing.yaml")


def test_with_overrides_revalidates():
    cfg = config.ExperimentConfig().with_overrides(pruning={"rounds": 8})
    assert cfg.pruning.rounds == 8 and cfg.pruning.fraction == 0.2
    with pytest.raises(PrunelensError, match="pruning.rounds"):
        cfg.with_overrides(pruning={"rounds": -1})


def test_retraining_inherits_training_fields():
    cfg = config.from_dict({"training": {"lr": 0.3, "epochs": 9, "optimizer": "adam"}, "retraining": {"epochs": 2}})
    assert (cfg.retraining.lr, cfg.retraining.optimizer, cfg.retraining.epochs) == (0.3, "adam", 2)
    assert config.from_dict({}).retraining is None


def test_rate_sets_round_fraction_and_keeps_rounds_in_hash():
    one = config.from_dict({"pruning": {"rate": 0.75, "rounds": 2}})
    assert one.pruning.round_fraction == pytest.approx(0.5)
    assert one.run_id != config.from_dict({"pruning": {"rate": 0.75, "rounds": 1}}).run_id
    with pytest.raises(PrunelensError, match="either pruning.fraction"):
        config.from_dict({"pruning": {"rate": 0.5, "fraction": 0.3}})


def test_lenses_accept_names_and_stay_out_of_the_hash():
    cfg = config.from_dict({"lenses": ["gradcam", {"name": "gradcam", "options": {"target": "predicted"}}]})
    assert [lens.name for lens in cfg.lenses] == ["gradcam", "gradcam"]
    assert cfg.run_id == config.ExperimentConfig().run_id


@pytest.mark.parametrize(
    "lenses, message",
    [
        ([{"name": "gradcam", "options": {"targt": "label"}}], "lenses[0].options.targt: unknown field"),
        (["gradcam", {"name": "gradcam", "options": {"target": "logits"}}], "lenses[1].options.target: 'logits'"),
        ([{"name": "gradcam", "options": {"backend": "pytorch_grad_cam:Nope"}}], "lenses[0].options.backend"),
        ([{"name": "gradcam", "options": {"variant": "seed_ghosh", "backend": "pytorch_grad_cam:GradCAMPlusPlus"}}], "lenses[0].options"),
        (["telepathy"], "lenses[0].name: unknown lens 'telepathy'"),
    ],
)
def test_lens_options_are_checked_when_the_config_loads(lenses, message):
    with pytest.raises(PrunelensError) as err:
        config.from_dict({"lenses": lenses})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cuda_index_is_checked(monkeypatch):
    import torch

    from prunelens.device import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    check_device("cuda")
    with pytest.raises(PrunelensError, match=r"device: 'cuda:7' is not available on this machine \(1 CUDA device\(s\)\)"):
        check_device("cuda:7")
    with pytest.raises(PrunelensError, match="is not cpu, cuda"):
        check_device("meta")
