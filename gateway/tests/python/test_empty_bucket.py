"""Emptying and removing a bucket the way tools do it (aws s3 rb --force, rclone purge, Terraform's
force_destroy): list every version, delete them all by (Key, VersionId), then delete the bucket."""

import pytest
from botocore.exceptions import ClientError

from conftest import make_client

SPECIAL = [
    "with space/a b.txt",
    "plus+sign",
    "amp&ersand<lt>",
    "unicodé/ключ/鍵",
    "quote'and\"double",
    "percent%20not-a-space",
    "trailing/",
]


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_empty_then_delete_bucket(perch, bucket, style):
    s3 = make_client(perch, style)
    keys = sorted([f"obj/{i:03d}" for i in range(30)] + SPECIAL)
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())

    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=bucket)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert e.value.response["Error"]["Code"] == "BucketNotEmpty"

    # boto3 asks for EncodingType=url and decodes; pages of 10 exercise KeyMarker/VersionIdMarker.
    versions = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, PaginationConfig={"PageSize": 10}):
        assert page.get("DeleteMarkers", []) == []
        versions += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
    assert sorted(k for k, _ in versions) == keys
    assert len(versions) == len(keys)
    for _, vid in versions:
        assert isinstance(vid, str) and vid, versions

    objects = [{"Key": k, "VersionId": v} for k, v in versions]
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": False})
    assert out.get("Errors", []) == []
    assert sorted(d["Key"] for d in out["Deleted"]) == keys

    listed = s3.list_objects_v2(Bucket=bucket)
    assert listed["KeyCount"] == 0
    assert "Contents" not in listed
    after = s3.list_object_versions(Bucket=bucket)
    assert after.get("Versions", []) == [] and after.get("DeleteMarkers", []) == []

    gone = s3.delete_bucket(Bucket=bucket)
    assert gone["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket=bucket)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_quiet_delete_objects(perch, bucket):
    s3 = make_client(perch, "path")
    for k in ["a", "b", "c"]:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "missing"}], "Quiet": True})
    assert out.get("Deleted", []) == []
    assert out.get("Errors", []) == []
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["c"]


def test_delete_objects_echoes_version_ids(perch, bucket):
    """S3 (and moto) answer each `<Object><Key/><VersionId/></Object>` of a DeleteObjects request
    with a `<Deleted>` entry carrying the same Key and VersionId (`null` for an unversioned
    bucket's objects). Tools correlate the two: the RustFS CLI, for one, treats a `<Deleted>` entry
    without the VersionId it sent as "the backend omitted the target from its delete result"."""
    s3 = make_client(perch, "path")
    for k in ["a", "b"]:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    listed = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in listed] == [("a", "null", True), ("b", "null", True)]
    out = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a", "VersionId": "null"}, {"Key": "b"}]}
    )
    assert out.get("Errors", []) == []
    deleted = sorted(out["Deleted"], key=lambda d: d["Key"])
    assert deleted == [{"Key": "a", "VersionId": "null"}, {"Key": "b"}]
