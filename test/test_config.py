"""Configuration files: YAML overrides typed defaults; unknown keys and wrong types name the key."""

import pytest

from clip2scene_core.config import Config, ConfigError, load_config, merge


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    assert load_config().train.lr == 2e-3 and load_config().clip.image_size == (224, 416)
    config = load_config(write(tmp_path, "train: {lr: 1, sweeps: 2}\nclip: {image_size: [224, 448]}\n"
                                         "student: {preset: tiny}\n"))
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float) and config.train.sweeps == 2
    assert config.clip.image_size == (224, 448) and config.student.preset == "tiny"
    assert config.train.momentum == 0.9  # untouched defaults stay
    merged = merge(config, {"train": {"epochs": 3}, "device": "cpu"})
    assert merged.train.epochs == 3 and merged.train.lr == 1.0 and merged.device == "cpu"
    assert load_config(write(tmp_path, "")) == Config()


@pytest.mark.parametrize("text, message", [
    ("train: {learning_rate: 0.1}", r"unknown config key\(s\) train.learning_rate"),
    ("trian: {lr: 0.1}", r"unknown config key\(s\) trian"),
    ("train: {epochs: ten}", "train.epochs: expected int, got str"),
    ("train: {augment: 1}", "train.augment: expected bool, got int"),
    ("clip: {image_size: [224]}", "clip.image_size: expected 2 values"),
    ("train: {semantic_loss: mse}", "train.semantic_loss must be one of infonce, cross_entropy, symmetric"),
    ("student: {preset: huge}", "student.preset must be one of"),
    ("train: [1, 2]", "train: expected a mapping"),
    ("train: {lr: 0.1", "not valid YAML"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_and_cli_exit_status(tmp_path, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    from clip2scene_core.cli import main
    status = main(["evaluate", "--mode", "teacher", "--teacher", "labels", "--data", "synthetic:frames=1",
                   "--config", str(write(tmp_path, "teacher: {text_encodr: hash}"))])
    assert status == 2 and "teacher.text_encodr" in capsys.readouterr().err
