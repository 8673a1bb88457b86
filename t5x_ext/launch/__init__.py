"""What the commands (`python -m t5x_ext.train|eval|infer|plan`) share, and nothing else uses.

Modules:
  flags.py       flags, gin files and search paths, required macros, MIXTURE_OR_TASK_MODULE,
                 `jax.distributed` start-up, exit statuses and `main_guard`
  gin_checks.py  macros named in `--gin.` flags that no gin file declares
  scaffold.py    `EntryPoint` and `run` (the one `main`), `prepare` (the checks every run
                 makes before it builds anything)
"""
