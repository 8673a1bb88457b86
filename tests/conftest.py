"""Shared pytest fixtures: isolate gin config and the SeqIO registries per test."""

import os
import pathlib
import sys

# Keep TensorFlow quiet and off any accelerator: tests run on CPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

# One persistent JAX compilation cache per test session, shared by the xdist workers and
# every subprocess they start (JAX reads these variables when it is imported): many tests
# compile the same tiny models, in-process and in subprocess trainers, and on a 2-core CPU
# the compiles are most of the suite's time. The directory is new for every session (CI
# starts empty, nothing leaks between runs) and removed at the end by the process that
# made it; the xdist workers inherit it from the controller. Entries are only ever added,
# so two workers writing the same entry write the same bytes; a reader that catches one
# half-written reads a truncated zlib stream, which JAX reports as a warning and compiles
# anew. T5X_EXT_TEST_JAX_CACHE=0 turns it off (to measure compile times, say).
_OWN_JAX_CACHE = None
if os.environ.get("T5X_EXT_TEST_JAX_CACHE", "1") != "0" and not os.environ.get(
  "JAX_COMPILATION_CACHE_DIR"
):
  import tempfile

  _OWN_JAX_CACHE = tempfile.mkdtemp(prefix="t5x_ext_test_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_JAX_CACHE
  # Cache every executable, however quick its compile or small its size.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  if "jax" in sys.modules:  # imported before this file (by a plugin): too late for the env
    import jax

    jax.config.update("jax_compilation_cache_dir", _OWN_JAX_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

# XLA:CPU without its expensive LLVM passes (backend optimisation level 0): on a 2-core CPU
# the tests spend more time compiling tiny models than running them, and compiles take about
# half as long (test_decoding 159 -> 72 CPU-s). The HLO passes, so the buffer assignment that
# the memory-plan tests read, are unchanged, and every run in a test uses the same setting;
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 in the environment restores the full optimisation.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "jax" in sys.modules:
  import jax

  jax.config.update(
    "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] != "0"
  )


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which may be absent
def pytest_xdist_make_scheduler(config, log):
  """With `-n N` (xdist's default `--dist load`), hands out whole files, as `--dist loadfile`.

  Many files train or compile something once in a module-scoped fixture; split across the
  workers, each worker would pay for it again. Another `--dist` given explicitly is kept.
  """
  if config.getvalue("dist") != "load":
    return None
  from xdist.scheduler import LoadFileScheduling

  return LoadFileScheduling(config, log)


def pytest_unconfigure(config):
  """Removes this session's compilation cache (only in the process that made it)."""
  if _OWN_JAX_CACHE:
    import shutil

    shutil.rmtree(_OWN_JAX_CACHE, ignore_errors=True)


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SPM32K = SHARED_DATA / "spm" / "spm32k.model"


@pytest.fixture(autouse=True)
def _clear_gin():
  """Gin's global config leaks across tests; clear it before and after each one."""
  try:
    import gin
  except ImportError:  # pragma: no cover - gin is a hard dependency
    yield
    return
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


@pytest.fixture(autouse=True)
def _restore_seqio_registries():
  """Removes the tasks and mixtures a test registers, keeping those registered before."""
  import sys

  if "seqio" not in sys.modules:
    yield
    return
  import seqio

  tasks = dict(seqio.TaskRegistry._REGISTRY)
  mixtures = dict(seqio.MixtureRegistry._REGISTRY)
  yield
  seqio.TaskRegistry._REGISTRY.clear()
  seqio.TaskRegistry._REGISTRY.update(tasks)
  seqio.MixtureRegistry._REGISTRY.clear()
  seqio.MixtureRegistry._REGISTRY.update(mixtures)


@pytest.fixture
def spm32k_path():
  """Path to the shared 32K SentencePiece model; skips the test where it is absent."""
  if not SPM32K.exists():
    pytest.skip(f"{SPM32K} not present (development machines and CI only)")
  return str(SPM32K)


_CPU_LOG = os.environ.get("T5X_EXT_TEST_CPU_LOG")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """With T5X_EXT_TEST_CPU_LOG=path, appends each test's wall and CPU seconds to path.

  CPU seconds (this process plus the subprocesses it waited for) say what a test costs even
  on a machine shared with other jobs, where wall times mostly measure the load.
  """
  if not _CPU_LOG:
    yield
    return
  import json
  import resource
  import time

  def cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

  wall, start = time.perf_counter(), cpu()
  yield
  record = {"test": item.nodeid, "wall_s": time.perf_counter() - wall, "cpu_s": cpu() - start}
  with open(_CPU_LOG, "a") as f:
    f.write(json.dumps(record) + "\n")
