"""Run summaries (summary.json), `rnnjax results`, and the pages generated from the records."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from rnnjax import checkpointing, presets, results, train
from tests.helpers import REPO, synthetic_split


def record(epoch, val, test, count=100, rate=50.0, seconds=3.0):
  return {"epoch": epoch, "train_count": count, "images_per_second": rate, "seconds": seconds,
          "val_accuracy": val, "test_accuracy": test}


def test_the_summary_of_a_history_by_hand():
  config = presets.get("tiny").replace(epochs=5, seed=3)
  history = [record(1, 0.5, 0.40, rate=50.0), record(2, 0.7, 0.61, rate=100.0),
             record(3, 0.7, 0.66, rate=25.0),  # ties epoch 2: the latest is the best, the
             # checkpoint the manager keeps (test_checkpointing checks that it keeps it)
             {"epoch": 4, "step": 9, "diverged": True, "train_loss": float("nan")}]
  s = results.summary(config, history, "LSTM: nn.RNN scan", 12.5)
  assert s["preset"] == "tiny" and s["config"]["seed"] == 3
  assert (s["epochs_done"], s["epochs_planned"]) == (3, 5)
  assert s["best"] == {"epoch": 3, "val_accuracy": 0.7, "test_accuracy": 0.66}
  assert s["last"] == {"epoch": 3, "test_accuracy": 0.66}
  # 300 images in 100/50 + 100/100 + 100/25 = 7 s of training
  assert s["images_per_second"] == pytest.approx(300 / 7, rel=1e-12)
  assert s["seconds"] == {"command": 12.5, "training": 9.0}
  assert s["engine"] == "LSTM: nn.RNN scan" and s["software"]["jax"]


def summary_of(preset, seed, test, val, minutes, cpu=("AMD EPYC", "25", "1")):
  config = presets.get(preset).replace(seed=seed)
  return {"format": results.FORMAT, "preset": preset, "config": config.to_dict(),
          "software": {"commit": "abc1234"}, "engine": "e",
          "machine": {"cpu": cpu[0], "cpu_family": cpu[1], "cpu_model": cpu[2], "cores": 2},
          "epochs_done": 2, "epochs_planned": 2, "seconds": {"command": 60 * minutes},
          "images_per_second": 100.0 * (seed + 1),
          "best": {"epoch": 2, "val_accuracy": val, "test_accuracy": test},
          "last": {"epoch": 2, "test_accuracy": test}}


def test_seeds_of_one_preset_on_one_machine_are_one_row_mean_min_max():
  runs = [summary_of("default", 0, 0.9930, 0.9940, 6.0), summary_of("default", 1, 0.9936, 0.9950, 7.0),
          summary_of("default", 2, 0.9942, 0.9930, 8.0),
          summary_of("default", 0, 0.9900, 0.9900, 9.0, cpu=("Intel Xeon", "6", "167"))]
  table = results.rows(runs)
  assert [r["seeds"] for r in table] == ["0, 1, 2", "0"]
  first = table[0]
  assert first["test accuracy % at best validation"] == "99.36 (99.30-99.42)"
  assert first["validation %"] == "99.40 (99.30-99.50)"
  assert first["minutes"] == "7.0 (6.0-8.0)" and first["images/s"] == "200 (100-300)"
  assert first["hardware"] == "AMD EPYC (family 25, model 1), 2 cores"
  assert table[1]["test accuracy % at best validation"] == "99.00"
  intel = summary_of("default", 0, 0.99, 0.99, 9.0, cpu=("Intel(R) Xeon(R) Processor", "6", "207"))
  assert results.rows([intel])[0]["hardware"] == "Intel Xeon (family 6, model 207), 2 cores"
  merged = results.rows(runs, by_machine=False)
  assert len(merged) == 1 and merged[0]["hardware"] == "AMD EPYC 25/1, Intel Xeon 6/167"
  assert merged[0]["test accuracy % at best validation"] == "99.27 (99.00-99.42)"
  parsed = list(csv.DictReader(io.StringIO(results.as_csv(table))))
  assert parsed[0]["seeds"] == "0, 1, 2" and parsed[1]["hardware"].startswith("Intel Xeon")


def test_the_field_table_says_how_many_epochs_ran():
  whole = [dict(summary_of("psmnist", seed, 0.98, 0.985, 1.5), epochs_done=40)
           for seed in (0, 1)]
  stopped = [dict(summary_of("psmnist_lem_authors", 0, 0.9, 0.91, 90.0), epochs_done=40)]
  assert results.epochs_run(whole, 40) == "40 epochs"
  assert results.epochs_run(stopped, 120) == "40 of 120 epochs, stopped"
  assert results.epochs_run(whole + stopped, 120) == "40 of 120 epochs, stopped"
  lines = results.anchors_table(whole + stopped).splitlines()
  assert [line for line in lines if "| 40 epochs, 1.5 (1.5-1.5) min on 2 CPU cores |" in line
          ] == [line for line in lines if "rnnjax `psmnist`" in line]
  assert [line for line in lines if "| 40 of 120 epochs, stopped, 90.0 min on 2 CPU" in line
          ] == [line for line in lines if "rnnjax `psmnist_lem_authors`" in line]


def test_the_results_page_and_the_readme_table_are_the_records():
  """docs/results.md and the README's table are generated from docs/results/*.json; rerun
  `rnnjax results --write-docs` after adding a record."""
  kept = results.records()
  assert kept, "no records in docs/results/"
  assert results.PAGE.read_text() == results.page(kept)
  readme = results.README.read_text()
  assert results.with_block(readme, results.README_BEGIN, results.README_END,
                            results.readme_table(kept)) == readme
  table = results.readme_table(kept).splitlines()[2:]
  assert len(table) <= 6 and len(readme.splitlines()) <= 120
  assert [line.split(" | ")[0][2:] for line in table] == list(results.HEADLINE)
  assert {s["preset"] for s in kept} <= set(presets.PRESETS)


def test_a_run_writes_its_summary_and_the_command_tabulates_it(tmp_path):
  config = presets.get("tiny").replace(epochs=2, seed=4)
  workdir = tmp_path / "w"
  splits = synthetic_split(64, 0), synthetic_split(32, 2), synthetic_split(40, 1)
  _, history = train.train_and_evaluate(config, workdir, splits, log=lambda _: None)
  s = json.loads((workdir / "summary.json").read_text())
  assert (s["epochs_done"], s["epochs_planned"], s["preset"]) == (2, 2, "tiny")
  # The best is the epoch of the checkpoint the run kept as best (here two epochs tie).
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", read_only=True)
  best = next(r for r in history if r["step"] == ckpt.best_step())
  ckpt.close()
  assert s["best"] == {"epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
                       "test_accuracy": best["test_accuracy"]}
  assert s["last"]["test_accuracy"] == history[-1]["test_accuracy"]
  assert s["engine"].startswith("LSTM: ") and s["machine"]["devices"]
  assert s["seconds"]["command"] >= s["seconds"]["training"] > 0
  np.testing.assert_allclose(s["seconds"]["training"], sum(r["seconds"] for r in history))
  r = subprocess.run([sys.executable, "-m", "rnnjax.cli", "results", str(workdir),
                      str(tmp_path / "missing")], capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 1 and r.stdout == "" and r.stderr.startswith("error: ")
  assert f"{tmp_path / 'missing'}: no summary.json" in r.stderr
  r = subprocess.run([sys.executable, "-m", "rnnjax.cli", "results", str(workdir)],
                     capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 0, r.stderr
  row = r.stdout.splitlines()[2].split(" | ")
  assert row[0] == "| tiny" and row[1] == "4"
  assert row[2] == f"{100 * best['test_accuracy']:.2f}"


def test_the_cells_table_of_the_docs_is_the_registration():
  """docs/models_and_tasks.md lists every registered cell, generated from `CELLS`."""
  from rnnjax.config import CELLS
  page = results.CELLS_PAGE.read_text()
  assert results.with_block(page, results.CELLS_BEGIN, results.CELLS_END,
                            results.cells_table()) == page
  for name in CELLS:
    assert f"| `{name}` |" in page
