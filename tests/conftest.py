"""Shared fixtures. Tests run on the CPU in float32.

Compiled programs go to a persistent JAX compilation cache that lives for one test session
(a fresh temporary folder, removed at exit, so every run compiles from scratch once): the
end-to-end tests run many stages, often in subprocesses, that compile the same tiny programs
again (configs/tldr.py's test: 82 s without it, 55 s with it).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="dera_jax_test_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache  # inherited by subprocess tests
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
