"""rnnjax installs as users install it: a wheel built from a clean copy of the sources holds
every module and the kernel's C++ source, imports from where it was installed, and its
`rnnjax` command runs."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile

from tests.helpers import REPO

IMPORT_ALL = """
import importlib, pkgutil, sys
import rnnjax
assert rnnjax.__file__.startswith(sys.argv[1]), rnnjax.__file__
names = [m.name for m in pkgutil.walk_packages(rnnjax.__path__, "rnnjax.")]
for name in names:
  module = importlib.import_module(name)
  assert module.__file__.startswith(sys.argv[1]), module.__file__
print("IMPORTED", len(names), " ".join(sorted(names)))
"""


def test_the_wheel_holds_every_module_and_its_command_runs(tmp_path):
  src = tmp_path / "src"
  shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
      ".git", ".venv", ".pytest_cache", "__pycache__", "build", "*.egg-info", "runs",
      "workdirs", "tfds_data"))
  dist, site = tmp_path / "dist", tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(dist), str(src)], check=True,
                 capture_output=True, timeout=600)
  (wheel,) = dist.glob("rnnjax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  sources = {str(p.relative_to(REPO)) for p in (REPO / "rnnjax").rglob("*")
             if p.suffix in (".py", ".cc") and "__pycache__" not in p.parts}
  assert sources <= names, sorted(sources - names)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                  "--target", str(site), str(wheel)], check=True, capture_output=True,
                 timeout=600)
  # -S: no .pth files, so no editable install of this checkout can stand in for a module
  # the wheel lacks; the dependencies come from this environment's site-packages.
  deps = sysconfig.get_paths()["purelib"]
  env = {"PYTHONPATH": f"{site}:{deps}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
  r = subprocess.run([sys.executable, "-S", "-c", IMPORT_ALL, str(site)], capture_output=True,
                     text=True, cwd=tmp_path, env=env, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  modules = {n.replace("/", ".")[:-3] for n in sources if n.endswith(".py")}
  modules = {m.removesuffix(".__init__") for m in modules} - {"rnnjax"}
  assert r.stdout.split()[2:] == sorted(modules), r.stdout
  r = subprocess.run([str(site / "bin" / "rnnjax"), "--help"], capture_output=True, text=True,
                     cwd=tmp_path, env=env, timeout=300)
  assert r.returncode == 0 and "usage:" in r.stdout and "--hidden-size" in r.stdout, r.stderr
