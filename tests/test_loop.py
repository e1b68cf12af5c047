"""The loop's planning and metrics reader, as pure functions: no JAX, hand-computed plans."""

import math

import numpy as np
import pytest

from rnnjax import loop


def spans(calls):
  return [(c.start, c.stop) for c in calls]


def test_an_epoch_plan_by_hand():
  # 25 steps, 10 per call, a checkpoint every 7 global steps, the epoch starting at global
  # step 14 (so checkpoints fall at epoch steps 7, 14, 21), progress every 5 steps.
  calls = list(loop.plan_epoch(0, 25, 10, 14, 7, 5))
  assert spans(calls) == [(0, 7), (7, 10), (10, 14), (14, 20), (20, 21), (21, 25)]
  assert [c.save for c in calls] == [True, False, True, False, True, False]
  assert [c.scanned for c in calls] == [False] * 6  # no whole group of 10 fits
  assert [c.read for c in calls] == [True, True, True, True, True, True]
  assert [c.last for c in calls] == [False] * 5 + [True]
  plain = list(loop.plan_epoch(0, 25, 10, 0, 0, 20))
  assert spans(plain) == [(0, 10), (10, 20), (20, 25)]
  assert [c.scanned for c in plain] == [True, True, False]
  assert [c.read for c in plain] == [False, True, True]  # step 20 crosses a progress point
  assert not any(c.save for c in plain)


def test_a_resumed_epoch_plans_the_same_calls_from_its_position():
  whole = list(loop.plan_epoch(0, 600, 10, 1200, 7, 12))
  for k, call in enumerate(whole):
    rest = list(loop.plan_epoch(call.start, 600, 10, 1200, 7, 12))
    assert rest == whole[k:]


def test_a_save_at_the_epochs_end_is_the_epochs_own():
  calls = list(loop.plan_epoch(0, 20, 10, 0, 10, 100))
  assert [(c.save, c.last) for c in calls] == [(True, False), (False, True)]


def metrics(losses):
  return {"loss_sum": np.array(losses, np.float32), "correct": np.ones(len(losses), np.int32),
          "count": np.full(len(losses), 4, np.int32)}


def test_reads_lag_one_call_and_sum_in_order():
  fetched = []
  reader = loop.PendingMetrics({"loss_sum": 0.0, "correct": 0, "count": 0, "seconds": 1.5},
                               first=3, base=100, batch_size=4,
                               fetch=lambda ms: fetched.append(len(ms)) or ms)
  reader.add(metrics([4.0, 8.0]), 2)
  assert reader.read(lag=True) is None and fetched == []  # only the newest call: wait
  reader.add(metrics([12.0]), 1)
  assert reader.read(lag=True) == 2.0  # 8 / 4: the first call's last step
  assert reader.position == 5 and fetched == [1]
  assert reader.read(lag=False) == 3.0 and reader.position == 6
  assert reader.totals == {"loss_sum": 24.0, "correct": 3, "count": 12, "seconds": 1.5}


def test_a_non_finite_loss_names_its_global_step():
  reader = loop.PendingMetrics({"loss_sum": 0.0, "correct": 0, "count": 0}, first=10,
                               base=90, batch_size=2, fetch=lambda ms: ms)
  reader.add(metrics([1.0, 2.0]), 2)
  reader.add(metrics([3.0, math.inf, 5.0]), 3)
  with pytest.raises(loop.Diverged) as e:
    reader.read(lag=False)
  assert (e.value.step, e.value.loss) == (90 + 10 + 4, math.inf)  # the 4th step read


def test_position_round_trips_through_a_checkpoint_record():
  from rnnjax import checkpointing
  p = checkpointing.Position(2, 7, {"loss_sum": 1.0, "correct": 1, "count": 2, "seconds": 0.5},
                             [{"epoch": 1}, {"epoch": 2}])
  assert checkpointing.Position.from_meta(p.to_meta()) == p
  end = checkpointing.Position(3, 0, None, [{}, {}, {}])
  assert end.to_meta() == {"epoch": 3, "history": [{}, {}, {}]}
  with pytest.raises(ValueError, match="history has 2 epochs, its epoch says 3"):
    checkpointing.Position.from_meta({"epoch": 3, "history": [{}, {}]})


def test_gradient_norms_add_up_to_a_mean_and_a_maximum():
  steps = [{"loss_sum": 1.5, "correct": 3, "count": 4, "grad_norm": 3.0},
           {"loss_sum": 0.5, "correct": 1, "count": 4, "grad_norm": 5.0},
           {"loss_sum": 1.0, "correct": 2, "count": 4, "grad_norm": 0.25}]
  t = loop.accumulate(loop.accumulate(None, steps[:1]), steps[1:])  # in two chunks
  assert (t["steps"], t["grad_norm_sum"], t["grad_norm_max"]) == (3, 8.25, 5.0)
  assert (t["loss_sum"], t["correct"], t["count"]) == (3.0, 6, 12)
  assert "steps" not in loop.accumulate(None, [{"loss_sum": 1.0, "correct": 1, "count": 1}])


def test_call_boundaries_hand_computed():
  assert loop.call_end(0, 600, 10, 0, 0) == 10
  assert loop.call_end(13, 600, 10, 0, 0) == 20  # back onto multiples of 10
  assert loop.call_end(595, 600, 10, 0, 0) == 600  # the epoch's end cuts it short
  assert loop.call_end(0, 600, 10, 1200, 7) == 4  # a checkpoint at global step 1204 = 7 * 172
  assert loop.call_end(4, 600, 10, 1200, 7) == 10
  assert loop.call_end(0, 600, 1, 0, 0) == 1


def test_unstack_metrics_of_single_and_scanned_calls():
  out = loop.unstack([{"loss_sum": np.float32(1.5), "count": np.int32(4)},
                       {"loss_sum": np.array([2.0, 3.0], np.float32),
                        "count": np.array([5, 6], np.int32)}])
  assert [(float(m["loss_sum"]), int(m["count"])) for m in out] == [(1.5, 4), (2.0, 5),
                                                                  (3.0, 6)]
