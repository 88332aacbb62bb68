"""Object round trips through perch, path style and virtual-hosted, and the empty-body PUT
connection regression."""

import datetime
import hashlib
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import make_client


def quoted_md5(data):
    return '"' + hashlib.md5(data).hexdigest() + '"'


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_round_trip(perch, bucket, style):
    s3 = make_client(perch, style)
    sent = []
    s3.meta.events.register("before-send.s3.PutObject", lambda request, **kw: sent.append(request.url))
    key = "dir/sub dir/obj+1.bin"
    body = bytes(range(256)) * 41 + b"tail"
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)

    put = s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="application/x-perch-test",
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="obj.bin"',
        ContentEncoding="identity",
        ContentLanguage="en-GB",
        Expires=expires,
        Metadata={"color": "blue", "Mixed-Case": "Value With Spaces"},
    )
    # The request really was addressed the way the test says.
    if style == "virtual":
        assert sent[0].startswith(f"http://{bucket}.localhost:{perch.port}/"), sent
    else:
        assert sent[0].startswith(f"http://127.0.0.1:{perch.port}/{bucket}/"), sent
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert put["ETag"] == quoted_md5(body)

    def check_headers(r):
        assert r["ETag"] == quoted_md5(body)
        assert r["ContentLength"] == len(body)
        assert r["ContentType"] == "application/x-perch-test"
        assert r["CacheControl"] == "max-age=60"
        assert r["ContentDisposition"] == 'attachment; filename="obj.bin"'
        assert r["ContentEncoding"] == "identity"
        assert r["ContentLanguage"] == "en-GB"
        assert r["Expires"] == expires
        # S3 lower-cases user metadata names.
        assert r["Metadata"] == {"color": "blue", "mixed-case": "Value With Spaces"}

    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 200
    check_headers(head)

    get = s3.get_object(Bucket=bucket, Key=key)
    assert get["ResponseMetadata"]["HTTPStatusCode"] == 200
    check_headers(get)
    assert get["Body"].read() == body

    listed = s3.list_objects_v2(Bucket=bucket)
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed["Contents"]] == [(key, len(body), quoted_md5(body))]

    deleted = s3.delete_object(Bucket=bucket, Key=key)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204

    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key=key)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert e.value.response["Error"]["Code"] == "NoSuchKey"

    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key=key)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    # Deleting a missing key is not an error in S3.
    again = s3.delete_object(Bucket=bucket, Key=key)
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_get_missing_bucket(perch, client):
    s3 = client(perch, "path")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="no-such-bucket-perch", Key="k")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_put_after_empty_put_on_same_connection(perch, bucket, style, checksum_location):
    """botocore sends `Expect: 100-continue` on every PutObject. After an empty-body PUT it never
    gets a `100 Continue`, and it misreads the next response on that kept-alive connection unless
    the server closes it: the second put_object then returns no ETag."""
    s3 = make_client(perch, style)
    first = s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert first["ETag"] == quoted_md5(b"")

    second = s3.put_object(Bucket=bucket, Key="hello", Body=b"hello")
    assert second["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert second.get("ETag") == quoted_md5(b"hello")

    head = s3.head_object(Bucket=bucket, Key="hello")
    assert head["ETag"] == quoted_md5(b"hello")
    assert head["ContentLength"] == 5
    empty = s3.head_object(Bucket=bucket, Key="empty")
    assert empty["ContentLength"] == 0
    assert empty["ETag"] == quoted_md5(b"")
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


def test_copy_object_metadata(perch, bucket):
    s3 = make_client(perch, "path")
    body = b"copy me" * 1000
    s3.put_object(
        Bucket=bucket, Key="src", Body=body, ContentType="text/x-src", CacheControl="no-cache", Metadata={"a": "1"}
    )

    copied = s3.copy_object(Bucket=bucket, Key="dst/copy", CopySource={"Bucket": bucket, "Key": "src"})
    assert copied["CopyObjectResult"]["ETag"] == quoted_md5(body)
    h = s3.head_object(Bucket=bucket, Key="dst/copy")
    assert (h["ETag"], h["ContentType"], h["CacheControl"], h["Metadata"]) == (
        quoted_md5(body),
        "text/x-src",
        "no-cache",
        {"a": "1"},
    )
    assert s3.get_object(Bucket=bucket, Key="dst/copy")["Body"].read() == body

    s3.copy_object(
        Bucket=bucket,
        Key="dst/replaced",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        ContentType="text/x-new",
        Metadata={"b": "2"},
    )
    h = s3.head_object(Bucket=bucket, Key="dst/replaced")
    assert (h["ContentType"], h["Metadata"], h.get("CacheControl")) == ("text/x-new", {"b": "2"}, None)

    with pytest.raises(ClientError) as e:
        s3.copy_object(
            Bucket=bucket, Key="dst/x", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfNoneMatch=quoted_md5(body)
        )
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    if perch.origin == "dir":  # moto 5.2 ignores x-amz-copy-source-if-match (its own gap, not Perch's)
        with pytest.raises(ClientError) as e:
            s3.copy_object(
                Bucket=bucket, Key="dst/x", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch=quoted_md5(b"other")
            )
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="dst/x")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="dst/x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert e.value.response["Error"]["Code"] == "NoSuchKey"


