"""Recordings that outlive their recorder: the recording lock, unfinished parts, and `reindex`.

rosbags writes a part's `metadata.yaml` and the mcap file's summary and footer only when the part
is closed, so a recorder killed with SIGKILL (the OOM killer, a power cut) leaves a part that neither
rosbags nor `ros2 bag` tools built on it can open. The recorder flushes each complete pair to the
file as one or more whole mcap chunks (`BagWriter.flush`), so the file holds every flushed pair and
at most a cut-off record at its end. `reindex` reads such a file record by record with the `mcap`
library (which reads unfinished files), stops at the first incomplete record, and writes the
complete messages into a finished part (index, summary, footer, `metadata.yaml`) through rosbags:
the unfinished file is kept beside it as `<name>.mcap.unfinished`, nothing is deleted.

A recorder holds `recording.lock` in its output folder with `flock` for as long as it runs; the
kernel releases it on any death, so a held lock always means a live recorder. Two recorders on one
folder are refused by it, and `reindex` refuses to touch a recording that is still being written.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import breakup_chunk
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from .source import SourceError

LOCK_NAME = "recording.lock"
UNFINISHED_SUFFIX = ".unfinished"
_MCAP_MAGIC = b"\x89MCAP0\r\n"


class RecordingLocked(SourceError):
    """Another process (a running recorder) holds the recording's lock."""


class RecordingLock:
    """An exclusive `flock` on `<folder>/recording.lock`, holding the owner's pid for error messages.

    Released by `release()` or by the process's death, whatever kills it.
    """

    def __init__(self, folder: str | Path, what: str = "a recorder"):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise RecordingLocked(f"{folder}: {what} cannot use it: another process (pid {owner}) is recording "
                                  f"into it (it holds {self.path}); stop that recorder or choose another "
                                  f"folder") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def is_locked(folder: Path) -> bool:
    """Whether a live process holds folder's recording lock (without taking it)."""
    path = folder / LOCK_NAME
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _storage_files(part: Path) -> list[Path]:
    return sorted(p for p in part.iterdir() if p.is_file() and p.suffix in (".mcap", ".db3"))


def _mcap_finished(path: Path) -> bool:
    """Whether an mcap file ends with the closing magic (only a closed writer writes it)."""
    size = path.stat().st_size
    if size < 2 * len(_MCAP_MAGIC):
        return False
    with path.open("rb") as file:
        file.seek(-len(_MCAP_MAGIC), os.SEEK_END)
        return file.read() == _MCAP_MAGIC


def unfinished_parts(path: Path) -> list[Path]:
    """Bag directories of a recording (path itself or its sub-directories) that a killed recorder left:
    a storage file without metadata.yaml, or an mcap file that was never closed."""
    candidates = [path] + (sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else [])
    unfinished = []
    for part in candidates:
        if not part.is_dir():
            continue
        files = _storage_files(part)
        if files and (not (part / "metadata.yaml").is_file()
                      or any(f.suffix == ".mcap" and not _mcap_finished(f) for f in files)):
            unfinished.append(part)
    return unfinished


@dataclass
class PartReport:
    """What reindex did with one part: messages kept per topic (and each topic's type), bytes of the cut-off
    tail left out."""

    part: Path
    messages: dict[str, int]
    types: dict[str, str]
    dropped_bytes: int

    @property
    def total(self) -> int:
        return sum(self.messages.values())

    @property
    def clouds(self) -> int:
        return sum(n for topic, n in self.messages.items() if self.types[topic] == "sensor_msgs/msg/PointCloud2")


