"""Where one training run reads and writes (design: "Trainer").

Volume mode: the volume itself, as always. S3 mode (``MFL_S3_BUCKET``): a local mirror in scratch space
(``$TMPDIR/mfl-store/...``) of exactly what the run reads (base data, the champion, the log segments of the
data window's days, the labels), so the path-based reader, trainer and registry run unchanged on it; the
version written there is then published to the store with ``metadata.json`` last. With
``MFL_DATABASE_URL`` the labels come from the ledger, written as feedback JSON lines in scratch space.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from mfl_contracts import ledger
from mfl_contracts.objectstore import ArtifactStore, NotFound, S3Store, StoreError, s3_settings_from_env
from mfl_contracts.storage import METADATA_FILE, version_dir

from . import identity, retention, revive
from .config import TrainerConfig
from .datasource import dumps_line, utc_day
from .errors import TrainerError
from .registry import existing_metadata

Progress = Callable[[str], None]
SCRATCH_FOLDER = "mfl-store"
LEDGER_FILE = "ledger.jsonl"  # the labels of one prediction day, as read from the ledger
LOG_FOLDERS = ("predictions", "feedback")


class Workspace(AbstractContextManager["Workspace"]):
    """The storage root the run uses, where its labels are, and how a written version reaches the store."""

    def __init__(self, root: Path, model: str, store: ArtifactStore | None = None, scratch: Path | None = None) -> None:
        self.root = root  # the path-based code's storage root: the volume, or the mirror
        self.model = model
        self.store = store  # the object store the mirror came from; None in volume mode
        self.scratch = scratch  # removed on exit
        self.feedback_dirs = [root / model / "feedback"]
        # The run's config as the workspace read for it: a published version's data window (identity.pinned).
        self.config: TrainerConfig | None = None

    def __exit__(self, *exc_info: object) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def where(self, path: Path) -> str:
        """A local path as the user knows it: under the volume, or the store's key."""
        if self.store is None:
            return str(path)
        return f"{self.store.description}: {path.relative_to(self.root).as_posix()}"

    def publish(self, version: int, progress: Progress) -> dict[str, Any] | None:
        """Upload the version written locally; when the store already has it (a retry after publishing),
        upload nothing and return its metadata (the local folder then holds the store's version)."""
        if self.store is None:
            return None  # the registry's rename on the volume published it
        with store_errors():
            return publish(self.store, self.root, self.model, version, progress)

    def retain(self, config: TrainerConfig, progress: Progress) -> list[int]:
        """Delete the versions beyond the newest ``retainVersions`` (never the protected ones, this run's
        version or its champion). A failure is reported, not raised: the version is published, and the
        next run deletes what this one could not."""
        if config.retain_versions <= 0:
            return []
        protected = {*config.protected_versions, config.version}
        if config.parent_version is not None:
            protected.add(config.parent_version)  # the champion this run compared against: serving, most likely
        try:
            deleted = self._retain(config.retain_versions, protected)
        except (StoreError, OSError) as error:
            progress(f"note: version retention failed: {error}")
            return []
        if deleted:
            progress(f"retention: deleted versions {deleted} (keeping the newest {config.retain_versions})")
        return deleted

    def _retain(self, keep: int, protected: set[int]) -> list[int]:
        if self.store is None:
            listing = retention.volume_listing(self.root, self.model)
        else:
            listing = retention.store_listing(self.store, self.model)
        doomed = retention.versions_to_delete(listing.complete, listing.partial, keep, protected)
        if self.store is None:
            retention.delete_volume_versions(self.root, self.model, doomed)
        else:
            retention.delete_store_versions(self.store, self.model, listing, doomed)
        return doomed


def open_workspace(config: TrainerConfig, progress: Progress, env: Mapping[str, str] | None = None) -> Workspace:
    """The run's workspace for the env contract (design: "Env contract"); s3 mode mirrors the inputs now.

    When the version is published already, the workspace holds the data window it was trained on (its
    ``config`` is pinned to it: identity.pinned), so a re-created Job compares the inputs that made it."""
    env = os.environ if env is None else env
    try:
        settings = s3_settings_from_env(env)
    except ValueError as error:
        raise TrainerError(f"artifact store settings: {error}") from error
    database = env.get("MFL_DATABASE_URL", "").strip()
    if settings is None:
        published = existing_metadata(config.storage_root, config.model, config.version)
        return _volume_workspace(identity.pinned(config, published, progress), progress, database)
    store = S3Store(settings)
    scratch = new_scratch(config)
    try:
        space = Workspace(scratch, config.model, store, scratch)
        with store_errors():
            store.check()  # read-only credentials fail now, not after the training
            published = remote_metadata(store, config.model, config.version)
            config = space.config = identity.pinned(config, published, progress)
            mirror_inputs(store, scratch, config, progress)
        if database:
            mirror_labels(database, scratch / config.model / "feedback", config, progress)
        else:  # the operator always sets both; a hand-made Job may not
            progress("note: s3 mode without MFL_DATABASE_URL: no labels but feedback objects in the store")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return space


