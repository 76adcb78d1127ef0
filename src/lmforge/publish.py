"""Publishing files and folders so that a kill at any moment leaves the old or the new, never half.

Everything lmforge writes for another stage to read (checkpoints, shards, cached tokenizers,
corpus shards, manifests, reports) goes through here:

    with publish_folder(target) as tmp:     # tmp = target's parent/.tmp-<name>-XXXX
        write files into tmp                # an exception removes tmp; target is untouched
                                            # on exit: files and folders fsynced, tmp renamed to
                                            # target, the parent fsynced

A folder that is replaced is swapped in one atomic exchange where the OS offers one (Linux
renameat2 RENAME_EXCHANGE), so no moment exists without it; elsewhere the old one is renamed to
`.old-<name>` first, and `clean_leftovers` puts it back after a kill between the two renames.
A folder is deleted by renaming it to `.trash-*` first, so a kill mid-delete never leaves half of
it under its own name. Files get the same: written beside the target, fsynced, renamed.
A temp folder is flock-ed while it is written, so clean-up in a folder several processes share
(the cache) removes only those whose writer is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, so temp folders in a shared cache are never taken for abandoned
    fcntl = None

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
OLD_PREFIX = ".old-"
PARTIAL = ".partial"  # a streamed file's name until `publish_file` (`train-00000.jsonl.partial`)
SHARED_GRACE_SECONDS = 60.0


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, to the disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def partial_path(target: Path) -> Path:
    """Where a file streamed over a long run is written until `publish_file` puts it at `target`."""
    return target.with_name(target.name + PARTIAL)


def publish_file(partial: Path, target: Path) -> None:
    """Put the finished file `partial` at `target` (same folder), replacing it, durably."""
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, target)
    fsync_dir(Path(target).parent)


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # what open() would give a new file under this process's umask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` through a fsynced temp file and a rename: a kill leaves the old or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it 0o600: a report or model card reads like any other file
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        publish_file(Path(tmp), path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """`write_text_atomic` of `payload` as indented JSON: readers never see half a file."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


@contextmanager
def publish_folder(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; when the block ends, publish it as `target`.

    replace: an existing `target` is swapped out (see `replace_dir`). With False, an existing
    `target` is kept and the new folder dropped: two processes filling the same cache entry
    both end with the first one's.
    An exception in the block removes the temp folder and leaves `target` as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=target.parent))
    lock = _lock(tmp)  # held while the block writes: `clean_leftovers(shared=True)` leaves it alone
    try:
        try:
            yield tmp
        except Exception as err:
            full = full_disk_error(err, target)
            if full is None:
                raise
            raise full from err
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0o700; a published folder reads like any other
        for path in tmp.rglob("*"):  # and so do its files (libraries that write atomically leave 0o600)
            if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600:
                os.chmod(path, FILE_MODE)
        fsync_tree(tmp)
        if replace:
            replace_dir(tmp, target)
        elif not target.exists():
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.exists():
                    raise
                # another process published it between the check and the rename: theirs is kept
            fsync_dir(target.parent)
    finally:
        if lock is not None:
            os.close(lock)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def copy_folder(source: str | Path, target: str | Path) -> None:
    """Publish a copy of the folder `source` as `target` (`publish_folder`), its files hard-linked
    where the file system allows: a final/ beside the checkpoint it came from costs no second copy
    (published folders are replaced whole, never written in place)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    with publish_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=link)


# below this much free space a failed write is taken for a full disk
FULL_DISK_BYTES = 64 * 2**20


def full_disk_error(err: Exception, target: Path) -> OSError | None:
    """The OSError(ENOSPC) for `target` that `err` stands for when a write failed for want of space,
    else None. torch.save reports a full disk as RuntimeError("unexpected pos ..."), safetensors as
    SafetensorError("... os error 28"): neither names the folder or carries the errno the CLI turns
    into a one-line message. (An OSError already is one.)"""
    if isinstance(err, OSError):
        return None
    if "os error 28" in str(err):
        full = True
    elif isinstance(err, RuntimeError):
        try:
            full = shutil.disk_usage(target.parent).free < FULL_DISK_BYTES
        except OSError:
            full = False
    else:
        full = False
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) if full else None


def _lock(folder: Path) -> int | None:
    """An exclusive flock on `folder` (released when the process dies), or None where there is none."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _abandoned(path: Path) -> bool:
    """A temp folder in a shared folder whose writer is gone: older than a minute (the instant
    between mkdtemp and its lock) and its lock free. Unknown means not abandoned."""
    try:
        if not path.is_dir() or time.time() - path.stat().st_mtime < SHARED_GRACE_SECONDS:
            return False
        lock = _lock(path)
    except OSError:
        return False
    if lock is None:
        return False
    os.close(lock)
    return True


def _renameat2_exchange():
    """libc's renameat2 with RENAME_EXCHANGE (Linux >= 3.15, glibc >= 2.28), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_EXCHANGE = _renameat2_exchange()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or file system cannot."""
    if _EXCHANGE is None:
        return False
    return _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(tmp: Path, folder: Path) -> None:
    """Put the finished folder `tmp` at `folder`, replacing what is there, durably."""
    if folder.exists() and _exchange(tmp, folder):
        fsync_dir(folder.parent)
        discard(tmp)  # tmp now holds the old folder
        return
    if folder.exists():
        # no atomic exchange: rename the old one aside first; `clean_leftovers` restores it after a kill
        old = folder.with_name(f"{OLD_PREFIX}{folder.name}")
        discard(old)
        os.replace(folder, old)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
        discard(old)
        return
    os.replace(tmp, folder)
    fsync_dir(folder.parent)


def discard(path: Path) -> None:
    """Delete a folder by first renaming it to a `.trash-` name (atomic), then removing that."""
    if not path.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(folder: Path, shared: bool = False) -> None:
    """Remove what a killed write left in `folder`: unfinished `.tmp-*` files and folders, `.trash-*`
    deletions; an `.old-X` whose `X` is missing is put back.

    shared: other processes may be writing into `folder` right now (a cache); a `.tmp-*` folder
    is then removed only when its writer is gone (`_abandoned`), and nothing else is touched
    but `.trash-*`."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        name = path.name
        if shared:
            if name.startswith(TRASH_PREFIX) or (name.startswith(TMP_PREFIX) and _abandoned(path)):
                shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(OLD_PREFIX):
            if not (folder / name[len(OLD_PREFIX) :]).exists():
                os.replace(path, folder / name[len(OLD_PREFIX) :])
            else:
                shutil.rmtree(path, ignore_errors=True)
        elif name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