def test_a_repeated_multipart_completion_gets_the_first_answer(perch, bucket):
    """A client that lost CompleteMultipartUpload's answer sends it again: S3 answers the same
    result again, not NoSuchUpload (the upload is done, and the object is there)."""
    s3 = make_client(perch, "path")
    part1, part2 = b"a" * (5 * 1024 * 1024), b"tail"
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp-again")["UploadId"]
    parts = []
    for n, data in ((1, part1), (2, part2)):
        etag = s3.upload_part(Bucket=bucket, Key="mp-again", UploadId=up, PartNumber=n, Body=data)["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    first = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp-again", UploadId=up, MultipartUpload={"Parts": parts}
    )
    again = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp-again", UploadId=up, MultipartUpload={"Parts": parts}
    )
    assert again["ETag"] == first["ETag"], (first, again)
    assert s3.get_object(Bucket=bucket, Key="mp-again")["Body"].read() == part1 + part2
    # An upload that never existed is still NoSuchUpload, and so is this one for another key.
    for key, upload in (("mp-again", "nonesuch"), ("mp-other", up)):
        with pytest.raises(ClientError) as e:
            s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        assert e.value.response["Error"]["Code"] == "NoSuchUpload", e.value.response


def test_a_304_carries_the_objects_etag(perch, bucket):
    """RFC 9110: a 304 Not Modified carries the ETag a 200 would have (a cache refreshes its copy
    by it); S3 sends it, on GET and HEAD, for If-None-Match and If-Modified-Since alike."""
    s3 = make_client(perch, "path")
    body = b"not modified " * 100
    etag = s3.put_object(Bucket=bucket, Key="nm", Body=body)["ETag"]
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    for call in (s3.get_object, s3.head_object):
        for condition in ({"IfNoneMatch": etag}, {"IfModifiedSince": later}):
            with pytest.raises(ClientError) as e:
                call(Bucket=bucket, Key="nm", **condition)
            meta = e.value.response["ResponseMetadata"]
            assert meta["HTTPStatusCode"] == 304, (call, condition, meta)
            assert meta["HTTPHeaders"].get("etag") == etag, (call, condition, meta["HTTPHeaders"])


