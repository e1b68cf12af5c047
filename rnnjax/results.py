"""Results as data: each run's `summary.json`, and the tables made from them.

A training run keeps `WORKDIR/summary.json` current after every epoch (`summary`): what ran
(the preset and the whole config), with what (rnnjax's version and commit, jax, flax and
optax), where (the CPU model and its relevant flags, or the GPU, and the devices), on
which engine its recurrent layers ran, how far (epochs done of planned), how long (the
whole command across its resumes, and training alone, images/s), and how well (the
best-validation epoch with its validation and test accuracy, the last epoch's test
accuracy).

    rnnjax results runs/*                      # a markdown table of those runs
    rnnjax results --csv runs/*                # the same as CSV
    rnnjax results --write-docs                # docs/results.md from docs/results/*.json

Runs of one preset on one machine are one row: their seeds as the mean, min and max.
The summaries the project stands behind are kept in docs/results/ (small JSON files, one per
run); docs/results.md and the README's results table are generated from them, and a test
fails when either disagrees with the records.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

SUMMARY_FILE = "summary.json"
FORMAT = 1  # the summary's layout; a reader refuses layouts it does not know
# CPU flags that decide which matmul and vector paths run (x86-64).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
REPO = Path(__file__).resolve().parent.parent
RECORDS = REPO / "docs" / "results"
PAGE = REPO / "docs" / "results.md"
README = REPO / "README.md"
HEADLINE = ("tutorial", "default", "smnist", "psmnist")  # the README's rows, in its order
README_BEGIN, README_END = "<!-- results: generated -->", "<!-- /results -->"


class ResultsError(ValueError):
  """A path holds no readable run summary; the message says which and why."""


def machine() -> dict[str, Any]:
  """The processor (model, family/model numbers, the flags in `CPU_FLAGS`) from
  /proc/cpuinfo where there is one, and JAX's devices when JAX is already imported."""
  out: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_flags": [],
                         "cores": os.cpu_count()}
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    text = ""
  info = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
  info = {k.strip(): v.strip() for k, v in info.items()}
  if "model name" in info:
    out["cpu"] = info["model name"]
    out["cpu_family"], out["cpu_model"] = info.get("cpu family"), info.get("model")
    flags = set(info.get("flags", "").split())
    out["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
  import sys
  if "jax" in sys.modules:
    import jax
    devices = jax.devices()
    out["devices"] = [f"{d.platform}:{d.device_kind}" for d in devices]
    out["gpu"] = devices[0].device_kind if devices[0].platform == "gpu" else None
  return out


def software() -> dict[str, Any]:
  """rnnjax's version and git commit (None outside a checkout), and the versions of jax,
  flax and optax."""
  from importlib import metadata

  import rnnjax
  out = {"rnnjax": rnnjax.__version__, "commit": None}
  package = Path(rnnjax.__file__).resolve().parent
  if (package.parent / ".git").exists():
    try:
      head = subprocess.run(["git", "-C", str(package.parent), "rev-parse", "--short=7",
                             "HEAD"], capture_output=True, text=True, timeout=10)
      out["commit"] = head.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
      pass
  for name in ("jax", "flax", "optax"):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def process_seconds() -> float:
  """Seconds since this process started (an allocator restart with `execve` included)."""
  try:
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
  except (OSError, ValueError, IndexError):
    return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def summary(config, history: list[dict[str, Any]], engine: str,
            command_seconds: float) -> dict[str, Any]:
  """The run's summary after the epochs in `history` (metrics.jsonl's records)."""
  epochs = [r for r in history if not r.get("diverged")]
  best = _best(epochs)
  images = sum(r.get("train_count", 0) or 0 for r in epochs)
  train_seconds = sum(r["train_count"] / r["images_per_second"] for r in epochs
                      if r.get("train_count") and r.get("images_per_second"))
  return {
      "format": FORMAT, "preset": config.name, "config": config.to_dict(),
      "software": software(), "machine": machine(), "engine": engine,
      "epochs_done": len(epochs), "epochs_planned": config.epochs,
      "seconds": {"command": command_seconds,
                  "training": sum(r.get("seconds", 0.0) for r in epochs)},
      "images_per_second": images / train_seconds if train_seconds else None,
      "best": best, "last": _last(epochs),
  }


def best_epoch(history: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
  """The record of the epoch with the best validation accuracy: the latest of equals, the
  one whose checkpoint the checkpoint manager keeps and names `best_step`; None where no
  epoch held out validation images."""
  scored = [r for r in history if r.get("val_accuracy") is not None]
  return max(scored, key=lambda r: (r["val_accuracy"], r["epoch"])) if scored else None


def _best(epochs: list[dict[str, Any]]) -> dict[str, Any] | None:
  r = best_epoch(epochs)
  if r is None:
    return None
  return {"epoch": r["epoch"], "val_accuracy": r["val_accuracy"],
          "test_accuracy": r.get("test_accuracy")}


def _last(epochs: list[dict[str, Any]]) -> dict[str, Any] | None:
  if not epochs:
    return None
  return {"epoch": epochs[-1]["epoch"], "test_accuracy": epochs[-1].get("test_accuracy")}


def command_seconds_so_far(workdir: Path) -> float:
  """The command time of the run's earlier invocations, from its summary (0 if none)."""
  try:
    return float(json.loads((Path(workdir) / SUMMARY_FILE).read_text())["seconds"]["command"])
  except (OSError, ValueError, KeyError, TypeError):
    return 0.0


def load(path: str | os.PathLike) -> dict[str, Any]:
  """A run's summary: `path` is a summary file, or a workdir holding `summary.json`."""
  path = Path(path)
  file = path / SUMMARY_FILE if path.is_dir() else path
  try:
    s = json.loads(file.read_text())
  except FileNotFoundError:
    raise ResultsError(f"{path}: no {SUMMARY_FILE} (a workdir of a run that finished an "
                       "epoch has one)") from None
  except (OSError, ValueError) as e:
    raise ResultsError(f"{file}: not a readable summary ({type(e).__name__}: {e})") from None
  if not isinstance(s, dict) or s.get("format") != FORMAT:
    raise ResultsError(f"{file}: not a run summary of format {FORMAT}")
  return s


def hardware(s: dict[str, Any], short: bool = False) -> str:
  """How a row names its machine: the GPU, else the CPU model with its family and model
  numbers (the same name covers several generations) and its core count; `short`: the
  model and its numbers only."""
  m = s["machine"]
  if m.get("gpu"):
    return m["gpu"]
  # Trademark marks and a trailing " Processor" dropped from /proc/cpuinfo's model name.
  cpu = re.sub(r"\((R|TM)\)| Processor$", "", m["cpu"])
  if short:
    return f"{cpu} {m['cpu_family']}/{m['cpu_model']}" if m.get("cpu_family") else cpu
  numbers = (f" (family {m['cpu_family']}, model {m['cpu_model']})"
             if m.get("cpu_family") else "")
  cores = f", {m['cores']} cores" if m.get("cores") else ""
  return f"{cpu}{numbers}{cores}"


def _span(values: list[float], scale: float = 100, digits: int = 2) -> str:
  if not values:
    return ""
  f = lambda v: f"{scale * v:.{digits}f}"  # noqa: E731
  if len(values) == 1:
    return f(values[0])
  return f"{f(statistics.mean(values))} ({f(min(values))}-{f(max(values))})"


COLUMNS = ("preset", "seeds", "test accuracy % at best validation", "validation %",
           "last epoch test %", "epochs", "minutes", "images/s", "hardware", "engine",
           "commit")


def rows(summaries: Iterable[dict[str, Any]], by_machine: bool = True) -> list[dict[str, str]]:
  """One row per preset and hardware (or per preset, its machines listed): the runs' seeds
  as the mean (min-max); in the summaries' order."""
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for s in summaries:
    groups.setdefault((s["preset"], hardware(s) if by_machine else ""), []).append(s)
  out = []
  for (preset, where), runs in groups.items():
    where = where or ", ".join(dict.fromkeys(hardware(r, short=True) for r in runs))
    best = [r["best"] for r in runs if r.get("best")]
    last = [r["last"]["test_accuracy"] for r in runs if r.get("last")]
    minutes = [r["seconds"]["command"] / 60 for r in runs if r["seconds"].get("command")]
    rates = [r["images_per_second"] for r in runs if r.get("images_per_second")]
    out.append({
        "preset": preset,
        "seeds": ", ".join(str(r["config"]["seed"]) for r in runs),
        "test accuracy % at best validation": _span([b["test_accuracy"] for b in best]),
        "validation %": _span([b["val_accuracy"] for b in best]),
        "last epoch test %": _span(last),
        "epochs": ", ".join(f"{r['epochs_done']}/{r['epochs_planned']}" for r in runs),
        "minutes": _span(minutes, 1, 1),
        "images/s": _span(rates, 1, 0),
        "hardware": where,
        "engine": "; ".join(dict.fromkeys(r["engine"] for r in runs)),
        "commit": ", ".join(dict.fromkeys(str(r["software"].get("commit")) for r in runs)),
    })
  return out


def markdown(table: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  lines += ["| " + " | ".join(r[c] or "" for c in columns) + " |" for r in table]
  return "\n".join(lines) + "\n"


def as_csv(table: list[dict[str, str]]) -> str:
  out = io.StringIO()
  writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(table)
  return out.getvalue()


def records(folder: Path = RECORDS) -> list[dict[str, Any]]:
  """The kept summaries, by file name."""
  return [load(p) for p in sorted(Path(folder).glob("*.json"))]


def page(summaries: list[dict[str, Any]]) -> str:
  """docs/results.md: every kept run, by preset and machine."""
  head = (
      "# Results\n\n"
      "Generated by `rnnjax results --write-docs` from the run summaries in\n"
      "[results/](results/) (one JSON file per run, as each run writes it to its workdir's\n"
      "`summary.json`); do not edit by hand. Test accuracy is on all 10,000 test images, at\n"
      "the checkpoint with the best validation accuracy (5,000 training images held out);\n"
      "runs of one preset on one machine form a row: the mean over seeds (min-max).\n"
      "Minutes are the whole command, across resumes. A record whose `source` says it was\n"
      "transcribed comes from a run reported before runs wrote summaries; its missing\n"
      "fields are empty. How the numbers were reached: [lab/](lab/).\n\n")
  anchors = (
      "\n## Long sequences against the field\n\n"
      "Published test accuracies on sequential and permuted sequential MNIST (784 steps of one\n"
      "pixel; [anchors.json](anchors.json)), then rnnjax's runs on the same tasks from the\n"
      "table above. A row's model says what carries state across the 784 steps\n"
      "([models_and_tasks.md](models_and_tasks.md)): the parallel LMU's only state is a fixed\n"
      "linear memory; LEM's is a learned nonlinear recurrence, and so is the LMU's hidden\n"
      "state, over its fixed linear memory.\n\n")
  return head + markdown(rows(summaries)) + anchors + anchors_table(summaries)


ANCHORS = REPO / "docs" / "anchors.json"  # the field's published long-sequence numbers
ANCHOR_COLUMNS = ("model", "sMNIST %", "psMNIST %", "parameters", "budget", "source")


def anchors_table(summaries: list[dict[str, Any]]) -> str:
  """The field's published sMNIST and psMNIST accuracies (docs/anchors.json), then each
  rnnjax preset run on those tasks: test accuracy at the best-validation checkpoint over
  all its runs, mean (min-max)."""
  import json
  from rnnjax import resources
  from rnnjax.config import Config
  table = [{"model": a["model"], "sMNIST %": a.get("smnist", ""),
            "psMNIST %": a.get("psmnist", ""), "parameters": a["parameters"],
            "budget": a["budget"], "source": a["source"]}
           for a in json.loads(ANCHORS.read_text())]
  tasks = {"pixels": "sMNIST %", "permuted": "psMNIST %"}
  for row in rows(summaries, by_machine=False):
    runs = [s for s in summaries if s["preset"] == row["preset"]]
    config = Config.from_dict(runs[0]["config"])
    if config.task not in tasks:
      continue
    what = {"plmu": "parallel LMU", "lmu": "LMU"}.get(config.cell, config.cell.upper())
    table.append({
        "model": f"rnnjax `{row['preset']}`: {what} {config.hidden_size}",
        "sMNIST %": "", "psMNIST %": "", tasks[config.task]:
        row["test accuracy % at best validation"],
        "parameters": f"{resources.parameter_count(config):,}",
        "budget": f"{epochs_run(runs, config.epochs)}, {row['minutes'] or '?'} min on 2 CPU "
                  "cores",
        "source": f"docs/results/ (seeds {row['seeds']}; {row['hardware']})"})
  return markdown(table, ANCHOR_COLUMNS)


def epochs_run(runs: list[dict[str, Any]], planned: int) -> str:
  """The epochs a preset's runs trained: "40 epochs" when every run finished, else what
  each one reached of its plan ("40 of 120 epochs, stopped")."""
  done = sorted({s.get("epochs_done") or 0 for s in runs})
  if done == [planned]:
    return f"{planned} epochs"
  return f"{', '.join(map(str, done))} of {planned} epochs, stopped"


def readme_table(summaries: list[dict[str, Any]]) -> str:
  """The README's rows: one per headline preset, over every machine it ran on."""
  columns = ("preset", "seeds", "test accuracy % at best validation", "last epoch test %",
             "minutes", "hardware")
  table = [r for p in HEADLINE for r in rows(summaries, by_machine=False) if r["preset"] == p]
  return markdown(table, columns)


CELLS_PAGE = REPO / "docs" / "models_and_tasks.md"
CELLS_BEGIN, CELLS_END = "<!-- cells: generated -->", "<!-- /cells -->"


def cells_table() -> str:
  """The registered cells (`rnnjax.config.CELLS`) as docs/models_and_tasks.md lists them."""
  from rnnjax.config import CELLS
  def runs_on(spec) -> str:
    layers = [f"{k} ({v.rsplit(':', 1)[1]})" for k, v in spec.layers.items()]
    return ", ".join(["its own model" if spec.model else "nn.RNN scan", *layers])

  table = [{"cell": f"`{name}`", "what": spec.doc,
            "options": ", ".join(f"`--{o.replace('_', '-')}`" for o in spec.reads()),
            "runs on": runs_on(spec)} for name, spec in CELLS.items()]
  return markdown(table, ("cell", "what", "options", "runs on"))


def with_block(text: str, begin: str, end: str, block: str) -> str:
  """`text` with the generated block between the markers `begin` and `end` replaced."""
  head, found, rest = text.partition(begin)
  _, found_end, tail = rest.partition(end)
  if not found or not found_end:
    raise ResultsError(f"no {begin} ... {end} block to fill")
  return f"{head}{begin}\n{block}{end}{tail}"


def write_docs() -> str:
  """Regenerates docs/results.md, the README's results table and the cells table."""
  if not RECORDS.is_dir():
    raise ResultsError(f"no {RECORDS}: --write-docs regenerates the docs of a checkout of "
                       "rnnjax, not of an installed package")
  kept = records()
  PAGE.write_text(page(kept))
  README.write_text(with_block(README.read_text(), README_BEGIN, README_END,
                               readme_table(kept)))
  CELLS_PAGE.write_text(with_block(CELLS_PAGE.read_text(), CELLS_BEGIN, CELLS_END,
                                   cells_table()))
  return (f"wrote {PAGE}, the tables in {README} and {CELLS_PAGE} from {len(kept)} records in "
          f"{RECORDS} and the registered cells")


def main(argv: list[str] | None = None) -> int:
  """`rnnjax results`: the table of the runs given, or the docs regenerated."""
  import argparse
  import sys
  p = argparse.ArgumentParser(prog="rnnjax results", description=(
      "A table of runs (workdirs or summary files): one row per preset and machine, seeds "
      "as mean (min-max)."))
  p.add_argument("paths", nargs="*", metavar="WORKDIR", help="run workdirs or summary.json "
                 "files")
  p.add_argument("--csv", action="store_true", help="CSV instead of markdown")
  p.add_argument("--write-docs", action="store_true", help="regenerate docs/results.md and "
                 "the README's results table from docs/results/*.json, and the cells table "
                 "of docs/models_and_tasks.md (in a checkout)")
  args = p.parse_args(argv)
  try:
    if args.write_docs:
      print(write_docs())
      return 0
    if not args.paths:
      p.error("give run workdirs (or summary.json files), or --write-docs")
    table = rows(load(path) for path in args.paths)
  except (ResultsError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  sys.stdout.write(as_csv(table) if args.csv else markdown(table))
  return 0
