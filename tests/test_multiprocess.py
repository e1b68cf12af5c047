"""Multi-process runs on 127.0.0.1 when a process does not come or is lost: one line each,
exit status 1, in seconds rather than JAX's minutes and abort."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, SCRIPT, requires_mnist

REAL_TINY = ["--preset", "tutorial", "--hidden-size", "8", "--batch-size", "500",
             "--data-source", "idx", "--no-progress"]


def free_port():
  """A port whose successor (the processes' meeting port) is free too."""
  for _ in range(50):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    try:
      with socket.socket() as s:
        s.bind(("127.0.0.1", port + 1))
      return port
    except OSError:
      continue
  raise RuntimeError("no free pair of ports")


def start(workdir, port, k, *extra):
  return subprocess.Popen(
      [sys.executable, str(SCRIPT), "--workdir", str(workdir), *REAL_TINY, *map(str, extra),
       "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(k)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("k", [0, 1])
def test_a_process_that_never_comes_is_named_after_the_timeout(tmp_path, k):
  port = free_port()
  t0 = time.perf_counter()
  p = start(tmp_path / "w", port, k, "--join-timeout", 3)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 1, err
  assert time.perf_counter() - t0 < 60
  if k == 0:
    assert f"waiting for 1 more process(es) at 127.0.0.1:{port}" in err
    assert (f"error: process(es) 1 of 2 did not join the run at 127.0.0.1:{port} within 3 s"
            in err)
  else:
    assert f"error: could not reach process 0 at 127.0.0.1:{port}" in err
  assert "Traceback" not in err and "Check failure" not in err


@requires_mnist
@pytest.mark.parametrize("killed", [1, 0])
def test_a_lost_process_ends_the_other_with_one_line(tmp_path, killed):
  port = free_port()
  workdir = tmp_path / "w"
  procs = [start(workdir, port, k, "--epochs", 20) for k in (0, 1)]
  started = workdir / "checkpoints"  # made once both processes have joined and JAX started
  deadline = time.time() + 300
  while time.time() < deadline and not started.exists():
    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
    time.sleep(0.1)
  time.sleep(3)  # into the first steps' collectives
  procs[killed].send_signal(signal.SIGKILL)
  t0 = time.perf_counter()
  other = procs[1 - killed]
  out, err = other.communicate(timeout=120)
  seconds = time.perf_counter() - t0
  procs[killed].wait()
  print(f"measured: process {1 - killed} ended {seconds:.2f} s after process {killed} was "
        "killed")
  assert other.returncode == 1, (out, err)
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert lines == [f"error: process {killed} of this run is gone (its connection closed "
                   "without a word: killed, crashed, or its machine lost); process "
                   f"{1 - killed} stops too. Its last checkpoint is intact: rerun the same "
                   "command in every process to resume."], err
  assert "Traceback" not in err and seconds < 30


def test_processes_started_with_different_counts_or_the_same_id_are_told(tmp_path):
  port = free_port()
  p0 = start(tmp_path / "w", port, 0, "--join-timeout", 20)
  time.sleep(1)
  cmd = [sys.executable, str(SCRIPT), "--workdir", str(tmp_path / "w"), *REAL_TINY,
         "--coordinator", f"127.0.0.1:{port}", "--join-timeout", "20"]
  wrong = subprocess.run(cmd + ["--num-processes", "3", "--process-id", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
  assert wrong.returncode == 1, wrong.stderr
  assert ("refused this process: process 1 was started with --num-processes 3, process 0 "
          "with 2") in wrong.stderr
  p0.kill()
  p0.communicate()
  assert "Traceback" not in wrong.stderr


SERVICE = """
import os, signal, sys
from jax._src import distributed
from rnnjax import parallel
parallel.SERVICE_LINGER_S = 600  # the test ends the child itself
with parallel._service_in_child(0, 30):
  service = distributed._jax.get_distributed_runtime_service(sys.argv[1], 2)
print(service.child.pid, flush=True)
if sys.argv[2] == "die":
  os.kill(os.getpid(), signal.SIGKILL)
service.shutdown()
print(service.child.returncode, flush=True)
"""


def test_the_coordination_service_outlives_a_killed_process_0(tmp_path):
  """Process 0 hosts JAX's service in a child, so that its death does not take the service
  with it before the other processes' Watch has spoken."""
  port = free_port()
  run = subprocess.run([sys.executable, "-c", SERVICE, f"127.0.0.1:{port}", "die"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == -signal.SIGKILL, run.stderr
  child = int(run.stdout.split()[0])
  try:
    with socket.create_connection(("127.0.0.1", port), timeout=10):
      pass  # still listening after process 0 died
  finally:
    os.kill(child, signal.SIGKILL)


def test_the_coordination_service_stops_when_process_0_shuts_it_down():
  port = free_port()
  run = subprocess.run([sys.executable, "-c", SERVICE, f"127.0.0.1:{port}", "stop"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert run.stdout.split()[1] == "0"  # the child's exit status, once shut down


def test_a_taken_coordinator_port_is_a_clear_error():
  from jax._src import distributed

  from rnnjax import parallel
  with socket.create_server(("127.0.0.1", 0)) as taken:
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    with parallel._service_in_child(0, 30), pytest.raises(parallel.ParallelError) as e:
      distributed._jax.get_distributed_runtime_service(address, 2)
  # JAX's service either raises (JaxRuntimeError: Failed to start RPC server) or crashes
  # the child (a segfault: "it ended with exit status -11"); either way, one clear error.
  assert str(e.value).startswith(f"could not start the run's coordination service at {address} (")
  assert str(e.value).endswith("Is another run using that port? Choose another --coordinator "
                               "port.")
