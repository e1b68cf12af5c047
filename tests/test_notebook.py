"""The notebook runs end to end (tiny setting, real MNIST through the IDX source), so it
never rots."""

import base64
import io

import numpy as np
import pytest

from tests.helpers import REPO

NOTEBOOK = REPO / "notebooks" / "mnist_lstm.ipynb"


@pytest.mark.slow
def test_notebook_executes_and_shows_its_figures(tmp_path, mnist_dir, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  from PIL import Image

  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:  # committed without outputs: small diffs, nothing stale
    assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None)
  where = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  nb.cells.insert(where + 1, nbformat.v4.new_code_cell(
      f"EPOCHS = 1\nHIDDEN = 16\nTRAIN_IMAGES = 3000\nWORKDIR = {str(tmp_path / 'run')!r}\n"
      "DATA_SOURCE = 'idx'"))
  monkeypatch.setenv("RNNJAX_MANUAL_DIR", str(mnist_dir))
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()  # raises CellExecutionError with the cell's traceback on any failure

  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
  assert "epoch 1: train loss" in text and "evaluated now: test loss" in text
  assert "test digits misclassified" in text
  images = [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if "image/png" in o.get("data", {})]
  # per-step loss, curves (loop), confusion, curves (workdir), misclassified grid, 2 x row by row
  assert len(images) == 7, len(images)
  for b64 in images:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
      assert im.size[0] >= 400 and len(np.unique(np.asarray(im.convert("L")))) > 20
  assert (tmp_path / "run" / "checkpoints").is_dir() and (tmp_path / "run" / "curves.png").is_file()
