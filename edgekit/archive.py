"""Bundles as tar archives: ``pack`` a bundle to send it, ``unpack`` one that someone sent you.

An archive from elsewhere is untrusted input. ``unpack`` reads it member by member and
refuses, naming the member, anything that could write outside the destination or exhaust
the disk: absolute names, ``..``, backslashes or drive letters, symbolic and hard links,
device files and FIFOs, a member over ``max_member_bytes``, more than ``max_total_bytes`` in
all, more than ``max_members`` entries, and a name that appears twice. Files are written by
this module (``O_EXCL | O_NOFOLLOW``, mode 0644), never by ``tarfile.extract``, into a
temporary directory beside the destination; the bundle's manifest hashes are verified there,
and only then is it renamed into place (:func:`edgekit.bundle.atomic_bundle`), so a refused,
truncated or interrupted unpack leaves the destination as it was.

``pack`` verifies the bundle first (a broken bundle is not shipped), writes the archive to a
temporary file beside it and renames it into place.

Standard library only, like :mod:`edgekit.bundle`: boards unpack bundles without torch.
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgekit.bundle import (Manifest, atomic_bundle, check_member_path, remove_stale_siblings, sibling_prefix,
                            signals_held, verify)
from edgekit.errors import BundleError

_CHUNK = 1 << 20
# Archive suffix -> tarfile write mode; reading detects the compression itself ("r:*").
WRITE_MODES: dict[str, str] = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.xz": "w:xz", ".tar.bz2": "w:bz2"}
# tarfile member type -> what to call it in a refusal.
_REFUSED_TYPES: dict[bytes, str] = {
    tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO", tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


@dataclass(frozen=True)
class ArchiveLimits:
    """What ``unpack`` accepts; anything beyond is refused before it is written.

    Args:
        max_member_bytes: largest single file (a single-file ONNX stays under 2 GiB).
        max_total_bytes: all files together.
        max_members: number of entries (files and folders).
    """

    max_member_bytes: int = 2 << 30
    max_total_bytes: int = 8 << 30
    max_members: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_member_bytes", "max_total_bytes", "max_members"):
            if getattr(self, name) < 1:
                raise BundleError(f"{name} must be at least 1, got {getattr(self, name)}.")


def pack(bundle: str | Path, archive: str | Path) -> Path:
    """Write the verified bundle directory ``bundle`` to the tar archive ``archive``; returns its path.

    The compression follows the suffix (``WRITE_MODES``: ``.tar``, ``.tar.gz``/``.tgz``,
    ``.tar.xz``, ``.tar.bz2``). Members are the bundle's files with names relative to it,
    owner 0 and modes 0644/0755, so the archive carries nothing of the machine that made it.

    Raises:
        BundleError: not a valid bundle (missing manifest, a file that does not match its
            hash), a symbolic link or special file inside it, an unknown suffix, or the
            archive placed inside the bundle.
    """
    bundle, archive = Path(bundle).absolute(), Path(archive).absolute()
    mode = _write_mode(archive)
    verify(bundle)
    if archive.is_relative_to(bundle):
        raise BundleError(f"the archive '{archive}' would be written inside the bundle '{bundle}'; put it elsewhere.")
    files = list(_bundle_entries(bundle))
    archive.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(archive)
    tmp: Path | None = None
    try:
        with signals_held():  # a Ctrl-C between mkstemp and the assignment would leak the file
            fd, name = tempfile.mkstemp(prefix=sibling_prefix(archive, "tmp"), dir=archive.parent)
            tmp = Path(name)
        # mode is one of WRITE_MODES' values; typeshed's overloads only take them as literals
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode=mode,  # type: ignore[call-overload]
                                                      format=tarfile.PAX_FORMAT) as tar:
            for path in files:
                info = _member_info(tar, bundle, path)
                if info.isdir():
                    tar.addfile(info)
                    continue
                with open(path, "rb") as data:
                    tar.addfile(info, data)
        tmp.chmod(0o644)
        os.replace(tmp, archive)
    except BaseException:  # Ctrl-C included: never leave a half-written archive behind
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return archive


def unpack(archive: str | Path, dest: str | Path, limits: ArchiveLimits | None = None) -> Manifest:
    """Extract the bundle archive ``archive`` into the directory ``dest``, safely; returns its manifest.

    ``dest`` must not exist, be empty, or hold a bundle (which is replaced, as by an export).

    Raises:
        BundleError: not a readable tar archive (truncated, corrupt), a refused member (see
            the module docstring; the message names it), or an extracted bundle whose files
            do not match its manifest. ``dest`` is then left as it was.
    """
    archive, limits = Path(archive), limits or ArchiveLimits()
    if not archive.is_file():
        raise BundleError(f"archive '{archive}' does not exist or is not a file.")
    with atomic_bundle(dest) as tmp:
        try:
            with tarfile.open(archive, mode="r:*") as tar:
                _extract(tar, tmp, archive, limits)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # zlib/lzma errors are OSError/ValueError
            raise BundleError(f"'{archive}' is not a readable tar archive ({type(exc).__name__}: {exc}); it is "
                              f"truncated, corrupt or another format. Nothing was written to '{dest}'.") from exc
        try:
            return verify(tmp)
        except BundleError as exc:
            raise BundleError(f"archive '{archive}' does not hold a valid bundle: {exc} Nothing was written to "
                              f"'{dest}'.") from exc


def _write_mode(archive: Path) -> str:
    name = archive.name.lower()
    for suffix, mode in sorted(WRITE_MODES.items(), key=lambda item: -len(item[0])):
        if name.endswith(suffix):
            return mode
    raise BundleError(f"archive '{archive.name}' has an unknown suffix; use one of {', '.join(WRITE_MODES)}.")


def _bundle_entries(bundle: Path) -> Iterator[Path]:
    """Folders and regular files under ``bundle``, sorted; a link or special file is refused."""
    for path in sorted(bundle.rglob("*")):
        kind = path.lstat().st_mode
        if stat.S_ISLNK(kind) or not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
            raise BundleError(f"'{path.relative_to(bundle)}' in bundle '{bundle}' is not a regular file or folder "
                              "(a link or a special file); a bundle holds plain files only. Remove it and re-pack.")
        yield path


def _member_info(tar: tarfile.TarFile, bundle: Path, path: Path) -> tarfile.TarInfo:
    info = tar.gettarinfo(str(path), arcname=path.relative_to(bundle).as_posix())
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _extract(tar: tarfile.TarFile, root: Path, archive: Path, limits: ArchiveLimits) -> None:
    seen: set[str] = set()
    total = 0
    for count, member in enumerate(tar, start=1):
        where = f"archive '{archive}' member '{member.name}'"
        if count > limits.max_members:
            raise BundleError(f"archive '{archive}' has more than {limits.max_members} members (max_members); "
                              "refusing to unpack it.")
        if member.isdir() and member.name in (".", "./"):
            continue  # the archive's own root ("." from `tar -C bundle -cf x.tar .`)
        name = _member_name(member, where)
        if name in seen:
            raise BundleError(f"{where} appears twice; a later copy would silently replace the first. "
                              "Refusing to unpack it.")
        seen.add(name)
        if member.isdir():
            _make_dir(root, name, where)
            continue
        if not member.isreg():
            kind = _REFUSED_TYPES.get(member.type, f"of tar type {member.type!r}")
            target = f" to '{member.linkname}'" if member.issym() or member.islnk() else ""
            raise BundleError(f"{where} is {kind}{target}; a bundle archive holds regular files and folders only. "
                              "Refusing to unpack it.")
        if member.size > limits.max_member_bytes:
            raise BundleError(f"{where} is {member.size} bytes, over the limit of {limits.max_member_bytes} bytes per "
                              "file (max_member_bytes); refusing to unpack it.")
        total += member.size
        if total > limits.max_total_bytes:
            raise BundleError(f"{where} takes the archive past {limits.max_total_bytes} bytes in all "
                              "(max_total_bytes); refusing to unpack it.")
        _write_file(tar, member, root, name, where)


def _member_name(member: tarfile.TarInfo, where: str) -> str:
    """The member's name without a leading ``./``; absolute names, ``..`` and backslashes are refused."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/") if member.isdir() else name
    try:
        check_member_path(name, where)
    except BundleError as exc:
        raise BundleError(f"{exc} Refusing to unpack it.") from None
    if name != "/".join(PurePosixPath(name).parts):  # "a//b", "a/./b"
        raise BundleError(f"{where} is not a plain relative path; refusing to unpack it.")
    return name


def _make_dir(root: Path, name: str, where: str) -> None:
    path = root
    for part in PurePosixPath(name).parts:
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise BundleError(f"{where} clashes with a file of the same name in the archive.")
        path.mkdir(mode=0o755, exist_ok=True)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path, name: str, where: str) -> None:
    target = root / name
    if target.parent != root:
        _make_dir(root, str(PurePosixPath(name).parent), where)
    source = tar.extractfile(member)
    if source is None:
        raise BundleError(f"{where} has no data to read.")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise BundleError(f"{where} clashes with another member of the same name.") from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            written += len(chunk)
            out.write(chunk)
    if written != member.size:
        raise BundleError(f"{where} ends after {written} of its {member.size} bytes: the archive is truncated.")
