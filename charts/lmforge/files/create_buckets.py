"""Create the object-store buckets lmforge expects, once the S3 endpoint answers.

Run by the chart's post-install/post-upgrade hook Job in the lmforge image (which ships the
``minio`` client), so the chart needs no extra image. Idempotent: an existing bucket is left as it
is. With ``--pipeline-user`` (the chart's MinIO) it also creates the scoped user the pipelines use
(``PIPELINE_AWS_ACCESS_KEY_ID``/``PIPELINE_AWS_SECRET_ACCESS_KEY``, from s3.pipelineSecret) with a
policy allowing S3 on the given buckets only, so no pipeline pod holds MinIO's root credentials. Credentials come only from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (the lmforge-s3
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
    parser.add_argument(
        "--pipeline-user",
        action="store_true",
        help="also create the scoped pipeline user (PIPELINE_AWS_* env) with S3 rights on these buckets only (MinIO)",
    )
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


POLICY_NAME = "lmforge-pipeline"


def pipeline_policy(buckets: list[str]) -> dict:
    """An IAM policy document: every S3 action on ``buckets`` and their objects, nothing else."""
    resources = [f"arn:aws:s3:::{b}" for b in buckets] + [f"arn:aws:s3:::{b}/*" for b in buckets]
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": resources}]}


def ensure_pipeline_user(endpoint: str, secure: bool, buckets: list[str]) -> str:
    """Create (or update) the scoped pipeline user and attach :func:`pipeline_policy`; returns its access key."""
    from minio import MinioAdmin
    from minio.credentials import StaticProvider
    from minio.error import MinioAdminException

    missing = [k for k in ("PIPELINE_AWS_ACCESS_KEY_ID", "PIPELINE_AWS_SECRET_ACCESS_KEY") if not os.environ.get(k)]
    if missing:
        raise SystemExit(f"create_buckets: {', '.join(missing)} not set; mount s3.pipelineSecret as PIPELINE_AWS_* env")
    admin = MinioAdmin(
        endpoint=endpoint,
        credentials=StaticProvider(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]),
        secure=secure,
    )
    user = os.environ["PIPELINE_AWS_ACCESS_KEY_ID"]
    admin.policy_add(POLICY_NAME, policy=pipeline_policy(buckets))  # replaces an older version of the policy
    admin.user_add(user, os.environ["PIPELINE_AWS_SECRET_ACCESS_KEY"])  # sets the password if the user exists
    try:
        admin.attach_policy([POLICY_NAME], user=user)
    except MinioAdminException as e:
        if "already" not in str(e).lower():  # attached on an earlier install: nothing to do
            raise
    return user


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
    if args.pipeline_user:
        user = ensure_pipeline_user(args.endpoint, args.secure, args.buckets)
        print(f"pipeline user {user}: policy {POLICY_NAME} on {', '.join(args.buckets)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
