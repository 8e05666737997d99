"""The JSON every benchmark writes: machine facts beside the measured rows, written atomically."""

from __future__ import annotations

import json
import os
import platform

import jax


def cpu_model() -> str | None:
  """The CPU's model name from /proc/cpuinfo (None where there is none): numbers from
  different CPUs are not comparable, so every report names its CPU."""
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    return None
  return names[0] if names else None


def write_report(path: str, results: list) -> dict:
  """Write {device, platform, cpu_model, cpu_count, jax, results} to `path` (temp file, then
  rename)."""
  report = {"device": str(jax.devices()[0]), "platform": platform.platform(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "results": results}
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, path)
  return report
