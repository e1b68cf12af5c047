import dataclasses
import re
import types

import pytest

from rnnjax import presets
from rnnjax import config as config_lib


def test_presets():
  t = presets.get("tutorial")
  # The original tutorial, exactly.
  assert (t.hidden_size, t.batch_size, t.learning_rate, t.epochs, t.schedule,
          t.grad_clip_norm, t.optimizer) == (256, 100, 1e-3, 13, "constant", 0.0, "adam")
  d = presets.get("default")
  assert d.schedule == "cosine" and d.grad_clip_norm > 0
  assert presets.get("tiny").hidden_size < 32


def test_frozen_and_replace():
  c = presets.get("tiny")
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
    presets.get("tiny").replace(**{field: value})


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'big'"):
    presets.get("big")


def test_steps_per_epoch():
  # 60,000 training images, the first 5,000 held out for validation: 55,000 to train on.
  assert presets.get("tutorial").steps_per_epoch == 550
  assert presets.get("tutorial").replace(batch_size=128).steps_per_epoch == 429
  assert presets.get("tutorial").replace(validation_size=0).steps_per_epoch == 600


def test_the_validation_split_cannot_change_on_resume():
  old = presets.get("tutorial").to_dict()
  assert config_lib.shape_differences(old, presets.get("tutorial")) == []
  diffs = config_lib.shape_differences(old, presets.get("tutorial").replace(
      validation_size=0))
  assert diffs == ["validation_size: 5000 in the workdir, 0 now (the validation images must "
                   "never be trained on)"]
  del old["validation_size"]  # a workdir from before the split: it trained on all 60,000
  assert config_lib.shape_differences(old, presets.get("tutorial"))[0].startswith(
      "validation_size: 0 in the workdir, 5000 now")


def test_shape_differences():
  old = presets.get("tutorial").to_dict()
  new = presets.get("tutorial").replace(hidden_size=128, learning_rate=0.1)
  assert config_lib.shape_differences(old, new) == [
      "hidden_size: 256 in the workdir, 128 now"]


def _edges(kind, spec):
  """(accepted, rejected) values at a field's bounds, from its metadata."""
  step = 1 if kind is int else 1e-9
  ok, bad = [], []
  for bound, open_, sign in ((spec["low"], spec["open_low"], -1),
                             (spec["high"], spec["open_high"], +1)):
    if bound is not None:
      (bad if open_ else ok).append(bound)
      bad.append(bound + sign * step)
  return ok, bad


@pytest.mark.parametrize("field,kind,spec", [
    (f.name, kind, f.metadata) for f, kind, _ in config_lib.fields()
    if kind in (int, float) and f.metadata["low"] is not None])
def test_every_bound_in_the_metadata_is_what_validate_enforces(field, kind, spec):
  """The value at each closed bound is accepted, the one just past it rejected with the
  words the metadata gives; a float field refuses nan and inf."""
  base = presets.get("tiny").replace(optimizer="adamw", schedule="constant")
  ok, bad = _edges(kind, spec)
  words = re.escape(f"{field} must be {config_lib.expected(kind, spec)}, got ")
  for value in ok:  # (num_classes 1 passes the bound, then meets the datasets' 10 classes)
    errors = config_lib.validate(types.SimpleNamespace(**{**base.to_dict(), field: value}))
    assert not [e for e in errors if re.match(words, e)], errors
  for value in bad + ([float("nan"), float("inf")] if kind is float else ["7", 2.0]):
    with pytest.raises(ValueError, match=words):
      dataclasses.replace(base, **{field: value})
