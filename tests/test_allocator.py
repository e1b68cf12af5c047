"""rnnjax's commands restart themselves with the tuned malloc settings, once, in place."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from rnnjax import allocator

SHOW = ("import os, sys; from rnnjax import allocator; allocator.use_tuned_allocator(); "
        "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
glibc_linux = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")),
    reason="the allocator settings apply to Linux with glibc only")


def run(env_changes, *args):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.SWITCH)}
  env.update(env_changes)
  p = subprocess.Popen([sys.executable, "-c", SHOW, *args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
  out, err = p.communicate(timeout=60)
  return p, out, err


@glibc_linux
def test_restarts_in_place_with_the_tunables_and_the_same_arguments():
  p, out, err = run({}, "--workdir", "a b")
  assert p.returncode == 0, err
  pid, tunables, argv = out.split(" ", 2)
  assert int(pid) == p.pid  # execve: same process, so signals and exit codes are unchanged
  assert tunables == allocator.TUNABLES == "glibc.malloc.hugetlb=1"
  assert argv.strip() == "['--workdir', 'a b']"


@pytest.mark.parametrize("env", [{allocator.SWITCH: "system"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_off_switch_and_the_users_own_setting_win(env):
  p, out, err = run(env)
  assert p.returncode == 0, err
  assert out.split(" ", 2)[1] == env.get("GLIBC_TUNABLES", "None")


def test_unknown_switch_value_is_a_clear_error(monkeypatch):
  monkeypatch.setenv(allocator.SWITCH, "jemalloc")
  with pytest.raises(ValueError, match="RNNJAX_ALLOCATOR='jemalloc' is not a choice: use "
                                       "'tuned'"):
    allocator.use_tuned_allocator()
  env = dict(os.environ, **{allocator.SWITCH: "jemalloc"})
  r = subprocess.run([sys.executable, str(REPO / "experiments" / "mnist_lstm.py"), "--epochs",
                      "1"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert r.returncode == 2 and "is not a choice" in r.stderr and "Traceback" not in r.stderr


@glibc_linux
def test_no_restart_on_a_machine_with_an_nvidia_gpu(monkeypatch, tmp_path):
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv(allocator.SWITCH, raising=False)
  monkeypatch.setattr(allocator, "GPU_DEVICE", str(tmp_path / "nvidiactl"))
  assert allocator.applies()
  (tmp_path / "nvidiactl").write_text("")  # as the NVIDIA driver's control device
  assert not allocator.applies()