def test_copies_over_the_multipart_threshold_copy_parts(perch, bucket):
    """boto3's managed copy (and `aws s3 cp s3://… s3://…`) copies an object over its multipart
    threshold as UploadPartCopy of ranges of the source: each part is the source's bytes, ranges
    are checked as S3 checks them, and the copy's conditions hold or it is 412."""
    import boto3.s3.transfer

    s3 = make_client(perch, "path")
    MiB = 1024 * 1024
    body = bytes(range(256)) * (12 * MiB // 256) + b"end"
    s3.put_object(Bucket=bucket, Key="pc/src", Body=body)
    config = boto3.s3.transfer.TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.copy({"Bucket": bucket, "Key": "pc/src"}, bucket, "pc/dst", Config=config)
    assert s3.get_object(Bucket=bucket, Key="pc/dst")["Body"].read() == body

    up = s3.create_multipart_upload(Bucket=bucket, Key="pc/parts")["UploadId"]
    src = {"Bucket": bucket, "Key": "pc/src"}

    def copy_part(n, **args):
        return s3.upload_part_copy(Bucket=bucket, Key="pc/parts", UploadId=up, PartNumber=n, CopySource=src, **args)

    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(Bucket=bucket, Key="pc/parts", UploadId="nonesuch", PartNumber=1, CopySource=src)
    assert e.value.response["Error"]["Code"] == "NoSuchUpload", e.value.response
    for bad in ("bytes=0-", "bytes=-5", "bytes=9-3", "0-5", "bytes=a-b"):
        with pytest.raises(ClientError) as e:
            copy_part(1, CopySourceRange=bad)
        assert e.value.response["Error"]["Code"] == "InvalidArgument", (bad, e.value.response)
    with pytest.raises(ClientError) as e:
        copy_part(1, CopySourceRange="bytes=0-%d" % len(body))
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416, e.value.response
    with pytest.raises(ClientError) as e:
        copy_part(1, CopySourceIfMatch='"00000000000000000000000000000000"')
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412, e.value.response

    first = copy_part(1, CopySourceRange="bytes=0-%d" % (5 * MiB - 1))["CopyPartResult"]
    whole = copy_part(2)["CopyPartResult"]
    assert first["ETag"] == quoted_md5(body[: 5 * MiB]) and whole["ETag"] == quoted_md5(body)
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="pc/parts",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first["ETag"]}, {"PartNumber": 2, "ETag": whole["ETag"]}]},
    )
    assert s3.get_object(Bucket=bucket, Key="pc/parts")["Body"].read() == body[: 5 * MiB] + body


def test_a_304_the_origin_answers_carries_the_etag(perch_factory, moto):
    """An object Perch holds nothing of: the condition goes to the origin with the request, and
    the origin's 304 reaches the client with the ETag it carried."""
    import boto3

    from conftest import MOTO_KEY, MOTO_SECRET, REGION

    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch, "path")
    bucket = "nm-origin-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=bucket)
    behind = boto3.client(
        "s3", endpoint_url=moto.url, aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_SECRET, region_name=REGION
    )
    etag = behind.put_object(Bucket=bucket, Key="behind", Body=b"written behind Perch's back")["ETag"]
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="behind", IfNoneMatch=etag)
    meta = e.value.response["ResponseMetadata"]
    assert meta["HTTPStatusCode"] == 304, meta
    assert meta["HTTPHeaders"].get("etag") == etag, meta["HTTPHeaders"]


@pytest.mark.parametrize("role", ["primary", "replica"])
def test_multipart_uploads_never_completed_expire(perch_factory, moto, role):
    """An upload begun and never completed (an interrupted `aws s3 cp`, a client gone) held its
    staged parts on the data dir for good: no lifecycle rule at the origin reaches them. Past
    --multipart-expiry it is aborted and its parts removed; a newer one stays. A replica's overlay
    keeps its own uploads, and expires them the same way."""
    primary = perch_factory("primary", origin_url=moto.url, origin="moto", args=["--multipart-expiry", "2s"])
    perch = primary
    bucket = f"mx-{uuid.uuid4().hex[:16]}"
    make_client(primary).create_bucket(Bucket=bucket)
    if role == "replica":
        perch = perch_factory(
            "replica", origin_url=moto.url, origin="moto", role="replica", args=["--multipart-expiry", "2s"]
        )
    s3 = make_client(perch)
    part = b"p" * (5 << 20)
    old = s3.create_multipart_upload(Bucket=bucket, Key="old")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="old", UploadId=old, PartNumber=1, Body=part)["ETag"]

    staging = perch.data_dir / ("overlay" if role == "replica" else "multipart")

    def staged_part_files():
        return [p for p in staging.rglob("*") if p.is_file() and p.stat().st_size >= len(part)]

    assert staged_part_files(), "the part is staged on the data dir"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        time.sleep(0.2)
    new = s3.create_multipart_upload(Bucket=bucket, Key="new")["UploadId"]
    listed = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert listed == [new], listed
    assert not staged_part_files(), "the expired upload's part is still on the data dir"
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="old",
            UploadId=old,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        )
    assert e.value.response["Error"]["Code"] == "NoSuchUpload"
    s3.abort_multipart_upload(Bucket=bucket, Key="new", UploadId=new)
