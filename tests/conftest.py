"""Shared fixtures. Tests run on the CPU in float32."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
