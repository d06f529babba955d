"""Results by URL: generated images kept as files and served at /v1/images/files/{id}.

Files are content-addressed (the id is the SHA-256 of the bytes plus the format's extension), so
an id is unguessable, a repeated image is stored once, and every gateway replica that mounts the
same folder serves every file. `FileStore` is the interface the gateway uses; `DirectoryFileStore`
keeps files in a folder (a shared volume on a cluster). An object store can implement the same
three methods. The methods block (disk IO): the gateway calls them in a thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FILE_ID = re.compile(r"^[0-9a-f]{64}\.(png|jpeg|webp)$")
FILES_ROUTE = "/v1/images/files"


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    media_type: str
    expires_at: float  # Unix time


class FileStore(Protocol):
    def put(self, data: bytes, image_format: str) -> str:
        """Keep `data` (an image in `image_format`); its id."""
        ...

    def get(self, file_id: str) -> StoredFile | None:
        """The file, or None when there is no such file or it has expired."""
        ...

    def sweep(self) -> None:
        """Remove expired files, then the oldest ones while over the size budget."""
        ...


def file_path(file_id: str) -> str:
    """The API path of a file (made absolute by the HTTP layer)."""
    return f"{FILES_ROUTE}/{file_id}"


def store_images(store: FileStore, images: Sequence[bytes], image_format: str) -> list[str]:
    """Keep each image; their API paths, in order (blocks: call in a thread)."""
    return [file_path(store.put(image, image_format)) for image in images]


class DirectoryFileStore:
    """Files in one folder; a file's modification time is when it was (last) stored."""

    def __init__(self, directory: Path, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.directory, self.ttl_s, self.max_bytes, self.clock = directory, ttl_s, max_bytes, clock
        self.directory.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, image_format: str) -> str:
        if image_format not in MEDIA_TYPES:
            raise ValueError(f"unknown image format {image_format!r}")
        file_id = f"{hashlib.sha256(data).hexdigest()}.{image_format}"
        path = self.directory / file_id
        now = self.clock()
        if path.exists():
            os.utime(path, (now, now))  # stored again: its time to live starts over
            return file_id
        # Write then rename: a reader (another replica) never sees half a file.
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.utime(temporary, (now, now))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return file_id

    def get(self, file_id: str) -> StoredFile | None:
        if not FILE_ID.match(file_id):
            return None
        path = self.directory / file_id
        try:
            stored_at = path.stat().st_mtime
            if stored_at + self.ttl_s <= self.clock():
                path.unlink(missing_ok=True)
                return None
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return StoredFile(data, MEDIA_TYPES[file_id.rsplit(".", 1)[1]], stored_at + self.ttl_s)

    def sweep(self) -> None:
        now = self.clock()
        kept = []
        for path in self.directory.iterdir():
            if not FILE_ID.match(path.name):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if info.st_mtime + self.ttl_s <= now:
                path.unlink(missing_ok=True)
            else:
                kept.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in kept)
        for _, size, path in sorted(kept, key=lambda item: item[0]):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
