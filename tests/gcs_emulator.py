"""A real object store for tests: `gcp-storage-emulator`, reached as Google's clients reach it.

The fixture starts `gcp-storage-emulator start --in-memory` on a free port, waits until it
answers, points the environment at it and yields it; a test then uses `gs://<bucket>` paths
as a pod user would. The clients find the emulator the standard way, through
`STORAGE_EMULATOR_HOST`, so the code under test is the code that runs against real GCS.
Each client stack needs one more word (`GcsEmulator.client_env`; the library derives the
same from `STORAGE_EMULATOR_HOST`, and the fixture sets them for in-process use):

  etils.epath   picks TensorFlow's GCS filesystem whenever TF is installed, and that one
                ignores `STORAGE_EMULATOR_HOST` (it goes to storage.googleapis.com).
                `EPATH_USE_TF=false` makes epath use fsspec, i.e. gcsfs, which honours it.
  gcsfs         2026.10 first asks the Storage Control API (gRPC) for the bucket's layout
                (zonal, hierarchical); an emulator has no such service, and the probe waits
                for its timeout before falling back. `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`
                (read when gcsfs is imported) uses the plain JSON-API filesystem.
  tensorstore   Orbax writes the arrays of a checkpoint through tensorstore's `gcs` driver,
                which ignores `STORAGE_EMULATOR_HOST`; `TENSORSTORE_GCS_HTTP_URL` is its
                endpoint. Tensorstore also insists on a valid GCS bucket name (3 to 63
                characters), hence `BUCKET`.

Use:

  from tests.gcs_emulator import gcs_emulator  # noqa: F401 (the fixture)

  def test_x(gcs_emulator):
    root = gcs_emulator.root                   # 'gs://t5x-ext-test'
    ...
    assert "run/metrics/train.jsonl" in gcs_emulator.list_objects("run/")

The emulator is module-scoped (about a second to start); tests share the bucket, so each
uses its own prefix (`gcs_emulator.fresh_prefix()`). Without the emulator installed
(`pip install -e '.[test]'`), the tests that use it are skipped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

BUCKET = "t5x-ext-test"
START_TIMEOUT_S = 30.0

# gcp-storage-emulator 2026.7 sends an object's bytes without the `x-goog-generation` header,
# which real GCS always sends and tensorstore's gcs driver needs to read an object back
# (Orbax's OCDBT manifest: "Malformed StorageGeneration"). The emulator runs with it added.
_LAUNCHER = """
import sys
from gcp_storage_emulator import __main__ as cli, server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj["metageneration"])


objects.download = download
for _, handlers in server.HANDLERS:
  for method, handler in list(handlers.items()):
    if handler is _download:
      handlers[method] = download
cli.main(sys.argv[1:])
"""


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _clear_client_caches() -> None:
  """Forgets the filesystems and backend choices made under another environment.

  Also applies the library's client settings (`t5x_ext.training.run_paths`: no gcsfs
  listing cache, which would hide objects written by another process or by tensorstore).
  """
  with contextlib.suppress(ImportError):
    from t5x_ext.training import run_paths

    run_paths.configure_clients()
  with contextlib.suppress(Exception):
    from etils.epath import backend, gpath

    gpath._is_tf_installed.cache_clear()
    backend.fsspec_backend._get_filesystem.cache_clear()
  if "gcsfs" in sys.modules:
    with contextlib.suppress(Exception):
      sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()


class GcsEmulator:
  """A running emulator: its endpoint, its bucket, and a listing that bypasses the code under test.

  Attributes:
    host: the endpoint, e.g. 'http://127.0.0.1:40123' (the value of STORAGE_EMULATOR_HOST).
    bucket: the bucket the emulator was started with.
    root: 'gs://<bucket>'.
    env: the one variable a subprocess needs (the library derives the rest from it).
  """

  def __init__(self, host: str, bucket: str):
    self.host = host
    self.bucket = bucket
    self.root = f"gs://{bucket}"
    self.env = {"STORAGE_EMULATOR_HOST": host}
    self._prefixes = itertools.count()

  def client_env(self) -> dict[str, str]:
    """Every variable the clients need for this emulator (see the module docstring)."""
    return {
      "STORAGE_EMULATOR_HOST": self.host,
      "EPATH_USE_TF": "false",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "TENSORSTORE_GCS_HTTP_URL": self.host,
    }

  def fresh_prefix(self, name: str = "run") -> str:
    """A `gs://` path no other test of this module uses."""
    return f"{self.root}/{name}-{next(self._prefixes)}"

  def _get(self, url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
      return resp.read()

  def list_objects(self, prefix: str = "") -> list[str]:
    """Names of the objects under `prefix` (bucket-relative, no 'gs://'), from the JSON API.

    Args:
      prefix: a bucket-relative prefix, or a 'gs://bucket/...' path.

    Returns:
      The sorted object names.
    """
    prefix = prefix.removeprefix(self.root).lstrip("/")
    names, token = [], None
    while True:
      query = {"prefix": prefix}
      if token:
        query["pageToken"] = token
      url = f"{self.host}/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}"
      page = json.loads(self._get(url))
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def read(self, name: str) -> bytes:
    """One object's bytes (bucket-relative name or 'gs://bucket/...' path)."""
    name = name.removeprefix(self.root).lstrip("/")
    quoted = urllib.parse.quote(name, safe="")
    return self._get(f"{self.host}/download/storage/v1/b/{self.bucket}/o/{quoted}?alt=media")


@contextlib.contextmanager
def running_emulator(bucket: str = BUCKET):
  """Starts an in-memory emulator, sets the client environment, and stops it on exit.

  Args:
    bucket: the default bucket to create (a valid GCS name: tensorstore checks).

  Yields:
    A `GcsEmulator`.
  """
  port = _free_port()
  host = f"http://127.0.0.1:{port}"
  # `gcp-storage-emulator start --host=127.0.0.1 --port=PORT --in-memory --default-bucket=NAME`,
  # through the launcher above; --quiet: no log line per request.
  cmd = [sys.executable, "-c", _LAUNCHER, "start", "--host=127.0.0.1", f"--port={port}"]
  cmd += ["--in-memory", f"--default-bucket={bucket}", "--quiet"]
  # The emulator logs every request: to a file, not a pipe nobody drains.
  log = tempfile.TemporaryFile(mode="w+")
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  emulator = GcsEmulator(host, bucket)
  saved = {k: os.environ.get(k) for k in emulator.client_env()}
  try:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
      if proc.poll() is not None:
        log.seek(0)
        raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}:\n{log.read()}")
      try:
        emulator._get(f"{host}/storage/v1/b/{bucket}")
        break
      except (urllib.error.URLError, ConnectionError, OSError):
        if time.monotonic() > deadline:
          raise TimeoutError(f"gcp-storage-emulator did not answer on {host} in time") from None
        time.sleep(0.1)
    os.environ.update(emulator.client_env())
    _clear_client_caches()
    yield emulator
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    _clear_client_caches()
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def gcs_emulator():
  """A `GcsEmulator` for the module; skips when `gcp-storage-emulator` is not installed."""
  if importlib.util.find_spec("gcp_storage_emulator") is None:
    pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[test]')")
  with running_emulator() as emulator:
    yield emulator


@pytest.fixture
def gcs_root(gcs_emulator):
  """A fresh 'gs://<bucket>/<name>-<n>' prefix on the module's emulator."""
  return gcs_emulator.fresh_prefix()
