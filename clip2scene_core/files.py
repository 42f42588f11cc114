"""Files a user names: read only when they are regular files of bounded size; YAML only as plain data;
output folders checked (created, writable) before the work that fills them starts.

A FIFO or a device named as a vocabulary would block or never end, a directory would fail deep inside,
and a YAML file may carry tags (objects), anchors (a few lines expanding to gigabytes) or be huge.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import yaml

from .errors import UsageError

MAX_YAML_BYTES = 4 << 20   # a vocabulary of 1000 classes with prompts is about 100 kB
_PLAIN_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map")}


def read_text(path: str | Path, what: str, max_bytes: int, error=UsageError) -> str:
    """The UTF-8 text of a regular file of at most max_bytes; error(message naming what and path) otherwise."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as failure:
        raise error(f"{what} {path} cannot be read: {failure.strerror}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} {path} is a directory; give the file itself")
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is not a regular file (a pipe, socket or device); give a file")
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as failure:
        raise error(f"{what} {path} cannot be read: {failure.strerror}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} is larger than {max_bytes // 1024} kB; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as failure:
        raise error(f"{what} {path} is not UTF-8 text (byte {failure.start}); is it the right file?") from None


def read_yaml(path: str | Path, what: str, error=UsageError, max_bytes: int = MAX_YAML_BYTES):
    """A YAML file's single document as plain data (mappings, lists, strings, numbers, booleans, null).

    Tags (!!python/..., !!binary, dates), anchors and aliases, merge keys and several documents are
    refused with error(message naming what and path): none is needed to write a config or a vocabulary."""
    text = read_text(path, what, max_bytes, error)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_plain(node, f"{what} {path}", error)
        return loader.construct_document(node)
    except yaml.YAMLError as failure:
        raise error(f"{what} {path} is not valid YAML: {failure}") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to be a config or vocabulary") from None
    finally:
        loader.dispose()


def _check_plain(root, where: str, error) -> None:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        line = f"{where}, line {node.start_mark.line + 1}"
        if id(node) in seen:
            raise error(f"{line}: anchors and aliases (&name, *name) are not accepted; write the value out")
        seen.add(id(node))
        if node.tag not in _PLAIN_TAGS:
            raise error(f"{line}: {node.tag.replace('tag:yaml.org,2002:', '!!')} values are not accepted; "
                        f"use plain strings, numbers, booleans, lists and mappings (quote a date or a tag-like text)")
        if isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in node.value for item in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def output_folder(path: str | Path, option: str) -> Path:
    """path as a folder to write into: created if missing, refused (naming option) if it is a file or cannot
    be written, before any work is done for it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder; choose a folder (new or existing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as failure:
        raise UsageError(f"{option} {path} cannot be written ({describe_os_error(failure)}); "
                         f"choose a folder you can write to") from None
    return path


def output_file(path: str | Path, option: str) -> Path:
    """path as a file to (over)write: not a folder, in a folder that can be written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name, not a folder")
    output_folder(path.parent, f"the folder of {option}")
    return path


def new_output(path: str | Path, option: str) -> Path:
    """path as a new file or folder to create: it must not exist and its parent must be writable."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{option} {path} exists already; choose a new path")
    output_folder(path.parent, f"the folder of {option}")
    return path


def describe_os_error(failure: OSError) -> str:
    """'read-only file system', 'permission denied', ... for a message; the path is named by the caller."""
    reason = failure.strerror or type(failure).__name__
    if failure.errno == errno.EROFS:
        return "the file system is read-only"
    return reason[:1].lower() + reason[1:]
