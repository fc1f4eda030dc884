"""``edgekit bundle pack/unpack``: bundles travel as tar archives; an archive from elsewhere cannot escape.

Each hostile archive holds a real exported bundle plus one bad member; unpack must refuse it,
name the member, write nothing at the destination or outside it, and leave no temporary
directory behind.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit.archive import ArchiveLimits, pack, unpack
from edgekit.bundle import MANIFEST_NAME
from edgekit.cli import main
from edgekit.errors import BundleError
from edgekit.runtimes import load


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real onnx-fp32 bundle of a tiny classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    out = tmp_path_factory.mktemp("archive") / "bundle"
    edgekit.export(model, out=out, target="onnx-fp32", imgsz=(16, 16), labels=["a", "b", "c"])
    return out


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def _predict(bundle_dir: Path) -> np.ndarray:
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    return load(bundle_dir, backend="onnxruntime", threads=1).predict(image).scores


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"])
def test_pack_unpack_round_trip(bundle: Path, tmp_path: Path, suffix: str) -> None:
    archive = pack(bundle, tmp_path / f"b{suffix}")
    assert archive.is_file() and _leftovers(archive) == []
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    assert sorted(m.name for m in members) == sorted(p.name for p in bundle.iterdir())
    assert all(m.isreg() and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o644 for m in members)
    manifest = unpack(archive, tmp_path / "dest")
    assert manifest.model == "Sequential" and manifest.labels == ("a", "b", "c")
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == sorted(p.name for p in bundle.iterdir())
    np.testing.assert_array_equal(_predict(tmp_path / "dest"), _predict(bundle))
    assert _leftovers(tmp_path / "dest") == []


def test_unpack_replaces_a_bundle_and_refuses_other_folders(bundle: Path, tmp_path: Path) -> None:
    archive = pack(bundle, tmp_path / "b.tar")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(BundleError, match="exists and is not an edgekit bundle"):
        unpack(archive, photos)
    assert [p.name for p in photos.iterdir()] == ["cat.jpg"]
    unpack(archive, tmp_path / "dest")
    (tmp_path / "dest" / "passes.json").write_text("{}")  # an older bundle there is replaced whole
    unpack(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "passes.json").read_bytes() == (bundle / "passes.json").read_bytes()


def test_pack_refuses_a_broken_bundle_and_links(bundle: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    with open(broken / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"'model.onnx' in bundle '.*' does not match its manifest entry"):
        pack(broken, tmp_path / "b.tar")
    linked = Path(shutil.copytree(bundle, tmp_path / "linked"))
    (linked / "notes.txt").symlink_to("/etc/hostname")
    with pytest.raises(BundleError, match=r"^'notes.txt' in bundle '.*' is not a regular file or folder \(a link or a "
                                          r"special file\); a bundle holds plain files only\."):
        pack(linked, tmp_path / "b.tar")
    with pytest.raises(BundleError, match=r"has an unknown suffix; use one of \.tar, \.tar\.gz, \.tgz"):
        pack(bundle, tmp_path / "b.zip")
    with pytest.raises(BundleError, match="would be written inside the bundle"):
        pack(bundle, bundle / "self.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "linked"]  # no archive, no temporary file


def _hostile(bundle: Path, archive: Path, add: Callable[[tarfile.TarFile], None], *, first: bool = False) -> Path:
    """A tar of the bundle's files plus what ``add`` puts in (before or after them)."""
    with tarfile.open(archive, "w") as tar:
        if first:
            add(tar)
        for path in sorted(bundle.iterdir()):
            tar.add(path, arcname=path.name)
        if not first:
            add(tar)
    return archive


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> Callable:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    return add


