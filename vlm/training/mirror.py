"""Resume checkpoints on S3 (`resume.folder: s3://bucket/path`): a job restarted on any machine resumes.

Composer 0.32 can save to an `s3://` save folder, but its autoresume then downloads into a local
folder named after the URI itself (`s3:/bucket/...` under the working directory), and it knows
nothing of the text run's branch points, which are kept beside its checkpoints. So Composer keeps
saving to a local resume folder (this repository's `checkpoints/<stage>/<fingerprint>/`), and
`RemoteMirror` keeps a copy of that folder on S3: pulled before the Trainer looks for a checkpoint,
pushed after every checkpoint Composer writes (with the branch points saved since).
"""

from __future__ import annotations

from pathlib import Path

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist, parse_uri
from composer.utils.object_store import S3ObjectStore

LATEST = "latest-rank0.pt"  # Composer's pointer to its newest checkpoint (a symlink, not uploaded)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _step(checkpoint: Path) -> int:
    return int(checkpoint.stem.removeprefix("ba"))


class RemoteMirror(Callback):
    """The S3 copy of one run's resume folder (`uri` = s3://bucket/path/<stage>/<fingerprint>)."""

    def __init__(self, folder: Path, uri: str):
        backend, bucket, path = parse_uri(uri)
        if backend != "s3":
            raise ValueError(f"`resume.folder`: {uri!r} is no s3:// URI (the resume mirror speaks S3 only)")
        self.folder, self.uri = Path(folder), uri
        self.store = S3ObjectStore(bucket=bucket, prefix=path)  # endpoint and keys from the environment, as boto3
        self.pushed: dict[str, tuple[int, int]] = {}  # file (relative to folder) -> (size, mtime) when uploaded

    def remote_files(self) -> list[str]:
        return [key.removeprefix(self.store.prefix) for key in self.store.list_objects()]

    def pull(self) -> None:
        """Download what the S3 copy holds and this machine lacks, and point Composer's LATEST at the
        newest checkpoint, so that its autoresume finds it here."""
        for name in self.remote_files():
            path = self.folder / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                self.store.download_object(name, str(path))
            self.pushed[name] = _stamp(path)
        newest = max(self.folder.glob("ba*.pt"), key=_step, default=None)
        latest = self.folder / LATEST
        if newest is not None and not latest.exists():
            latest.unlink(missing_ok=True)  # a dangling link
            latest.symlink_to(newest.name)

    def push(self) -> None:
        """Upload every file that is new or changed since the last push, then delete from S3 what is
        gone here (Composer keeps one checkpoint): the S3 copy always holds a whole checkpoint."""
        local = {p.relative_to(self.folder).as_posix(): p for p in sorted(self.folder.rglob("*"))
                 if p.is_file() and not p.is_symlink()}
        for name, path in local.items():
            if self.pushed.get(name) != _stamp(path):
                self.store.upload_object(name, str(path))
                self.pushed[name] = _stamp(path)
        for name in sorted(set(self.pushed) - set(local)):
            self.store.client.delete_object(Bucket=self.store.bucket, Key=self.store.get_key(name))
            del self.pushed[name]

    def clear(self) -> None:
        """Delete the S3 copy (the stage's outputs are complete)."""
        for name in self.remote_files():
            self.store.client.delete_object(Bucket=self.store.bucket, Key=self.store.get_key(name))
        self.pushed.clear()

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        # Runs after Composer's CheckpointSaver: make_trainer appends this callback after it.
        if dist.get_global_rank() == 0:
            self.push()
