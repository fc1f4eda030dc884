"""``edgekit bundle``: pack a deploy bundle into a tar archive, unpack one safely."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.archive import WRITE_MODES, ArchiveLimits, pack, unpack

bundle_app = typer.Typer(
    help="Move bundles between machines: pack a bundle into a tar archive, unpack an archive safely.",
    no_args_is_help=True,
)

_MIB = 1 << 20


@bundle_app.command("pack")
def pack_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (written by `edgekit export --out`); its files "
                                           "are checked against the manifest hashes first.")],
    archive: Annotated[Path, typer.Argument(help=f"Archive to write; the suffix picks the compression: "
                                            f"{', '.join(WRITE_MODES)}. Written to a temporary file and "
                                            "renamed, so an interrupted pack leaves no partial archive.")],
) -> None:
    """Pack a verified bundle into a tar archive (plain files only, owner 0, modes 0644/0755)."""
    path = pack(bundle, archive)
    typer.echo(f"{bundle} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")


@bundle_app.command("unpack")
def unpack_command(
    archive: Annotated[Path, typer.Argument(help="A bundle archive (.tar, .tar.gz, .tgz, .tar.xz, .tar.bz2), "
                                            "possibly from someone else.")],
    dest: Annotated[Path, typer.Argument(help="Bundle directory to create; an existing bundle there is replaced, "
                                         "any other non-empty directory is refused.")],
    max_member_mb: Annotated[int, typer.Option(min=1, help="Refuse a file larger than this (MiB).")]
    = ArchiveLimits.max_member_bytes // _MIB,
    max_total_mb: Annotated[int, typer.Option(min=1, help="Refuse archives holding more than this in all (MiB).")]
    = ArchiveLimits.max_total_bytes // _MIB,
    max_members: Annotated[int, typer.Option(min=1, help="Refuse archives with more entries than this.")]
    = ArchiveLimits.max_members,
) -> None:
    """Unpack a bundle archive safely, then verify its manifest hashes before it appears at DEST.

    Refused, naming the member: absolute paths, '..', symbolic and hard links, devices and
    FIFOs, members over the size limits, duplicate names. Nothing is written to DEST unless
    the whole archive unpacks and verifies.
    """
    limits = ArchiveLimits(max_member_bytes=max_member_mb * _MIB, max_total_bytes=max_total_mb * _MIB,
                           max_members=max_members)
    manifest = unpack(archive, dest, limits)
    typer.echo(f"{archive} -> {dest}/ ({manifest.model}, {manifest.task}, {manifest.target}; "
               f"{len(manifest.graphs)} graph file(s) verified)")
