"""Flexible checksums as boto3 sends them: by default a CRC32 (in a header over http, in an
aws-chunked trailer over https; `trailer_checksums` makes botocore use the https form), explicit
SHA256 and CRC32C, and a multipart upload through boto3's transfer manager."""

import base64
import hashlib
import io
import os
import zlib

import boto3.s3.transfer
import pytest
from botocore.exceptions import ClientError

from conftest import make_client, record_requests

MiB = 1024 * 1024


def b64(n_bytes):
    return base64.b64encode(n_bytes).decode()


def crc32_b64(data):
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c_b64(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return b64((crc ^ 0xFFFFFFFF).to_bytes(4, "big"))


def sha256_b64(data):
    return b64(hashlib.sha256(data).digest())


def quoted_md5(data):
    return '"' + hashlib.md5(data).hexdigest() + '"'


def test_crc32c_helper():
    # RFC 3720 test vector: 32 bytes of zeros.
    assert crc32c_b64(bytes(32)) == b64((0x8A9136AA).to_bytes(4, "big"))


@pytest.fixture
def location(checksum_location):
    return checksum_location


def check_sent(headers, location, name):
    if location == "trailer":
        assert "aws-chunked" in headers.get("content-encoding", ""), headers
        assert headers.get("x-amz-trailer") == name, headers
        assert headers.get("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", headers
        assert name not in headers, headers
    else:
        assert name in headers, headers
        assert "x-amz-trailer" not in headers, headers


def test_default_crc32(perch, bucket, location):
    s3 = make_client(perch, "virtual")
    sent = record_requests(s3, "PutObject")
    body = os.urandom(300 * 1024) + b"end"

    put = s3.put_object(Bucket=bucket, Key="crc32", Body=body)
    check_sent(sent[0], location, "x-amz-checksum-crc32")
    assert put["ETag"] == quoted_md5(body)
    assert put.get("ChecksumCRC32") == crc32_b64(body)

    head = s3.head_object(Bucket=bucket, Key="crc32", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32") == crc32_b64(body)
    assert head["ContentLength"] == len(body)
    # Not asked for: not returned.
    assert "ChecksumCRC32" not in s3.head_object(Bucket=bucket, Key="crc32")

    get = s3.get_object(Bucket=bucket, Key="crc32", ChecksumMode="ENABLED")
    assert get.get("ChecksumCRC32") == crc32_b64(body)
    assert get["Body"].read() == body  # botocore also verifies the CRC32 while reading


def test_aws_chunked_is_not_stored_as_content_encoding(perch, bucket, location):
    """An aws-chunked body carries `Content-Encoding: aws-chunked` (appended to the client's own,
    e.g. `gzip,aws-chunked`). That names the transfer framing only: S3 strips it, keeping `gzip`,
    or no Content-Encoding at all when the client set none."""
    s3 = make_client(perch, "path")
    sent = record_requests(s3, "PutObject")
    s3.put_object(Bucket=bucket, Key="gz", Body=b"\x1f\x8b" + b"z" * 100, ContentEncoding="gzip")
    s3.put_object(Bucket=bucket, Key="plain", Body=b"plain body")
    if location == "trailer":
        assert [h.get("content-encoding") for h in sent] == ["gzip,aws-chunked", "aws-chunked"]

    assert s3.head_object(Bucket=bucket, Key="gz").get("ContentEncoding") == "gzip"
    assert s3.get_object(Bucket=bucket, Key="gz").get("ContentEncoding") == "gzip"
    assert "ContentEncoding" not in s3.head_object(Bucket=bucket, Key="plain")
    got = s3.get_object(Bucket=bucket, Key="plain")
    assert "ContentEncoding" not in got
    assert got["Body"].read() == b"plain body"
    # A list of codings comes back as the client wrote it (its spaces were dropped).
    s3.put_object(Bucket=bucket, Key="two", Body=b"twice encoded", ContentEncoding="deflate, gzip")
    assert s3.head_object(Bucket=bucket, Key="two").get("ContentEncoding") == "deflate, gzip"


def test_explicit_sha256(perch, bucket, location):
    s3 = make_client(perch, "path")
    sent = record_requests(s3, "PutObject")
    body = b"sha256 body " * 5000

    put = s3.put_object(Bucket=bucket, Key="sha", Body=body, ChecksumAlgorithm="SHA256")
    check_sent(sent[0], location, "x-amz-checksum-sha256")
    assert put.get("ChecksumSHA256") == sha256_b64(body)
    # S3: "For PutObject uploads, the checksum type is always FULL_OBJECT".
    assert put.get("ChecksumType") == "FULL_OBJECT"

    head = s3.head_object(Bucket=bucket, Key="sha", ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256") == sha256_b64(body)
    assert "ChecksumCRC32" not in head
    get = s3.get_object(Bucket=bucket, Key="sha", ChecksumMode="ENABLED")
    assert get.get("ChecksumSHA256") == sha256_b64(body)
    assert get["Body"].read() == body


def test_explicit_crc32c(perch, bucket):
    """botocore computes CRC32C only with awscrt; without it a client sends the value it computed."""
    s3 = make_client(perch, "path")
    body = os.urandom(64 * 1024)
    put = s3.put_object(Bucket=bucket, Key="c", Body=body, ChecksumAlgorithm="CRC32C", ChecksumCRC32C=crc32c_b64(body))
    assert put.get("ChecksumCRC32C") == crc32c_b64(body)
    head = s3.head_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32C") == crc32c_b64(body)
    get = s3.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert get.get("ChecksumCRC32C") == crc32c_b64(body)
    assert get["Body"].read() == body


@pytest.mark.parametrize(
    "algorithm,field",
    [("CRC32", "ChecksumCRC32"), ("CRC32C", "ChecksumCRC32C"), ("SHA256", "ChecksumSHA256")],
)
def test_wrong_checksum_is_rejected(perch, bucket, algorithm, field):
    """S3 answers 400 BadDigest when the body does not match the declared checksum, and stores nothing."""
    s3 = make_client(perch, "path")
    body = b"the real body"
    wrong = {"CRC32": crc32_b64, "CRC32C": crc32c_b64, "SHA256": sha256_b64}[algorithm](b"another body")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad", Body=body, ChecksumAlgorithm=algorithm, **{field: wrong})
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert e.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="bad")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_multipart_upload_fileobj(perch, bucket, location, tmp_path):
    s3 = make_client(perch, "virtual")
    parts = record_requests(s3, "UploadPart")
    src = tmp_path / "src.bin"
    data = os.urandom(20 * MiB)
    src.write_bytes(data)
    config = boto3.s3.transfer.TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4
    )
    with open(src, "rb") as f:
        s3.upload_fileobj(f, bucket, "big/20MiB.bin", Config=config)
    assert len(parts) == 3, "boto3 did not upload in 3 parts"
    for h in parts:
        check_sent(h, location, "x-amz-checksum-crc32")

    head = s3.head_object(Bucket=bucket, Key="big/20MiB.bin")
    assert head["ContentLength"] == len(data)
    # A multipart ETag: MD5 of the parts' MD5s, dash, number of parts.
    chunks = [data[i : i + 8 * MiB] for i in range(0, len(data), 8 * MiB)]
    digest = hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest()
    assert head["ETag"] == f'"{digest}-3"'

    out = io.BytesIO()
    s3.download_fileobj(bucket, "big/20MiB.bin", out, Config=config)
    assert hashlib.sha256(out.getvalue()).hexdigest() == hashlib.sha256(data).hexdigest()

    # A plain GET (botocore asks for checksums and checks any full-object one it gets).
    get = s3.get_object(Bucket=bucket, Key="big/20MiB.bin")
    assert hashlib.sha256(get["Body"].read()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_multipart_upload_keeps_its_checksum(perch, bucket):
    """boto3's transfer manager declares CRC32 on CreateMultipartUpload
    (`x-amz-checksum-algorithm: CRC32`), sends each part's CRC32 and lists them in
    CompleteMultipartUpload. S3 keeps a checksum for the object and returns it on
    HEAD with ChecksumMode=ENABLED: the composite `base64(crc32(part crc32s))-<parts>` (or, for a
    FULL_OBJECT upload, the CRC32 of the whole object). moto (queried directly) keeps it too, as the
    bare composite value."""
    s3 = make_client(perch, "path")
    creates = record_requests(s3, "CreateMultipartUpload")
    data = os.urandom(17 * MiB)
    config = boto3.s3.transfer.TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    s3.upload_fileobj(io.BytesIO(data), bucket, "mp", Config=config)
    assert creates[0].get("x-amz-checksum-algorithm") == "CRC32", creates

    parts = [data[i : i + 8 * MiB] for i in range(0, len(data), 8 * MiB)]
    composite = b64(zlib.crc32(b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)).to_bytes(4, "big"))
    accepted = {f"{composite}-{len(parts)}", crc32_b64(data)}
    if perch.origin == "moto":
        accepted.add(composite)  # moto's spelling of the composite checksum
    head = s3.head_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32") in accepted, {k: v for k, v in head.items() if k.startswith("Checksum")}


@pytest.mark.parametrize("source", ["pending", "uploaded"])
def test_a_copy_keeps_the_checksum_it_asks_for(perch, perch_bin, bucket, source):
    """CopyObject with `x-amz-checksum-algorithm`: the copy keeps that checksum of its body, in
    place of the source's, and CopyObjectResult names it, as S3 (the JS and Java SDKs send it); a
    copy without one names the source's. Made by Perch (a source still pending) or by the origin
    (an uploaded one)."""
    from conftest import flush

    s3 = make_client(perch, "path")
    body = os.urandom(300 * 1024)
    s3.put_object(Bucket=bucket, Key="copy/src", Body=body, ChecksumAlgorithm="CRC32")
    if source == "uploaded":
        flush(perch_bin, perch)
    out = s3.copy_object(
        Bucket=bucket, Key="copy/sha", CopySource={"Bucket": bucket, "Key": "copy/src"}, ChecksumAlgorithm="SHA256"
    )["CopyObjectResult"]
    assert out.get("ChecksumSHA256") == sha256_b64(body), out
    assert "ChecksumCRC32" not in out, out
    head = s3.head_object(Bucket=bucket, Key="copy/sha", ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256") == sha256_b64(body), head
    assert "ChecksumCRC32" not in head, head
    get = s3.get_object(Bucket=bucket, Key="copy/sha", ChecksumMode="ENABLED")
    assert get["Body"].read() == body
    # Without an algorithm, the source's checksum, named in the answer too.
    out = s3.copy_object(Bucket=bucket, Key="copy/same", CopySource={"Bucket": bucket, "Key": "copy/src"})
    assert out["CopyObjectResult"].get("ChecksumCRC32") == crc32_b64(body), out
    head = s3.head_object(Bucket=bucket, Key="copy/same", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32") == crc32_b64(body), head


def test_listed_uploads_name_their_checksum(perch, bucket):
    """ListMultipartUploads names each upload's checksum algorithm and type, and ListParts its
    upload's, as S3 (the Java and JS SDKs read them); they were left out."""
    s3 = make_client(perch, "path")
    full = s3.create_multipart_upload(Bucket=bucket, Key="mpu/full", ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT")
    composite = s3.create_multipart_upload(Bucket=bucket, Key="mpu/composite", ChecksumAlgorithm="SHA256")
    plain = s3.create_multipart_upload(Bucket=bucket, Key="mpu/plain")
    listed = {u["Key"]: u for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="mpu/")["Uploads"]}
    assert (listed["mpu/full"].get("ChecksumAlgorithm"), listed["mpu/full"].get("ChecksumType")) == ("CRC32", "FULL_OBJECT")
    assert (listed["mpu/composite"].get("ChecksumAlgorithm"), listed["mpu/composite"].get("ChecksumType")) == (
        "SHA256",
        "COMPOSITE",
    )
    assert "ChecksumAlgorithm" not in listed["mpu/plain"] and "ChecksumType" not in listed["mpu/plain"]
    for key, up, expected in [
        ("mpu/full", full, ("CRC32", "FULL_OBJECT")),
        ("mpu/composite", composite, ("SHA256", "COMPOSITE")),
        ("mpu/plain", plain, (None, None)),
    ]:
        parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=up["UploadId"])
        assert (parts.get("ChecksumAlgorithm"), parts.get("ChecksumType")) == expected, (key, parts)
    for key, up in [("mpu/full", full), ("mpu/composite", composite), ("mpu/plain", plain)]:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])


def test_listings_name_each_objects_checksum(perch, perch_bin, bucket):
    """ListObjectsV2, ListObjects and ListObjectVersions name each object's checksum algorithm
    and type, as S3 (moto too), for a write still pending and for one in the origin; they were
    left out."""
    from conftest import flush

    s3 = make_client(perch, "path", request_checksum_calculation="when_required")
    s3.put_object(Bucket=bucket, Key="ls/uploaded", Body=b"u", ChecksumAlgorithm="SHA256")
    flush(perch_bin, perch)
    s3.put_object(Bucket=bucket, Key="ls/pending", Body=b"p", ChecksumAlgorithm="CRC32C", ChecksumCRC32C=crc32c_b64(b"p"))
    for name, objects in [
        ("v2", s3.list_objects_v2(Bucket=bucket, Prefix="ls/")["Contents"]),
        ("v1", s3.list_objects(Bucket=bucket, Prefix="ls/")["Contents"]),
        ("versions", s3.list_object_versions(Bucket=bucket, Prefix="ls/")["Versions"]),
    ]:
        by_key = {o["Key"]: (o.get("ChecksumAlgorithm"), o.get("ChecksumType")) for o in objects}
        assert by_key == {
            "ls/pending": (["CRC32C"], "FULL_OBJECT"),
            "ls/uploaded": (["SHA256"], "FULL_OBJECT"),
        }, (name, by_key)
