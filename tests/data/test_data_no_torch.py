"""edgekit.data and edgekit.metrics run on a board without torch (the SDK imports them)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is not installed on this board')
sys.meta_path.insert(0, Block())
import numpy as np
from PIL import Image
from edgekit.data import Preprocess, open_dataset
from edgekit.metrics import ConfusionMatrix, topk_accuracy
x, meta = Preprocess(imgsz=(32, 32), resize="letterbox")(Image.new("RGB", (64, 48)))
cm = ConfusionMatrix(2)
cm.update(np.zeros((4, 4), int), np.zeros((4, 4), int))
assert x.shape == (1, 3, 32, 32) and cm.miou() == 1.0
assert topk_accuracy(np.eye(3), np.arange(3), k=(1,))[1] == 1.0
assert 'torch' not in sys.modules
print('ok')
"""


def test_data_and_metrics_import_without_torch() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
