"""One-shot: create the S3 buckets of the scale-out variant (its `create-bucket` service): the tracking server's
artifacts and batch_predict's files. Idempotent: an existing bucket is left as it is.

Usage: python create_bucket.py ENDPOINT BUCKET...     e.g. http://seaweedfs:8333 mlflow batch
  The keys: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, boto3's standard variables (boto3 reads them).

It does not wait for the endpoint: compose starts it once seaweedfs is healthy (`depends_on: service_healthy`).
botocore's standard retry mode covers what a store that has just started may still answer (5xx, throttling).
"""

from __future__ import annotations

import sys

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def create(s3: object, endpoint: str, bucket: str) -> int:
    try:
        s3.head_bucket(Bucket=bucket)
        print(f"create-bucket: s3://{bucket} exists at {endpoint}")
        return 0
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status != 404:  # 401/403: wrong keys; anything else: the store is not well
            print(f"create-bucket: {endpoint} answered HTTP {status} for s3://{bucket}: {exc}", file=sys.stderr)
            return 1
    except BotoCoreError as exc:
        print(f"create-bucket: cannot reach {endpoint}: {exc}", file=sys.stderr)
        return 1
    try:
        s3.create_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        print(f"create-bucket: could not create s3://{bucket} at {endpoint}: {exc}", file=sys.stderr)
        return 1
    print(f"create-bucket: created s3://{bucket} at {endpoint}")
    return 0


def main(endpoint: str, *buckets: str) -> int:
    retries = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5)
    s3 = boto3.client("s3", endpoint_url=endpoint, config=retries)
    return max(create(s3, endpoint, bucket) for bucket in buckets)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]) if len(sys.argv) >= 3 else __doc__.split("Usage: ")[1].splitlines()[0])
