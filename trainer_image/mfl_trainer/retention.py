"""Version retention: after publishing, delete the versions beyond the newest ``retainVersions``.

A version exists iff its ``metadata.json`` does, so a version is deleted metadata first: a deletion cut
short leaves an invisible remainder (servers, the fetch init container and the operator never see half a
version), which a later run deletes with the rest of the old versions.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mfl_contracts.objectstore import ArtifactStore
from mfl_contracts.storage import METADATA_FILE, version_dir


@dataclass
class VersionListing:
    """What the store holds under ``<model>/versions/``."""

    complete: set[int] = field(default_factory=set)  # with metadata.json: visible versions
    partial: set[int] = field(default_factory=set)  # without: an upload in progress or a deletion cut short
    keys: dict[int, list[str]] = field(default_factory=dict)  # store keys per version (object stores)


def versions_to_delete(
    complete: Iterable[int], partial: Iterable[int], keep: int, protected: Iterable[int]
) -> list[int]:
    """The versions to delete, oldest first: complete ones beyond the newest ``keep``, and partial ones
    older than every kept one (a partial version newer than that may be another trainer's upload in
    progress). ``protected`` versions are never deleted; ``keep`` <= 0 keeps everything."""
    if keep <= 0:
        return []
    complete, protected = set(complete), set(protected)
    newest = sorted(complete, reverse=True)[:keep]
    floor = min(newest, default=0)
    doomed = {v for v in complete if v not in newest} | {v for v in partial if v < floor}
    return sorted(doomed - protected)


# --- a volume ------------------------------------------------------------------------------------


def volume_listing(root: Path, model: str) -> VersionListing:
    listing = VersionListing()
    versions = version_dir(root, model, 0).parent
    for folder in versions.iterdir() if versions.is_dir() else []:
        if folder.is_dir() and folder.name.isdigit():  # staging folders (".tmp-...") are the registry's
            group = listing.complete if (folder / METADATA_FILE).is_file() else listing.partial
            group.add(int(folder.name))
    return listing


def delete_volume_versions(root: Path, model: str, versions: Iterable[int]) -> None:
    for version in versions:
        folder = version_dir(root, model, version)
        (folder / METADATA_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder)


# --- an object store -----------------------------------------------------------------------------


def store_listing(store: ArtifactStore, model: str) -> VersionListing:
    listing = VersionListing()
    prefix = f"{model}/versions/"
    for info in store.list(prefix):
        name, _, rest = info.key[len(prefix) :].partition("/")
        if name.isdigit() and rest:
            listing.keys.setdefault(int(name), []).append(info.key)
            if rest == METADATA_FILE:
                listing.complete.add(int(name))
    listing.partial = set(listing.keys) - listing.complete
    return listing


def delete_store_versions(store: ArtifactStore, model: str, listing: VersionListing, versions: Iterable[int]) -> None:
    for version in versions:
        metadata = f"{model}/versions/{version}/{METADATA_FILE}"
        store.delete([metadata])  # first, alone: the version disappears before its files do
        store.delete([key for key in listing.keys.get(version, []) if key != metadata])