def _volume_workspace(config: TrainerConfig, progress: Progress, database: str) -> Workspace:
    space = Workspace(config.storage_root, config.model)
    space.config = config
    if database:
        # The ledger's labels go to scratch space, never to the shared volume; the volume's feedback
        # folder is still read (labels logged before the loop moved to the ledger).
        space.scratch = new_scratch(config)
        labels = space.scratch / config.model / "feedback"
        try:
            mirror_labels(database, labels, config, progress)
        except BaseException:
            shutil.rmtree(space.scratch, ignore_errors=True)
            raise
        space.feedback_dirs.append(labels)
    return space


def new_scratch(config: TrainerConfig) -> Path:
    base = Path(tempfile.gettempdir()) / SCRATCH_FOLDER  # $TMPDIR: an emptyDir in the Job's Pod
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{config.model}-{config.version}-", dir=base))


@contextmanager
def store_errors() -> Iterator[None]:
    """StoreError -> TrainerError: the version fails with the store's message (it names the store)."""
    try:
        yield
    except StoreError as error:
        raise TrainerError(f"artifact store {error}") from error


# --- mirroring -----------------------------------------------------------------------------------


def mirror_inputs(store: ArtifactStore, root: Path, config: TrainerConfig, progress: Progress) -> int:
    """Copy what the run reads from ``store`` to ``root`` (same layout); the number of objects copied."""
    model = config.model
    prefixes = [f"{model}/data/"]
    if config.parent_version is not None:
        prefixes.append(f"{model}/versions/{config.parent_version}/")
    if remote_metadata(store, model, config.version) is not None:
        prefixes.append(f"{model}/versions/{config.version}/")  # a retry: compare with what was published
    if config.parent_version is not None and config.revive_versions > 0:  # the past versions it may revive
        published = retention.store_listing(store, model).complete
        prefixes += [f"{model}/versions/{v}/" for v in revive.candidate_versions(published, config)]
    prefixes += [f"{model}/{folder}/{day}" for folder in LOG_FOLDERS for day in window_partitions(config)]
    copied = sum(store.download(prefix, root / prefix) for prefix in prefixes)
    progress(f"mirrored {copied} objects from {store.description} to {root}")
    return copied


def window_partitions(config: TrainerConfig) -> list[str]:
    """The day partitions (``date=YYYY-MM-DD/``) the data window overlaps; [""] (every day) if unbounded."""
    if config.window_start is None:
        return [""]
    first, last = utc_day(config.window_start), utc_day(config.now)
    return [f"date={first + timedelta(days=n)}/" for n in range((last - first).days + 1)]


def remote_metadata(store: ArtifactStore, model: str, version: int) -> dict[str, Any] | None:
    """The published version's metadata; None while it is not published (it exists iff metadata.json does)."""
    key = f"{model}/versions/{version}/{METADATA_FILE}"
    try:
        data = store.get(key)
    except NotFound:
        return None
    try:
        document = json.loads(data)
    except ValueError as error:
        raise TrainerError(f"artifact store {store.description}: {key} is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise TrainerError(f"artifact store {store.description}: {key} is not a JSON object")
    return document


def mirror_labels(url: str, folder: Path, config: TrainerConfig, progress: Progress) -> int:
    """The ledger's labels of predictions made since the window start, as feedback JSON lines under
    ``folder`` (one file per prediction day), which datasource reads like the volume's feedback log."""
    since = -1.0 if config.window_start is None else config.window_start
    try:
        count = write_label_files(ledger.read_labels(url, config.model, since), folder)
    except ledger.LedgerError as error:
        raise TrainerError(f"label ledger: {error}") from error
    progress(f"read {count} labels from the ledger at {ledger.describe(url)}")
    return count


def write_label_files(records: Iterable[dict[str, Any]], folder: Path) -> int:
    """Write ``records`` (feedback line dicts) to ``folder/date=<prediction day>/ledger.jsonl``."""
    files: dict[str, IO[bytes]] = {}
    count = 0
    try:
        for record in records:
            day = f"date={utc_day(_prediction_time(record))}"
            handle = files.get(day)
            if handle is None:
                (folder / day).mkdir(parents=True, exist_ok=True)
                handle = files[day] = (folder / day / LEDGER_FILE).open("ab")
            handle.write(dumps_line(record))
            count += 1
    finally:
        for handle in files.values():
            handle.close()
    return count


def _prediction_time(record: dict[str, Any]) -> float:
    for key in ("predictionTs", "ts"):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


# --- publishing ----------------------------------------------------------------------------------


def publish(store: ArtifactStore, root: Path, model: str, version: int, progress: Progress) -> dict[str, Any] | None:
    """Upload ``root``'s ``versions/<version>/`` with metadata.json last, unless the store already has that
    version: then its metadata, and the local folder is replaced by the store's version.

    Two trainers of the same version at once could both upload (S3 has no portable create-if-absent);
    the operator runs one Job per version and a Job's retries run one after another.
    """
    folder = version_dir(root, model, version)
    prefix = f"{model}/versions/{version}/"
    existing = remote_metadata(store, model, version)
    if existing is not None:
        shutil.rmtree(folder)
        store.download(prefix, folder)
        progress(f"version {version} is already published in {store.description}")
        return existing
    count = store.upload(folder, prefix, last=METADATA_FILE)
    progress(f"published version {version}: {count} files to {store.description} ({prefix})")
    return None
