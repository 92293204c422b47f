"""Shared fixtures.

`ray_local`: ONE in-process Ray for the whole test session (starting Ray costs seconds), with two
CPUs and no dashboard. Tests that run sweeps in this process take it; run_study reuses it.

`s3`: a local S3 server (moto's, on 127.0.0.1) with one bucket, for `--storage s3://...` as a
cluster uses it. `ray_local` takes it first, so that Ray's workers start with its credentials.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

import pyarrow.fs as pafs
import pytest

BUCKET = "sensitivity-tests"
# dummy credentials for the local server; the variables a real account could leak in are removed
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
AWS_UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class S3:
    """One bucket of the local S3 server: URIs as `--storage` takes them, and a filesystem to look inside."""

    def __init__(self, endpoint: str, bucket: str):
        self.endpoint, self.bucket = endpoint, bucket
        self.fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")

    def uri(self, path: str) -> str:
        """``s3://bucket/path`` with the query a MinIO or Ceph endpoint takes (README.md)."""
        return f"s3://{self.bucket}/{path}?endpoint_override={self.endpoint}&scheme=http"

    def key(self, path: str) -> str:
        """The path of `path` in `fs`."""
        return f"{self.bucket}/{path}"

    def upload(self, local, path: str) -> str:
        """Copy a local directory to `path`; returns its URI."""
        pafs.copy_files(str(local), self.key(path), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)
        return self.uri(path)


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on a free port of 127.0.0.1 with one bucket, and dummy AWS credentials in the
    environment (restored after): drivers started as subprocesses, and Ray's workers, inherit them."""
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # not a line per request
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_ENV.items():
            env.setenv(name, value)
        for name in AWS_UNSET:
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                              allow_bucket_creation=True).create_dir(BUCKET)
            yield S3(f"{host}:{port}", BUCKET)
        finally:
            server.stop()
            werkzeug.setLevel(level)


@pytest.fixture(scope="session")
def ray_local(s3):
    ray = pytest.importorskip("ray")
    started, temp = False, None
    if not ray.is_initialized():
        # a short private temp dir: Ray's socket paths must stay under 107 characters, and
        # other Ray clusters on this machine (other test runs) keep theirs apart
        temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 _temp_dir=temp, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        started = True
    yield ray
    if started:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: two intra-op threads on a busy 2-core machine spin against each
    other (steps 100x slower). Modules that train in-process use it via `pytestmark`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
