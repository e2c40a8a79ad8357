"""One-shot: create the S3 bucket the tracking server keeps its artifacts in (the scale-out variant's
`create-bucket` service). Idempotent: an existing bucket is left as it is.

Usage: python create_bucket.py      (settings come from the environment)
  MLFLOW_S3_ENDPOINT_URL                      the S3 endpoint (e.g. http://seaweedfs:8333)
  S3_BUCKET                                   the bucket to create
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY    the keys (boto3's standard variables)
  CREATE_BUCKET_TIMEOUT                       seconds to wait for the endpoint (default 120)
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    endpoint, bucket = os.environ["MLFLOW_S3_ENDPOINT_URL"], os.environ["S3_BUCKET"]
    s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 2}, connect_timeout=5))
    deadline = time.monotonic() + float(os.environ.get("CREATE_BUCKET_TIMEOUT", "120"))
    while True:
        try:
            s3.head_bucket(Bucket=bucket)
            print(f"create-bucket: s3://{bucket} exists at {endpoint}")
            return 0
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (401, 403):  # wrong keys: waiting does not help
                print(f"create-bucket: {endpoint} refused the keys (HTTP {status}): {exc}", file=sys.stderr)
                return 1
            if status == 404:
                try:
                    s3.create_bucket(Bucket=bucket)
                except ClientError as create_exc:  # e.g. the store is not ready to allocate yet
                    error = create_exc
                else:
                    print(f"create-bucket: created s3://{bucket} at {endpoint}")
                    return 0
            else:
                error = exc
        except BotoCoreError as exc:  # not reachable yet
            error = exc
        if time.monotonic() > deadline:
            print(f"create-bucket: gave up on {endpoint}: {error}", file=sys.stderr)
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