def reindex(path: str | Path) -> list[PartReport]:
    """Make every unfinished part of a recording readable; returns one report per part repaired
    (an empty list: nothing to do). Raises SourceError (the message says what to do) for a recording
    that is being written, a part that cannot be repaired, or a path that is no recording."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SourceError(f"{path} is not a folder; reindex takes a bag directory or a recording's folder of parts")
    if is_locked(path.parent):
        raise RecordingLocked(f"{path}: a recorder is writing into {path.parent}; reindex it after the recorder "
                              f"stopped")
    try:
        lock = RecordingLock(path, "reindex")
    except OSError as error:
        raise SourceError(f"{path}: cannot write into it ({error.strerror or error}); reindex needs write access to "
                          f"the recording") from None
    try:
        reports = [_reindex_part(part) for part in unfinished_parts(path)]
    except OSError as error:
        raise SourceError(f"{path}: reindex could not write the repaired part ({error}); free some space or fix "
                          f"the permissions and run it again") from None
    finally:
        lock.release()
    if not (path / "metadata.yaml").is_file() and not any((p / "metadata.yaml").is_file() for p in path.iterdir()):
        raise SourceError(f"{path}: no rosbag2 part (a folder with an .mcap file) found in it or beside it")
    return reports


def _reindex_part(part: Path) -> PartReport:
    files = _storage_files(part)
    if any(f.suffix == ".db3" for f in files):
        raise SourceError(f"{part}: an unfinished sqlite3 part cannot be recovered (rosbags commits sqlite3 "
                          f"parts only when they are closed); record with storage mcap to survive a kill")
    if len(files) != 1:
        raise SourceError(f"{part}: expected one .mcap file in an unfinished part, found {[f.name for f in files]}")
    source = files[0]
    backup = source.with_name(source.name + UNFINISHED_SUFFIX)
    if backup.exists():
        raise SourceError(f"{part}: {backup.name} exists already (an interrupted reindex?); move it away and run "
                          f"reindex again")
    work = part.parent / f".{part.name}.reindex"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        records = _CompleteRecords(source)
        counts, types = _write_part(work / part.name, records)
        source.rename(backup)
        for written in sorted((work / part.name).iterdir(), key=lambda p: p.name == "metadata.yaml"):
            written.rename(part / written.name)  # metadata.yaml last: its presence means "finished"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PartReport(part, counts, types, backup.stat().st_size - records.end)


_RECORDS = {Opcode.SCHEMA: Schema, Opcode.CHANNEL: Channel}


class _CompleteRecords:
    """The schema, channel and message records of an mcap file, in file order, up to the first record the
    writer's death cut off; `end`: the byte offset where the complete records end (once iterated).

    Records are framed as opcode (1 byte), length (8 bytes), body; a record is complete when its whole
    body is in the file. The framing is read here, the bodies (and chunks) by the mcap library.
    Messages are streamed, so a part of any size is repaired in little memory.
    """

    def __init__(self, path: Path):
        self.path = path
        self.end = 0

    def __iter__(self):
        size = self.path.stat().st_size
        with self.path.open("rb") as file:
            if file.read(len(_MCAP_MAGIC)) != _MCAP_MAGIC:
                raise SourceError(f"{self.path}: not an mcap file (no mcap magic at its start); nothing to recover")
            self.end = file.tell()
            while self.end + 9 <= size:
                opcode, length = struct.unpack("<BQ", file.read(9))
                if self.end + 9 + length > size or opcode == Opcode.FOOTER:
                    break
                body = ReadDataStream(io.BytesIO(file.read(length)))
                try:
                    if opcode == Opcode.CHUNK:
                        records = breakup_chunk(Chunk.read(body))
                    elif opcode == Opcode.MESSAGE:
                        records = [Message.read(body, length)]
                    elif opcode in _RECORDS:
                        records = [_RECORDS[opcode].read(body)]
                    else:
                        records = []  # indexes, statistics, attachments: rebuilt or not needed
                except (McapError, ValueError, struct.error, UnicodeDecodeError):
                    break  # a damaged record: what came before it is kept
                yield from records
                self.end += 9 + length


def _write_part(target: Path, records) -> tuple[dict, dict]:
    """A finished rosbag2 part (mcap) holding the given records; message counts and types per topic."""
    store = get_typestore(Stores.ROS2_JAZZY)
    writer = Writer(target, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    schemas: dict[int, Schema] = {}
    connections, topics = {}, {}
    counts: dict[str, int] = {}
    types: dict[str, str] = {}
    try:
        for record in records:
            if isinstance(record, Schema):
                schemas[record.id] = record
            elif isinstance(record, Channel) and record.id not in connections:
                schema = schemas.get(record.schema_id)
                if schema is None:
                    raise SourceError(f"{target.name}: channel {record.topic!r} comes before its schema")
                msgdef = schema.data.decode("utf-8")
                if schema.name not in store.types:
                    store.register(get_types_from_msg(msgdef, schema.name))
                qos = parse_qos(record.metadata.get("offered_qos_profiles", ""))
                connections[record.id] = writer.add_connection(record.topic, schema.name, msgdef=msgdef,
                                                               rihs01=store.hash_rihs01(schema.name),
                                                               serialization_format=record.message_encoding,
                                                               offered_qos_profiles=qos)
                topics[record.id] = record.topic
                counts[record.topic] = 0
                types[record.topic] = schema.name
            elif isinstance(record, Message) and record.channel_id in connections:
                writer.write(connections[record.channel_id], record.log_time, record.data)
                counts[topics[record.channel_id]] += 1
    finally:
        writer.close()
    return counts, types
