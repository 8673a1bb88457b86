"""Moved to `t5x_ext.training.partitioning`; this path stays for gin files and earlier runs' config.gin.

Gin files bind `t5x_ext.partitioning` (`from t5x_ext import partitioning`), and so does the `config.gin` that
every run writes, so this module re-exports everything of the new one.
"""

from t5x_ext.training.partitioning import *  # noqa: F401,F403
from t5x_ext.training.partitioning import __dict__ as _moved

globals().update({k: v for k, v in _moved.items() if not k.startswith("__")})
