"""Moved to `t5x_ext.model.models`; this path stays for gin files and earlier runs' config.gin.

Gin files bind `t5x_ext.models` (`from t5x_ext import models`), and so does the `config.gin` that
every run writes, so this module re-exports everything public of the new one.
"""

from t5x_ext.model.models import *  # noqa: F401,F403
from t5x_ext.model.models import __dict__ as _moved

globals().update({k: v for k, v in _moved.items() if not k.startswith("__")})
