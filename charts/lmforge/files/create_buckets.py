"""Create the object-store buckets lmforge expects, once the S3 endpoint answers.

Run by the chart's post-install/post-upgrade hook Job in the lmforge image (which ships the
``minio`` client), so the chart needs no extra image. Idempotent: an existing bucket is left as it
is. Credentials come only from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (the lmforge-s3
Secret, as env). A server that is still starting is retried until ``--wait-seconds``; a refusal
from a running server (bad credentials, bad bucket name) fails at once, since waiting cannot fix it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import urllib3
from minio import Minio
from minio.error import S3Error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--endpoint", required=True, help="S3 endpoint host:port, e.g. minio.lmforge.svc.cluster.local:9000"
    )
    parser.add_argument("--secure", action="store_true", help="reach the endpoint over TLS")
    parser.add_argument("--wait-seconds", type=float, default=300.0, help="how long to wait for the endpoint to answer")
    parser.add_argument("buckets", nargs="+", help="bucket names to create")
    return parser.parse_args(argv)


def client_from_env(endpoint: str, secure: bool) -> Minio:
    missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not os.environ.get(k)]
    if missing:
        raise SystemExit(
            f"create_buckets: {', '.join(missing)} not set; mount the S3 Secret (s3.existingSecret) as env"
        )
    # One HTTP attempt per call: this loop, not urllib3, decides how long to wait for the server.
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0), timeout=urllib3.Timeout(connect=5, read=30))
    return Minio(
        endpoint,
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        secure=secure,
        http_client=http,
    )


def ensure_bucket(client: Minio, bucket: str) -> bool:
    """Create ``bucket`` unless it exists; returns whether it was created."""
    if client.bucket_exists(bucket):
        return False
    client.make_bucket(bucket)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = client_from_env(args.endpoint, args.secure)
    deadline = time.monotonic() + args.wait_seconds
    for bucket in args.buckets:
        while True:
            try:
                created = ensure_bucket(client, bucket)
                break
            except S3Error as e:
                raise SystemExit(
                    f"create_buckets: {args.endpoint} refused bucket {bucket!r}: {e.code}: {e.message}"
                ) from e
            except urllib3.exceptions.HTTPError as e:
                if time.monotonic() >= deadline:
                    raise SystemExit(
                        f"create_buckets: {args.endpoint} did not answer within {args.wait_seconds:.0f}s ({e}); "
                        "is the object store running and reachable from this namespace?"
                    ) from e
                time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        print(f"bucket {bucket}: {'created' if created else 'exists'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
