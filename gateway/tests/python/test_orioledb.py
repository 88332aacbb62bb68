"""The calls OrioleDB's S3 restore tool and its lock make, virtual-hosted: the bucket is the first
label of the endpoint host (`BUCKET.localhost:PORT`)."""

import hashlib
import os

import pytest
from botocore.exceptions import ClientError

from conftest import make_client

MiB = 1024 * 1024


def quoted_md5(data):
    return '"' + hashlib.md5(data).hexdigest() + '"'


def error_of(excinfo):
    r = excinfo.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


def test_restore_tool_calls(perch, bucket):
    s3 = make_client(perch, "virtual")
    hosts = []
    s3.meta.events.register("before-send.s3", lambda request, **kw: hosts.append(request.url))

    head = s3.head_bucket(Bucket=bucket)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert hosts[-1].startswith(f"http://{bucket}.localhost:{perch.port}/"), hosts

    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="no-such-bucket-orioledb")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    base = "orioledb_data/"
    files = [f"{base}file-{i:02d}" for i in range(25)]
    dirs = [f"{base}1/0000", f"{base}1/0001", f"{base}2/0000"]
    other = ["wal/000000010000000000000001", "orioledb_data_not_a_dir"]
    for key in files + dirs + other:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())

    # One directory level.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=base, Delimiter="/")
    assert listed["IsTruncated"] is False
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == [f"{base}1/", f"{base}2/"]
    assert [o["Key"] for o in listed["Contents"]] == files
    assert listed["KeyCount"] == 27
    assert listed["Prefix"] == base
    assert listed["Delimiter"] == "/"
    for o in listed["Contents"]:
        assert o["ETag"] == quoted_md5(o["Key"].encode())
        assert o["Size"] == len(o["Key"])

    # The top level: `orioledb_data/` and `wal/` are prefixes, `orioledb_data_not_a_dir` a key.
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == [base, "wal/"]
    assert [o["Key"] for o in top["Contents"]] == ["orioledb_data_not_a_dir"]

    # Pagination, 7 at a time, without a delimiter: 25 keys -> 7, 7, 7, 4.
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{base}file-", PaginationConfig={"PageSize": 7}
        )
    )
    assert [p["KeyCount"] for p in pages] == [7, 7, 7, 4]
    assert [o["Key"] for p in pages for o in p["Contents"]] == files
    assert [p["IsTruncated"] for p in pages] == [True, True, True, False]

    # Pagination with the delimiter: common prefixes count towards MaxKeys and sort with keys.
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=base, Delimiter="/", PaginationConfig={"PageSize": 7}
        )
    )
    names = []
    for p in pages:
        names += [x["Prefix"] for x in p.get("CommonPrefixes", [])]
        names += [x["Key"] for x in p.get("Contents", [])]
    assert sorted(names) == sorted([f"{base}1/", f"{base}2/"] + files)
    assert len(names) == len(set(names)) == 27
    assert [p["KeyCount"] for p in pages] == [7, 7, 7, 6]

    # StartAfter, as a resumed restore uses it.
    after = s3.list_objects_v2(Bucket=bucket, Prefix=f"{base}file-", StartAfter=f"{base}file-20")
    assert [o["Key"] for o in after["Contents"]] == files[21:]


def test_restore_ranged_download_with_if_match(perch, bucket):
    s3 = make_client(perch, "virtual")
    key = "orioledb_data/1/big"
    body = os.urandom(9 * MiB)
    etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
    assert etag == quoted_md5(body)

    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == 9 * MiB
    assert head["ETag"] == etag

    got = b""
    for first, last in [(0, 8 * MiB - 1), (8 * MiB, 9 * MiB - 1)]:
        r = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{last}", IfMatch=etag)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert r["ContentRange"] == f"bytes {first}-{last}/{9 * MiB}"
        assert r["ContentLength"] == last - first + 1
        assert r["ETag"] == etag
        chunk = r["Body"].read()
        assert chunk == body[first : last + 1]
        got += chunk
    assert got == body

    # An open-ended range, as the last chunk is sometimes asked for.
    r = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={8 * MiB}-", IfMatch=etag)
    assert r["ContentRange"] == f"bytes {8 * MiB}-{9 * MiB - 1}/{9 * MiB}"
    assert r["Body"].read() == body[8 * MiB :]

    wrong = quoted_md5(b"something else")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-1023", IfMatch=wrong)
    assert error_of(e) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key=key, IfMatch=wrong)
    assert error_of(e) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key=key, IfMatch=wrong)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412

    # The object changed between two chunks: the second chunk must not be served.
    s3.put_object(Bucket=bucket, Key=key, Body=b"replaced")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={8 * MiB}-{9 * MiB - 1}", IfMatch=etag)
    assert error_of(e) == (412, "PreconditionFailed")


def test_conditional_lock(perch, bucket):
    s3 = make_client(perch, "virtual")
    key = "data/orioledb_data/s3_lock"

    first = s3.put_object(Bucket=bucket, Key=key, Body=b"holder-1", IfNoneMatch="*")
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert first["ETag"] == quoted_md5(b"holder-1")

    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key=key, Body=b"holder-2", IfNoneMatch="*")
    assert error_of(e) == (412, "PreconditionFailed")
    # The lock still belongs to the first holder.
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"holder-1"

    deleted = s3.delete_object(Bucket=bucket, Key=key)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204

    again = s3.put_object(Bucket=bucket, Key=key, Body=b"holder-3", IfNoneMatch="*")
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"holder-3"
