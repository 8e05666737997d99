"""Write a directory atomically: build it under a temporary name beside the target, then rename.

    with atomic_directory(path, overwrite=False, what="save_hf") as tmp:
        write files into tmp
    # path now holds exactly what was written; on any error nothing is left behind
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(path: str, *, overwrite: bool, what: str) -> Iterator[str]:
  """Yield a temporary directory that replaces `path` when the block succeeds.

  Raises:
    FileExistsError (naming `what`) if `path` exists and not `overwrite`.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{what}: {path} exists (pass overwrite=True to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the result is meant to be shared
  try:
    yield tmp
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.rename(path, os.path.join(old, "previous"))
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
