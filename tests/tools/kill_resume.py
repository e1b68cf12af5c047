"""Kill a tiny training run with SIGKILL at random moments, resume it each time, and check
that the finished run's parameters equal an uninterrupted run's, bit for bit.

    python tests/tools/kill_resume.py --kills 20          # about 2 minutes on a 2-core CPU

Each attempt starts the same command on the same workdir and kills it after a random delay
drawn over the whole life of a process (import, compile, restore, training steps and
checkpoint writes: the run checkpoints every few steps, so many kills land in a save).
After each kill it records whether a partly written checkpoint was left behind. At the end
the run is allowed to finish, and the SHA-256 of its parameters and optimizer state is
compared with an uninterrupted run's. Exit status 0 only if every resumed run matched.
(tests/test_resume_process.py runs a few kills of this script in the test suite.)
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The training command: a tiny LSTM on synthetic MNIST-shaped data, checkpointing every
# 3 steps; prints the digest of the final parameters and optimizer state.
DRIVER = f"""
import hashlib, sys, jax, numpy as np
sys.path.insert(0, {str(REPO)!r})
from tests.helpers import synthetic_split
from rnnjax import presets
from rnnjax import config, signals, train
c = presets.get('tiny').replace(epochs=int(sys.argv[2]), schedule='cosine',
    warmup_epochs=1.0, augment_shift=1, checkpoint_every_steps=int(sys.argv[3]))
try:
  state, _ = train.train_and_evaluate(c, sys.argv[1], (synthetic_split(480, 0),
                                      synthetic_split(40, 1)))
except signals.Preempted as e:
  print(e, file=sys.stderr)
  sys.exit(128 + e.signum)
h = hashlib.sha256()
for leaf in jax.tree.leaves((state.params, state.opt_state)):
  h.update(np.asarray(leaf).tobytes())
print('DIGEST', h.hexdigest())
"""


def command(workdir: Path, epochs: int, every: int) -> list[str]:
  return [sys.executable, "-c", DRIVER, str(workdir), str(epochs), str(every)]


def run_to_end(workdir: Path, epochs: int, every: int) -> tuple[str, str]:
  """Runs the command to completion; returns (digest line, stdout)."""
  r = subprocess.run(command(workdir, epochs, every), capture_output=True, text=True,
                     cwd=REPO, timeout=600)
  if r.returncode != 0:
    raise RuntimeError(f"run failed ({r.returncode}):\n{r.stderr[-3000:]}")
  return [l for l in r.stdout.splitlines() if l.startswith("DIGEST")][-1], r.stdout


def saved_steps(workdir: Path) -> list[int]:
  ckpts = workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def partial_checkpoints(workdir: Path) -> int:
  ckpts = workdir / "checkpoints"
  return sum(1 for p in ckpts.iterdir() if "tmp" in p.name) if ckpts.exists() else 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--kills", type=int, default=20)
  p.add_argument("--epochs", type=int, default=12, help="of 30 steps each")
  p.add_argument("--every", type=int, default=3, help="checkpoint every this many steps")
  p.add_argument("--max-delay", type=float,
                 help="kill after a delay drawn uniformly from [0.2, MAX] seconds (default: "
                      "the uninterrupted run's duration)")
  p.add_argument("--seed", type=int, default=0, help="of the kill delays")
  p.add_argument("--workdir", type=Path, help="default: a new temporary folder")
  p.add_argument("--reference", help="DIGEST line of an uninterrupted run with the same "
                 "--epochs and --every, if already known (then --max-delay is needed)")
  args = p.parse_args(argv)
  rng = random.Random(args.seed)
  root = args.workdir or Path(tempfile.mkdtemp(prefix="kill_resume_"))

  t0 = time.time()
  if args.reference:
    reference, max_delay = args.reference, args.max_delay
    if not max_delay:
      p.error("--reference needs --max-delay")
  else:
    reference, _ = run_to_end(root / "reference", args.epochs, args.every)
    duration = time.time() - t0
    max_delay = args.max_delay or duration
    print(f"uninterrupted run: {reference} ({duration:.1f}s)", flush=True)

  workdir = root / "killed"
  kills = 0
  attempts = 0
  while kills < args.kills:
    attempts += 1
    delay = rng.uniform(0.2, max_delay)
    proc = subprocess.Popen(command(workdir, args.epochs, args.every), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
      proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      proc.kill()  # SIGKILL: no handler runs, no cleanup
      proc.wait()
      kills += 1
      print(f"kill {kills:2d}: after {delay:5.2f}s; checkpoints then: {saved_steps(workdir)}; "
            f"partly written ones: {partial_checkpoints(workdir)}", flush=True)
      continue
    out, err = proc.communicate()
    if proc.returncode != 0:
      print(f"attempt {attempts} failed on its own ({proc.returncode}):\n{err[-3000:]}")
      return 1
    # The run finished before the kill: start over in a fresh workdir so that every kill
    # lands in a run that still has work to do.
    print(f"(attempt {attempts}: the run finished within {delay:.2f}s; checking it and "
          "starting a new one)", flush=True)
    done = [l for l in out.splitlines() if l.startswith("DIGEST")][-1]
    if done != reference:
      print(f"MISMATCH after resuming: {done} != {reference}")
      return 1
    workdir = root / f"killed_{attempts}"

  final, stdout = run_to_end(workdir, args.epochs, args.every)
  resumed = [l for l in stdout.splitlines() if l.startswith("resumed from")]
  ok = final == reference
  print(f"final run: {resumed[0] if resumed else 'started afresh'}")
  print(f"{'MATCH' if ok else 'MISMATCH'}: {final} vs {reference}; {kills} kills in "
        f"{time.time() - t0:.0f}s")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
