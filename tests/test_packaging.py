"""The package installs and imports as the design card says, from source and from a wheel."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"edgekit": "edgekit", "edgekit.exporters": "exporters",
          "edgekit.runtimes": "runtimes", "edgekit.calib": "calib"}


def _declared_packages() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == MAPPED
    return set(config["packages"])


def test_every_source_package_is_declared() -> None:
    found = set()
    for package, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    assert found == _declared_packages()


def test_mapped_packages_import_from_their_folders() -> None:
    import edgekit.calib
    import edgekit.exporters
    import edgekit.runtimes

    for module, folder in ((edgekit.exporters, "exporters"), (edgekit.runtimes, "runtimes"),
                           (edgekit.calib, "calib")):
        assert Path(module.__file__).parent == ROOT / folder


def test_runtimes_import_without_torch() -> None:
    # A meta-path finder that refuses torch stands in for a board where torch is absent.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is not installed on this board')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edgekit.runtimes\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n"
        "    import torch\n"
        "except ImportError:\n"
        "    print('torch blocked')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch blocked"


@pytest.mark.slow
def test_wheel_installs_and_imports_in_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = dist.glob("edgekit-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True)
    # Dependencies (numpy, torch) come from the test venv, appended after the fresh venv's own
    # site-packages so the wheel's edgekit wins; .pth files there are not executed, so the
    # editable install's finder stays off.
    site = Path(sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"])
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import edgekit, edgekit.exporters, edgekit.runtimes, edgekit.calib, edgekit.models\n"
        "from edgekit.models import list_models\n"
        "print(edgekit.runtimes.__file__)\n"
        "print(len(list_models()))\n"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    runtimes_file, n_models = out.stdout.split()
    assert Path(runtimes_file).is_relative_to(env_dir)
    assert int(n_models) >= 25