ESCAPES = {  # name -> (member, the message's tail)
    "parent traversal": (_member("../escaped.txt", data=b"x"),
                         "file name '../escaped.txt' points outside the bundle directory"),
    "nested traversal": (_member("sub/../../escaped.txt", data=b"x"),
                         "file name 'sub/../../escaped.txt' points outside the bundle directory"),
    "absolute path": (_member("/tmp/edgekit-escaped.txt", data=b"x"),
                      "file name '/tmp/edgekit-escaped.txt' points outside the bundle directory"),
    "backslash path": (_member("..\\escaped.txt", data=b"x"),
                       "file name '..\\escaped.txt' points outside the bundle directory"),
    "symlink out": (_member("model.onnx.link", tarfile.SYMTYPE, link="/etc/passwd"),
                    "member 'model.onnx.link' is a symbolic link to '/etc/passwd'; a bundle archive holds regular "
                    "files and folders only."),
    "relative symlink": (_member("escape", tarfile.SYMTYPE, link="../../.."),
                         "member 'escape' is a symbolic link to '../../..'"),
    "hard link out": (_member("passwd", tarfile.LNKTYPE, link="/etc/passwd"),
                      "member 'passwd' is a hard link to '/etc/passwd'"),
    "hard link in": (_member("copy.onnx", tarfile.LNKTYPE, link="model.onnx"),
                     "member 'copy.onnx' is a hard link to 'model.onnx'"),
    "character device": (_member("null", tarfile.CHRTYPE), "member 'null' is a character device;"),
    "fifo": (_member("pipe", tarfile.FIFOTYPE), "member 'pipe' is a FIFO;"),
    "duplicate name": (_member("passes.json", data=b"{}"),
                       "member 'passes.json' appears twice; a later copy would silently replace the first."),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_unpack_refuses_members_that_escape(bundle: Path, tmp_path: Path, case: str) -> None:
    add, tail = ESCAPES[case]
    archive = _hostile(bundle, tmp_path / "hostile.tar", add)
    dest = tmp_path / "out" / "dest"
    with pytest.raises(BundleError) as info:
        unpack(archive, dest)
    assert tail in str(info.value) and str(info.value).startswith(f"archive '{archive}' member '")
    assert not dest.exists() and _leftovers(dest) == []
    assert not (tmp_path / "out" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/edgekit-escaped.txt").exists()


def test_unpack_refuses_a_symlink_that_a_later_member_would_write_through(bundle: Path, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        _member("sub", tarfile.SYMTYPE, link=str(tmp_path / "victim"))(tar)
        _member("sub/owned.txt", data=b"x")(tar)

    (tmp_path / "victim").mkdir()
    with pytest.raises(BundleError, match=r"member 'sub' is a symbolic link to"):
        unpack(_hostile(bundle, tmp_path / "h.tar", add, first=True), tmp_path / "dest")
    assert list((tmp_path / "victim").iterdir()) == [] and not (tmp_path / "dest").exists()


@pytest.mark.parametrize("limit", ["member", "total", "count"])
def test_unpack_refuses_oversized_archives(bundle: Path, tmp_path: Path, limit: str) -> None:
    archive = _hostile(bundle, tmp_path / "big.tar", _member("big.bin", data=b"\0" * 300_000))
    limits = {"member": ArchiveLimits(max_member_bytes=200_000),
              "total": ArchiveLimits(max_total_bytes=sum(p.stat().st_size for p in bundle.iterdir()) + 100_000),
              "count": ArchiveLimits(max_members=3)}[limit]
    message = {"member": "member 'big.bin' is 300000 bytes, over the limit of 200000 bytes per file (max_member_bytes)",
               "total": f"member 'big.bin' takes the archive past {limits.max_total_bytes} bytes in all",
               "count": "has more than 3 members (max_members); refusing to unpack it."}[limit]
    with pytest.raises(BundleError) as info:
        unpack(archive, tmp_path / "dest", limits)
    assert message in str(info.value)
    assert not (tmp_path / "dest").exists() and _leftovers(tmp_path / "dest") == []


def test_unpack_refuses_truncated_and_tampered_archives(bundle: Path, tmp_path: Path) -> None:
    raw = pack(bundle, tmp_path / "b.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleError, match=rf"^'{tmp_path / 'cut.tar.gz'}' is not a readable tar archive \(.*\); it "
                                          r"is truncated, corrupt or another format\. Nothing was written to"):
        unpack(tmp_path / "cut.tar.gz", tmp_path / "dest")
    (tmp_path / "notes.tar").write_text("just text")
    with pytest.raises(BundleError, match="is not a readable tar archive"):
        unpack(tmp_path / "notes.tar", tmp_path / "dest")

    tampered = tmp_path / "tampered.tar"
    with tarfile.open(tampered, "w") as tar:
        for path in sorted(bundle.iterdir()):
            if path.name != "model.onnx":
                tar.add(path, arcname=path.name)
        _member("model.onnx", data=b"not the exported graph")(tar)
    with pytest.raises(BundleError, match=rf"^archive '{tampered}' does not hold a valid bundle: 'model.onnx' in "
                                          r"bundle '.*' does not match its manifest entry"):
        unpack(tampered, tmp_path / "dest")
    without_manifest = tmp_path / "none.tar"
    with tarfile.open(without_manifest, "w") as tar:
        _member("model.onnx", data=b"x")(tar)
    with pytest.raises(BundleError, match=r"does not hold a valid bundle: '.*manifest.json' does not exist"):
        unpack(without_manifest, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and _leftovers(tmp_path / "dest") == []


def test_unpack_accepts_an_archive_made_with_the_tar_command(bundle: Path, tmp_path: Path) -> None:
    # `tar -C bundle -czf b.tgz .` stores "./" and "./manifest.json": the root entry is skipped.
    archive = tmp_path / "b.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=".")
    assert unpack(archive, tmp_path / "dest").task == "classify"
    assert (tmp_path / "dest" / MANIFEST_NAME).is_file()


def test_cli_pack_and_unpack(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bundle", "pack", str(bundle), str(tmp_path / "b.tgz")]) == 0
    assert f"{bundle} -> {tmp_path / 'b.tgz'} (" in capsys.readouterr().out
    assert main(["bundle", "unpack", str(tmp_path / "b.tgz"), str(tmp_path / "dest")]) == 0
    assert "(Sequential, classify, onnx-fp32; 1 graph file(s) verified)" in capsys.readouterr().out
    hostile = _hostile(bundle, tmp_path / "h.tar", _member("../evil", data=b"x"))
    assert main(["bundle", "unpack", str(hostile), str(tmp_path / "dest2")]) == 1
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"BundleError: archive '{hostile}' member '../evil': file name '../evil' points outside")
    assert len(printed.splitlines()) == 1 and not (tmp_path / "dest2").exists()
    assert main(["bundle", "unpack", "--help"]) == 0
    assert "--max-member-mb" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "dest")) == sorted(os.listdir(bundle))
