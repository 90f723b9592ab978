"""Where results go: an AWS S3 bucket made here, or the user's own S3-compatible store.

`aws` mode: a private bucket (public access blocked on all four switches, object ownership
enforced so ACLs cannot open it, SSE-S3 by default), a lifecycle that expires results after
`lifecycleDays` and aborts stale multipart uploads, CORS that lets the UI's origins GET (and
HEAD) results, and an IAM user whose inline policy reaches this bucket only, with the actions the
worker's storage code uses (object put/get/head, multipart upload and abort, listing for
`list_multipart_uploads`). Its access key is returned as secret outputs.

`external` mode (R2, B2, MinIO, ...): nothing is created; endpoint, region and bucket come from
config and the two keys from secret config.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi

from infra.stack_config import NAMESPACE, StackSettings

WORKER_OBJECT_ACTIONS = [
    "s3:PutObject",
    "s3:GetObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
WORKER_BUCKET_ACTIONS = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]


@dataclass
class ResultsStore:
    bucket: pulumi.Output[str]
    region: pulumi.Output[Optional[str]]
    endpoint: pulumi.Output[Optional[str]]
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]
    public_base: Optional[str] = None


def worker_policy(bucket_arn: str) -> str:
    """The IAM policy document for the worker's user: this bucket, these actions, nothing else."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "Objects", "Effect": "Allow", "Action": WORKER_OBJECT_ACTIONS, "Resource": f"{bucket_arn}/*"},
                {"Sid": "Bucket", "Effect": "Allow", "Action": WORKER_BUCKET_ACTIONS, "Resource": bucket_arn},
            ],
        },
        sort_keys=True,
    )


def aws_results_store(name: str, settings: StackSettings, parent: pulumi.Resource) -> ResultsStore:
    import pulumi_aws as aws

    child = pulumi.ResourceOptions(parent=parent)
    bucket = aws.s3.Bucket(
        f"{name}-results",
        bucket=settings.bucket_name,
        bucket_prefix=None if settings.bucket_name else f"{name}-results-",
        force_destroy=True,  # results are disposable; destroy must not stall on them
        opts=child,
    )
    bucket_child = pulumi.ResourceOptions(parent=bucket)
    aws.s3.BucketPublicAccessBlock(
        f"{name}-results-private",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=bucket_child,
    )
    aws.s3.BucketOwnershipControls(
        f"{name}-results-ownership",
        bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        opts=bucket_child,
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-results-sse",
        bucket=bucket.id,
        rules=[
            aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="AES256"
                )
            )
        ],
        opts=bucket_child,
    )
    aws.s3.BucketLifecycleConfiguration(
        f"{name}-results-expiry",
        bucket=bucket.id,
        rules=[
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-results",
                status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=settings.lifecycle_days),
                abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                    days_after_initiation=1
                ),
            )
        ],
        opts=bucket_child,
    )
    aws.s3.BucketCorsConfiguration(
        f"{name}-results-cors",
        bucket=bucket.id,
        cors_rules=[
            aws.s3.BucketCorsConfigurationCorsRuleArgs(
                allowed_methods=["GET", "HEAD"],
                allowed_origins=list(settings.ui_origins),
                allowed_headers=["Range"],
                expose_headers=["Content-Length", "Content-Range", "ETag"],
                max_age_seconds=3600,
            )
        ],
        opts=bucket_child,
    )
    user = aws.iam.User(f"{name}-worker", path="/infinitetalk/", opts=child)
    aws.iam.UserPolicy(
        f"{name}-worker-results",
        user=user.name,
        policy=bucket.arn.apply(worker_policy),
        opts=pulumi.ResourceOptions(parent=user),
    )
    key = aws.iam.AccessKey(f"{name}-worker-key", user=user.name, opts=pulumi.ResourceOptions(parent=user))
    region = pulumi.Config("aws").get("region")
    return ResultsStore(
        bucket=bucket.bucket,
        region=bucket.region.apply(lambda r: r or region or "us-east-1"),
        endpoint=pulumi.Output.from_input(None),
        access_key_id=pulumi.Output.secret(key.id),
        secret_access_key=pulumi.Output.secret(key.secret),
        public_base=settings.s3_public_base,
    )


def external_results_store(settings: StackSettings) -> ResultsStore:
    cfg = pulumi.Config(NAMESPACE)
    return ResultsStore(
        bucket=pulumi.Output.from_input(settings.bucket_name or ""),
        region=pulumi.Output.from_input(settings.s3_region or "auto"),
        endpoint=pulumi.Output.from_input(settings.s3_endpoint),
        access_key_id=cfg.require_secret("s3AccessKey"),
        secret_access_key=cfg.require_secret("s3SecretKey"),
        public_base=settings.s3_public_base,
    )


def results_store(name: str, settings: StackSettings, parent: pulumi.Resource) -> ResultsStore:
    if settings.bucket_mode == "aws":
        return aws_results_store(name, settings, parent)
    return external_results_store(settings)
