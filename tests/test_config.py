import dataclasses

import pytest

from rnnjax import config as config_lib


def test_presets():
  t = config_lib.get_config("tutorial")
  # The original tutorial, exactly.
  assert (t.hidden_size, t.batch_size, t.learning_rate, t.epochs, t.schedule,
          t.grad_clip_norm, t.optimizer) == (256, 100, 1e-3, 13, "constant", 0.0, "adam")
  d = config_lib.get_config("default")
  assert d.schedule == "cosine" and d.grad_clip_norm > 0
  assert config_lib.get_config("tiny").hidden_size < 32


def test_frozen_and_replace():
  c = config_lib.get_config("tiny")
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.epochs = 3
  c2 = c.replace(epochs=3)
  assert (c.epochs, c2.epochs) == (1, 3)
  assert config_lib.Config.from_dict(c2.to_dict()) == c2


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 0), ("batch_size", -1), ("epochs", 0), ("learning_rate", 0.0),
    ("schedule", "linear"), ("data_source", "hub"), ("grad_clip_norm", -1.0),
    ("augment_shift", -1), ("augment_shift", 14), ("steps_per_call", 0)])
def test_invalid_values_rejected(field, value):
  with pytest.raises(ValueError, match=field):
    config_lib.get_config("tiny").replace(**{field: value})


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'big'"):
    config_lib.get_config("big")


def test_steps_per_epoch():
  assert config_lib.get_config("tutorial").steps_per_epoch == 600
  assert config_lib.get_config("tutorial").replace(batch_size=128).steps_per_epoch == 468


def test_shape_differences():
  old = config_lib.get_config("tutorial").to_dict()
  new = config_lib.get_config("tutorial").replace(hidden_size=128, learning_rate=0.1)
  assert config_lib.shape_differences(old, new) == [
      "hidden_size: 256 in the workdir, 128 now"]
