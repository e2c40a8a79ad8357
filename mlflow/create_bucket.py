"""One-shot: create the S3 bucket the tracking server keeps its artifacts in (the scale-out variant's
`create-bucket` service). Idempotent: an existing bucket is left as it is.

Usage: python create_bucket.py      (settings come from the environment)
  MLFLOW_S3_ENDPOINT_URL                      the S3 endpoint (e.g. http://seaweedfs:8333)
  S3_BUCKET                                   the bucket to create
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY    the keys (boto3's standard variables)

It does not wait for the endpoint: compose starts it once seaweedfs is healthy (`depends_on: service_healthy`).
botocore's standard retry mode covers what a store that has just started may still answer (5xx, throttling).
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    endpoint, bucket = os.environ["MLFLOW_S3_ENDPOINT_URL"], os.environ["S3_BUCKET"]
    retries = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5)
    s3 = boto3.client("s3", endpoint_url=endpoint, config=retries)
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


if __name__ == "__main__":
    sys.exit(main())
