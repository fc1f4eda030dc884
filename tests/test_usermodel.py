"""Loading a user's own network from ``path/to/file.py:factory``."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.usermodel import UserModelError, is_user_model_ref, load_user_model, parse_user_model_ref

NET = """
import torch
from torch import nn
from helper import WIDTH  # a neighbour module next to the file


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, WIDTH, 3)
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def build(num_classes: int = 7) -> nn.Module:
    return Net(num_classes)


def no_classes() -> nn.Module:
    return Net(3)


def not_a_module():
    return {"conv": 1}


NOT_CALLABLE = 3
"""


@pytest.fixture()
def net_file(tmp_path: Path) -> Path:
    (tmp_path / "helper.py").write_text("WIDTH = 5\n")
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(NET))
    return path


def test_reference_syntax() -> None:
    assert is_user_model_ref("nets/my_model.py:build")
    assert is_user_model_ref(r"C:\nets\my_model.py:build")  # the last colon splits
    assert not is_user_model_ref("shufflenetv2-1.0")
    assert not is_user_model_ref("my_model.py")
    assert not is_user_model_ref("my_model.py:not-an-identifier")
    with pytest.raises(UserModelError, match="form 'path/to/file.py:factory'"):
        parse_user_model_ref("my_model:build")


def test_factory_builds_the_module_with_and_without_num_classes(net_file: Path) -> None:
    model = load_user_model(f"{net_file}:build")
    assert isinstance(model, nn.Module) and model.fc.out_features == 7 and model.conv.out_channels == 5
    model = load_user_model(f"{net_file}:build", num_classes=4)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    assert parse_user_model_ref(f"{net_file}:build").name == "my_model:build"
    assert str(net_file.parent) not in sys.path  # the folder is on sys.path only while loading


def test_files_with_the_same_name_do_not_collide(tmp_path: Path) -> None:
    for width in (2, 3):
        folder = tmp_path / f"v{width}"
        folder.mkdir()
        (folder / "model.py").write_text(
            f"from torch import nn\nclass M(nn.Linear):\n    pass\ndef build():\n    return M({width}, 1)\n")
    first = load_user_model(f"{tmp_path / 'v2' / 'model.py'}:build")
    second = load_user_model(f"{tmp_path / 'v3' / 'model.py'}:build")
    assert (first.in_features, second.in_features) == (2, 3)
    assert type(first).__module__ != type(second).__module__
    assert sys.modules[type(first).__module__].__file__ == str(tmp_path / "v2" / "model.py")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserModelError, match=r"model file '.*absent\.py' does not exist"):
        load_user_model(f"{tmp_path / 'absent.py'}:build")


def test_missing_attribute_lists_what_the_file_defines(net_file: Path) -> None:
    with pytest.raises(UserModelError, match=r"has no attribute 'biuld'.*build, no_classes, not_a_module"):
        load_user_model(f"{net_file}:biuld")


def test_factory_must_return_a_module(net_file: Path) -> None:
    with pytest.raises(UserModelError, match="returned a dict; it must return a torch.nn.Module"):
        load_user_model(f"{net_file}:not_a_module")
    with pytest.raises(UserModelError, match="is a int, not a callable factory"):
        load_user_model(f"{net_file}:NOT_CALLABLE")


def test_num_classes_for_a_factory_without_the_parameter_is_refused(net_file: Path) -> None:
    assert load_user_model(f"{net_file}:no_classes").fc.out_features == 3
    with pytest.raises(UserModelError, match="takes no 'num_classes' argument; drop --num-classes"):
        load_user_model(f"{net_file}:no_classes", num_classes=10)


def test_import_errors_in_the_file_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("def build(:\n")
    with pytest.raises(UserModelError, match=r"importing '.*broken\.py' failed: SyntaxError"):
        load_user_model(f"{path}:build")
