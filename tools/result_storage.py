"""Keep Prefect's results where the cache is: saves a RemoteFileSystem block at
`$AV2AV_CACHE_DIR/prefect-results` (any fsspec URL: s3://, gs://, a shared folder) and prints the
settings every worker needs, so a run's results are readable from any machine instead of living
on the disk of the worker that ran it. Nothing in the pipeline depends on it: the cache is the
authority on data (lib/core/cache.py); this only concerns what Prefect itself keeps.

    AV2AV_CACHE_DIR=s3://my-bucket/av2av PREFECT_API_URL=... .venv/bin/python tools/result_storage.py
"""

from __future__ import annotations

import os
import posixpath
import sys

BLOCK_NAME = "av2av-results"


def main() -> int:
    from prefect.filesystems import RemoteFileSystem

    location = os.environ.get("AV2AV_CACHE_DIR", "")
    if "://" not in location:
        print(
            "AV2AV_CACHE_DIR is not a URL: one machine keeps Prefect's results on its own disk already.",
            file=sys.stderr,
        )
        return 2
    basepath = posixpath.join(location.rstrip("/"), "prefect-results")
    RemoteFileSystem(basepath=basepath).save(BLOCK_NAME, overwrite=True)
    print(f"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK={RemoteFileSystem.get_block_type_slug()}/{BLOCK_NAME}")
    print("PREFECT_RESULTS_PERSIST_BY_DEFAULT=true")
    return 0


if __name__ == "__main__":
    sys.exit(main())
