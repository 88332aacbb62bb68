"""The S3 front door as common clients use it (issue 14): streamed PUTs without a length, listing
details boto3 and conformance suites check, ListBuckets paging, and bucket configurations (ACL,
policy, versioning, lifecycle, ownership controls, CORS, tagging, encryption, public access block,
notifications, object lock, request payment, acceleration, website, logging, replication) and
object ACLs passed through to the origin (refused on a replica before they reach it)."""

import hashlib
import json
import uuid
from xml.etree import ElementTree

import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import DEV_KEY, DEV_SECRET, REGION, flush, make_client


def error_of(call):
    with pytest.raises(ClientError) as e:
        call()
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


# --------------------------------------------------------------------------- reads by part number


def test_an_object_is_downloaded_by_part_number(perch, bucket):
    """A download as the Java SDK's multipart client and Go's transfer manager make it: part 1
    first, its PartsCount, then every other part by number, each matched to the first's ETag."""
    s3 = make_client(perch)
    parts = [bytes([i + 1]) * size for i, size in enumerate([5 << 20, (5 << 20) + 11, 4321])]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="parted")["UploadId"]
    done = []
    for n, part in enumerate(parts, 1):
        etag = s3.upload_part(Bucket=bucket, Key="parted", UploadId=upload, PartNumber=n, Body=part)["ETag"]
        done.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket=bucket, Key="parted", UploadId=upload, MultipartUpload={"Parts": done})

    first = s3.get_object(Bucket=bucket, Key="parted", PartNumber=1)
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert first["PartsCount"] == 3
    got, offset, whole = [first["Body"].read()], len(parts[0]), sum(map(len, parts))
    assert first["ContentRange"] == f"bytes 0-{len(parts[0]) - 1}/{whole}"
    for n in (2, 3):
        r = s3.get_object(Bucket=bucket, Key="parted", PartNumber=n, IfMatch=first["ETag"])
        assert r["ContentRange"] == f"bytes {offset}-{offset + len(parts[n - 1]) - 1}/{whole}"
        assert r["PartsCount"] == 3
        got.append(r["Body"].read())
        offset += len(parts[n - 1])
    assert got == parts
    head = s3.head_object(Bucket=bucket, Key="parted", PartNumber=3)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert (head["ContentLength"], head["PartsCount"]) == (len(parts[2]), 3)
    assert head["ResponseMetadata"]["HTTPHeaders"]["content-range"] == f"bytes {whole - len(parts[2])}-{whole - 1}/{whole}"
    plain = s3.head_object(Bucket=bucket, Key="parted")
    assert plain["ResponseMetadata"]["HTTPStatusCode"] == 200 and "PartsCount" not in plain
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="parted", PartNumber=4)) == (416, "InvalidPartNumber")

    # An object not uploaded in parts is its own one part.
    s3.put_object(Bucket=bucket, Key="single", Body=b"one part")
    r = s3.get_object(Bucket=bucket, Key="single", PartNumber=1)
    assert (r["ResponseMetadata"]["HTTPStatusCode"], r["ContentRange"], r["Body"].read()) == (
        206,
        "bytes 0-7/8",
        b"one part",
    )
    assert "PartsCount" not in r
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="single", PartNumber=2)) == (416, "InvalidPartNumber")


ALL_ATTRIBUTES = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]


def test_object_attributes_are_the_objects_head(perch, bucket):
    """GetObjectAttributes (the AWS CLI's `s3api get-object-attributes`, SDKs that read an
    object's checksum without its body) was 501: it answers what a HEAD knows, for a write Perch
    holds and for an object only the origin holds."""
    s3 = make_client(perch)
    s3.put_object(Bucket=bucket, Key="plain", Body=b"attributes", ChecksumAlgorithm="CRC32")
    head = s3.head_object(Bucket=bucket, Key="plain", ChecksumMode="ENABLED")
    got = s3.get_object_attributes(Bucket=bucket, Key="plain", ObjectAttributes=ALL_ATTRIBUTES)
    # Unquoted here, as S3 writes it in this document only (it was quoted).
    assert got["ETag"] == head["ETag"].strip('"')
    assert got["ObjectSize"] == 10
    assert got["StorageClass"] == "STANDARD"
    assert got["Checksum"]["ChecksumCRC32"] == head["ChecksumCRC32"]
    assert got["LastModified"] == head["LastModified"]
    assert "ObjectParts" not in got

    # Only what is asked for.
    only = s3.get_object_attributes(Bucket=bucket, Key="plain", ObjectAttributes=["ObjectSize"])
    assert only["ObjectSize"] == 10
    assert not {"ETag", "Checksum", "StorageClass", "ObjectParts"} & set(only)

    # An object uploaded in parts names their count.
    upload = s3.create_multipart_upload(Bucket=bucket, Key="parted")["UploadId"]
    done = []
    for n, part in enumerate([b"a" * (5 << 20), b"b" * 100], 1):
        etag = s3.upload_part(Bucket=bucket, Key="parted", UploadId=upload, PartNumber=n, Body=part)["ETag"]
        done.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket=bucket, Key="parted", UploadId=upload, MultipartUpload={"Parts": done})
    got = s3.get_object_attributes(Bucket=bucket, Key="parted", ObjectAttributes=ALL_ATTRIBUTES)
    assert got["ObjectParts"]["TotalPartsCount"] == 2, got
    assert got["ObjectSize"] == (5 << 20) + 100
    assert got["ETag"].endswith("-2") and '"' not in got["ETag"]

    assert error_of(
        lambda: s3.get_object_attributes(Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])
    ) == (404, "NoSuchKey")
    assert error_of(
        lambda: s3.get_object_attributes(Bucket=bucket, Key="plain", ObjectAttributes=["Colour"])
    ) == (400, "InvalidArgument")


def test_object_attributes_of_an_object_only_the_origin_holds(perch_factory, moto):
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch)
    direct = moto.client()
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    direct.create_bucket(Bucket=bucket)
    direct.put_object(Bucket=bucket, Key="theirs", Body=b"written at the origin", ChecksumAlgorithm="SHA256")
    want = direct.get_object_attributes(Bucket=bucket, Key="theirs", ObjectAttributes=ALL_ATTRIBUTES)
    got = s3.get_object_attributes(Bucket=bucket, Key="theirs", ObjectAttributes=ALL_ATTRIBUTES)
    for field in ["ObjectSize", "StorageClass", "LastModified"]:
        assert got[field] == want[field], field
    assert got["ETag"] == want["ETag"].strip('"')
    assert got["Checksum"]["ChecksumSHA256"] == want["Checksum"]["ChecksumSHA256"]


# --------------------------------------------------------------------------- chunked PUT


def chunked_put(perch, bucket, key, body, declared_sha256=None):
    """A PUT signed in its headers by botocore's SigV4 signer (the body's SHA-256 signed, as
    botocore signs over http), sent by `requests` from a generator: `Transfer-Encoding: chunked`
    and no Content-Length, as tools streaming data of unknown size send it."""
    url = f"{perch.path_url}/{bucket}/{key}"
    req = AWSRequest(method="PUT", url=url, data=body)
    S3SigV4Auth(Credentials(DEV_KEY, DEV_SECRET), "s3", REGION).add_auth(req)
    headers = dict(req.headers.items())
    if declared_sha256 is not None:
        headers["X-Amz-Content-SHA256"] = declared_sha256

    def chunks():
        for i in range(0, len(body), 100_000):
            yield body[i : i + 100_000]

    r = requests.put(url, data=chunks(), headers=headers, timeout=60)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.request.headers
    return r


@pytest.mark.parametrize("size", [0, 5000, 3 * 1024 * 1024 + 7])
def test_chunked_put_without_length_is_stored(perch, bucket, size):
    body = hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1)
    body = body[:size]
    r = chunked_put(perch, bucket, "streamed", body)
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == '"' + hashlib.md5(body).hexdigest() + '"'
    got = make_client(perch).get_object(Bucket=bucket, Key="streamed")
    assert got["ContentLength"] == size
    assert got["Body"].read() == body
    # Nothing is left behind in the data dir's spool.
    assert list((perch.data_dir / "tmp").iterdir()) == []


def test_chunked_put_with_a_wrong_hash_stores_nothing(perch, bucket):
    body = b"x" * 200_000
    r = chunked_put(perch, bucket, "bad", body, declared_sha256=hashlib.sha256(b"other").hexdigest())
    # botocore signed the real hash; the header now differs from what it signed.
    assert r.status_code in (400, 403), r.text
    s3 = make_client(perch)
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="bad"))[0] == 404

    # Signed for a body that is not the one sent: the hash check fails after the body arrived.
    url = f"{perch.path_url}/{bucket}/bad2"
    req = AWSRequest(method="PUT", url=url, data=b"y" * 200_000)
    S3SigV4Auth(Credentials(DEV_KEY, DEV_SECRET), "s3", REGION).add_auth(req)
    r = requests.put(url, data=iter([body]), headers=dict(req.headers.items()), timeout=60)
    assert r.status_code == 400 and "XAmzContentSHA256Mismatch" in r.text, r.text
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="bad2"))[0] == 404
    assert list((perch.data_dir / "tmp").iterdir()) == []


def test_a_presigned_chunked_put_is_bounded_and_stored(perch_factory):
    """A presigned PUT URL sent a body of unknown size (`requests.put(url, data=generator)`,
    `curl -T -`): `Transfer-Encoding: chunked`, no Content-Length and no x-amz-content-sha256. It
    is given its length like a header-signed chunked PUT: bounded by --body-bytes-max (it was
    received unbounded, with no room allocated for it) and stored whole."""
    perch = perch_factory("bounded", origin="dir", args=("--body-bytes-max", "1MiB"))
    s3 = make_client(perch)
    s3.create_bucket(Bucket="presigned-chunked")

    def put(key, body):
        url = s3.generate_presigned_url("put_object", Params={"Bucket": "presigned-chunked", "Key": key},
                                        ExpiresIn=300)

        def chunks():
            for i in range(0, len(body), 100_000):
                yield body[i : i + 100_000]

        r = requests.put(url, data=chunks(), timeout=60)
        assert r.request.headers.get("Transfer-Encoding") == "chunked"
        assert "x-amz-content-sha256" not in {k.lower() for k in r.request.headers}
        return r

    body = bytes(range(256)) * 2000
    r = put("fits", body)
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == '"' + hashlib.md5(body).hexdigest() + '"'
    assert s3.get_object(Bucket="presigned-chunked", Key="fits")["Body"].read() == body
    r = put("over", b"z" * ((1 << 20) + 1))
    assert r.status_code == 400 and "<Code>EntityTooLarge</Code>" in r.text, r.text
    assert error_of(lambda: s3.head_object(Bucket="presigned-chunked", Key="over"))[0] == 404
    assert list((perch.data_dir / "tmp").iterdir()) == []


def test_a_browser_form_file_is_bounded(perch_factory):
    """s3s holds a browser form's file in memory whole: it is bounded by --body-bytes-max (at most
    64 MiB), also when the form comes chunked with no length for the door to judge (it was
    bounded by s3s's 5 GiB only)."""
    perch = perch_factory("form-bounded", origin="dir", args=("--body-bytes-max", "1MiB"))
    s3 = make_client(perch, signature_version="s3v4")
    s3.create_bucket(Bucket="forms")

    def post_chunked(key, data):
        post = s3.generate_presigned_post("forms", key)
        form = requests.Request("POST", post["url"], data=post["fields"], files={"file": (key, data)}).prepare()
        body = form.body
        r = requests.post(post["url"], data=(body[i : i + 65536] for i in range(0, len(body), 65536)),
                          headers={"Content-Type": form.headers["Content-Type"]}, timeout=60)
        assert r.request.headers.get("Transfer-Encoding") == "chunked"
        return r

    r = post_chunked("small.bin", b"s" * 5000)
    assert r.status_code == 204, r.text
    assert s3.get_object(Bucket="forms", Key="small.bin")["Body"].read() == b"s" * 5000
    r = post_chunked("big.bin", b"q" * (2 << 20))
    assert r.status_code == 400 and "<Code>EntityTooLarge</Code>" in r.text, r.text
    assert error_of(lambda: s3.head_object(Bucket="forms", Key="big.bin"))[0] == 404


# --------------------------------------------------------------------------- listings


def test_listing_details(perch, bucket):
    s3 = make_client(perch)
    s3.put_object(Bucket=bucket, Key="a/1", Body=b"1")
    s3.put_object(Bucket=bucket, Key="b", Body=b"2")
    for list_call in (s3.list_objects, s3.list_objects_v2):
        # An empty delimiter is no delimiter: S3 leaves the element out.
        r = list_call(Bucket=bucket, Delimiter="")
        assert "Delimiter" not in r, r
        assert [o["Key"] for o in r["Contents"]] == ["a/1", "b"]
        # A prefix with a control character comes back as it was given (boto3 asks for
        # encoding-type=url by itself and decodes what S3 encodes).
        r = list_call(Bucket=bucket, Prefix="\n")
        assert r["Prefix"] == "\n", r
        assert "Contents" not in r
        r = list_call(Bucket=bucket, Prefix="a/", Delimiter="/")
        assert r["Prefix"] == "a/" and r["Delimiter"] == "/"

    # Owners: version 1 always lists them; version 2 when asked.
    v1 = s3.list_objects(Bucket=bucket)["Contents"]
    assert all(o["Owner"]["ID"] for o in v1), v1
    v2 = s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"]
    assert [o["Owner"] for o in v2] == [o["Owner"] for o in v1]
    assert all("Owner" not in o for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    # The owner is the bucket's, as its ACL names it.
    assert v2[0]["Owner"]["ID"] == s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]


def test_a_carriage_return_in_a_listing_is_written_as_a_character_reference(perch, bucket):
    # A raw carriage return in XML is read as a line feed: S3 writes `&#13;`. boto3 asks for
    # encoding-type=url, so the listing is asked for here without it, signed by hand.
    s3 = make_client(perch)
    s3.put_object(Bucket=bucket, Key="cr/a\rb", Body=b"1")
    for query in ("list-type=2&prefix=cr%2Fa%0D", "prefix=cr%2Fa%0D"):
        url = f"{perch.path_url}/{bucket}?{query}"
        req = AWSRequest(method="GET", url=url)
        S3SigV4Auth(Credentials(DEV_KEY, DEV_SECRET), "s3", REGION).add_auth(req)
        r = requests.get(url, headers=dict(req.headers.items()), timeout=60)
        assert r.status_code == 200, r.text
        assert b"\r" not in r.content and b"<Key>cr/a&#13;b</Key>" in r.content, r.content
        assert int(r.headers.get("Content-Length", len(r.content))) == len(r.content)
        root = ElementTree.fromstring(r.content)
        ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
        assert [k.text for k in root.iterfind("s3:Contents/s3:Key", ns)] == ["cr/a\rb"]
        assert root.find("s3:Prefix", ns).text == "cr/a\r"
    # An object's own bytes are never rewritten, whatever its Content-Type (s3s's path for a GET
    # with response-* overrides, and the hit path).
    doc = b"<?xml version=\"1.0\"?>\r\n<a>\r</a>\r\n"
    s3.put_object(Bucket=bucket, Key="cr/doc.xml", Body=doc, ContentType="application/xml")
    assert s3.get_object(Bucket=bucket, Key="cr/doc.xml")["Body"].read() == doc
    got = s3.get_object(Bucket=bucket, Key="cr/doc.xml", ResponseContentType="application/xml; charset=utf-8")
    assert got["Body"].read() == doc


def test_a_browser_form_upload_is_stored_as_a_put(perch, bucket):
    # PostObject (an HTML form signed by a POST policy, as boto3's generate_presigned_post makes
    # it): stored like a PutObject and read back whole.
    s3 = make_client(perch, signature_version="s3v4")
    body = bytes(range(256)) * 40
    post = s3.generate_presigned_post(bucket, "form/upload.bin", Conditions=[["content-length-range", 1, 1 << 20]])
    r = requests.post(post["url"], data=post["fields"], files={"file": ("upload.bin", body)}, timeout=60)
    assert r.status_code == 204, r.text
    assert s3.get_object(Bucket=bucket, Key="form/upload.bin")["Body"].read() == body
    # A form whose policy signature does not match is refused, and stores nothing.
    sig = post["fields"]["x-amz-signature"]
    fields = dict(post["fields"], **{"x-amz-signature": sig[:-1] + ("1" if sig[-1] == "0" else "0")})
    r = requests.post(post["url"], data=fields, files={"file": ("upload.bin", b"x")}, timeout=60)
    assert r.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in r.text, r.text
    assert s3.get_object(Bucket=bucket, Key="form/upload.bin")["Body"].read() == body
    # Perch's own keys are no more writable by a form than by a PUT (the key is in the form, not
    # the path).
    for key in (".perch/hot-set", ".perch/lease"):
        post = s3.generate_presigned_post(bucket, key)
        r = requests.post(post["url"], data=post["fields"], files={"file": ("x", b"x")}, timeout=60)
        assert r.status_code == 403 and "<Code>AccessDenied</Code>" in r.text, (key, r.text)


def test_a_browser_form_that_fails_its_policy_is_access_denied(perch, bucket):
    """S3 answers a form whose fields fail a condition of its (well-signed) policy 403
    AccessDenied ("Invalid according to Policy"); s3s answered 400 InvalidPolicyDocument, S3's
    answer to a policy it cannot read."""
    s3 = make_client(perch, signature_version="s3v4")
    other = f"{bucket}-other"
    s3.create_bucket(Bucket=other)
    cases = {
        "another bucket": (other, "form-policy/a", {}, [], {}),
        "a key outside its prefix": (bucket, "elsewhere/b", {}, [["starts-with", "$key", "form-policy/"]], {}),
        "a field of another value": (
            bucket,
            "form-policy/c",
            {"x-amz-meta-foo": "bar"},
            [{"x-amz-meta-foo": "bar"}],
            {"x-amz-meta-foo": "barf"},
        ),
    }
    for what, (signed_for, key, fields, conditions, changed) in cases.items():
        post = s3.generate_presigned_post(signed_for, key, Fields=fields, Conditions=conditions)
        url = post["url"].replace(f"/{signed_for}", f"/{bucket}") if signed_for != bucket else post["url"]
        r = requests.post(url, data=dict(post["fields"], **changed), files={"file": ("x", b"x")}, timeout=60)
        assert r.status_code == 403 and "<Code>AccessDenied</Code>" in r.text, (what, r.status_code, r.text)
        assert "Invalid according to Policy" in r.text, (what, r.text)
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket=bucket, Key=key)
        assert e.value.response["Error"]["Code"] == "404", what
    s3.delete_bucket(Bucket=other)


def test_form_fields_a_header_cannot_carry_are_refused_at_the_door(perch, bucket):
    """A browser form's fields become the object's headers without passing through HTTP's header
    syntax: a metadata name that is no header name, or a content header or metadata value with a
    control character, was stored and acknowledged (204), and its upload refused for good (no
    request can carry it). Now 400 InvalidArgument, nothing stored; a metadata value beyond
    header text is kept in its RFC 2047 form, as a PUT's is."""
    s3 = make_client(perch, signature_version="s3v4")
    cases = {
        "name-space": {"x-amz-meta-a b": "v"},
        "name-colon": {"x-amz-meta-a:b": "v"},
        "type-crlf": {"Content-Type": "text/plain\r\nX-Evil: 1"},
        "cache-lf": {"Cache-Control": "no\ncache"},
        "disposition-ctl": {"Content-Disposition": "attachment\x01"},
    }
    for name, fields in cases.items():
        key = f"form-bad/{name}"
        post = s3.generate_presigned_post(bucket, key, Fields=fields, Conditions=[fields])
        r = requests.post(post["url"], data=post["fields"], files={"file": ("x", b"x")}, timeout=60)
        assert r.status_code == 400 and "<Code>InvalidArgument</Code>" in r.text, (name, r.status_code, r.text)
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket=bucket, Key=key)
        assert e.value.response["Error"]["Code"] == "404", name
    fields = {"x-amz-meta-a": "x\x01y", "Cache-Control": "no-cache\t"}
    conditions = [{"x-amz-meta-a": "x\x01y"}, ["starts-with", "$Cache-Control", "no-cache"]]
    post = s3.generate_presigned_post(bucket, "form-ok/ctl-value", Fields=fields, Conditions=conditions)
    r = requests.post(post["url"], data=post["fields"], files={"file": ("x", b"x")}, timeout=60)
    assert r.status_code == 204, r.text
    got = s3.head_object(Bucket=bucket, Key="form-ok/ctl-value")
    assert got["Metadata"] == {"a": "=?UTF-8?B?eAF5?="}, got["Metadata"]
    # Kept as an upload carries it: HTTP trims a value's ends.
    assert got["CacheControl"] == "no-cache", got


def test_a_metadata_value_that_decodes_to_a_control_character_is_kept_as_given(perch_bin, perch, bucket, request):
    """A metadata value in RFC 2047 form (`=?UTF-8?B?...?=`, plain ASCII, as any client may send
    it) is decoded by s3s; one that decodes to a control character (`x\r\ny`) was kept decoded,
    acknowledged, and its upload refused for good (no header can carry a CR), holding up every
    checkpoint after it. It is kept in the form it was given, as S3 keeps the text, and uploaded."""
    s3 = make_client(perch)
    encoded = "=?UTF-8?B?eA0KeQ==?="
    s3.put_object(Bucket=bucket, Key="meta/ctl", Body=b"ctl", Metadata={"a": encoded})
    # A tab, and spaces at the ends, would not go out as they were kept either ("a\t", " a ").
    blanks = {"t": "=?UTF-8?B?YQk=?=", "s": "=?UTF-8?B?IGEg?="}
    s3.put_object(Bucket=bucket, Key="meta/blanks", Body=b"blanks", Metadata=blanks)
    flush(perch_bin, perch)
    assert s3.head_object(Bucket=bucket, Key="meta/ctl")["Metadata"] == {"a": encoded}
    assert s3.head_object(Bucket=bucket, Key="meta/blanks")["Metadata"] == blanks
    if perch.origin == "moto":
        import boto3
        from conftest import MOTO_KEY, MOTO_SECRET

        moto = request.getfixturevalue("moto")
        origin = boto3.client("s3", endpoint_url=moto.url, aws_access_key_id=MOTO_KEY,
                              aws_secret_access_key=MOTO_SECRET, region_name=REGION)
        assert origin.head_object(Bucket=bucket, Key="meta/ctl")["Metadata"] == {"a": encoded}
        assert origin.head_object(Bucket=bucket, Key="meta/blanks")["Metadata"] == blanks


# --------------------------------------------------------------------------- repeated metadata lines


def test_repeated_metadata_lines_are_one_comma_separated_value(perch, bucket):
    """Two `x-amz-meta-d` lines are one value `1,2` to S3 (it combines the lines of one name), and
    signed as such: SigV4's canonical request joins them the same way. s3s refused them as a
    duplicate header."""
    import http.client

    body = b"repeated"
    url = f"{perch.path_url}/{bucket}/dupmeta"
    headers = {"x-amz-meta-d": "1,2", "x-amz-content-sha256": hashlib.sha256(body).hexdigest()}
    req = AWSRequest(method="PUT", url=url, data=body, headers=headers)
    S3SigV4Auth(Credentials(DEV_KEY, DEV_SECRET), "s3", REGION).add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", perch.port, timeout=30)
    conn.putrequest("PUT", f"/{bucket}/dupmeta", skip_accept_encoding=True)
    for name, value in req.headers.items():
        if name.lower() != "x-amz-meta-d":
            conn.putheader(name, value)
    conn.putheader("x-amz-meta-d", "1")
    conn.putheader("x-amz-meta-d", "2")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body)
    r = conn.getresponse()
    assert r.status == 200, r.read()
    conn.close()
    got = make_client(perch).head_object(Bucket=bucket, Key="dupmeta")
    assert got["Metadata"] == {"d": "1,2"}
    assert make_client(perch).get_object(Bucket=bucket, Key="dupmeta")["Body"].read() == body


def test_an_expires_that_is_no_date_is_answered_as_stored(perch_factory, moto):
    """S3 keeps an object's `Expires` as the text it was given (`0` is common); s3s writes only a
    date, so an object whose Expires is no date lost the header through Perch. Whole and ranged
    GETs (the fast path and s3s's), HEAD, missed and hit."""
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch)
    direct = moto.client()
    bucket = f"e-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)

    def raw_expires(request, **kwargs):
        request.headers["Expires"] = "0"

    direct.meta.events.register("before-sign.s3.PutObject", raw_expires)
    direct.put_object(Bucket=bucket, Key="e", Body=b"expires as text")
    assert direct.head_object(Bucket=bucket, Key="e")["ResponseMetadata"]["HTTPHeaders"]["expires"] == "0"
    for attempt in ("miss", "hit"):
        got = s3.get_object(Bucket=bucket, Key="e")
        assert got["ResponseMetadata"]["HTTPHeaders"].get("expires") == "0", attempt
        assert got["Body"].read() == b"expires as text"
        head = s3.head_object(Bucket=bucket, Key="e")
        assert head["ResponseMetadata"]["HTTPHeaders"].get("expires") == "0", attempt
        ranged = s3.get_object(Bucket=bucket, Key="e", Range="bytes=0-6")
        assert ranged["ResponseMetadata"]["HTTPHeaders"].get("expires") == "0", attempt
        assert ranged["Body"].read() == b"expires"
    # A response-expires override still takes its place.
    over = s3.get_object(Bucket=bucket, Key="e", Range="bytes=0-6", ResponseExpires="Thu, 01 Jan 2037 00:00:00 GMT")
    assert over["ResponseMetadata"]["HTTPHeaders"].get("expires") == "Thu, 01 Jan 2037 00:00:00 GMT"


# --------------------------------------------------------------------------- what is not kept


def test_object_writes_asking_for_what_perch_does_not_keep_are_refused(perch, bucket):
    """KMS or customer-key encryption, website redirects and object lock would be dropped on the
    way to the origin: S3's 501 NotImplemented at the door, nothing stored, rather than a 200 for
    an object that silently lacks them. What every object gets anyway, SSE-S3, is taken (storage
    classes and tags are carried: `test_a_write_in_another_storage_class_is_uploaded_in_it`,
    `tags_given_with_a_write_are_carried_to_the_origin`; but not the archive classes, whose
    objects S3 refuses to read until restored, where Perch would serve its copy)."""
    s3 = make_client(perch, "path")
    s3.put_object(Bucket=bucket, Key="kept/src", Body=b"source")
    key = b"k" * 32
    asks = {
        "archive class": {"StorageClass": "GLACIER"},
        "deep archive class": {"StorageClass": "DEEP_ARCHIVE"},
        "KMS": {"ServerSideEncryption": "aws:kms"},
        "customer key": {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key.decode()},
        "website redirect": {"WebsiteRedirectLocation": "/elsewhere"},
        "object lock": {"ObjectLockLegalHoldStatus": "ON"},
    }
    for what, args in asks.items():
        calls = {
            "PutObject": lambda: s3.put_object(Bucket=bucket, Key="kept/refused", Body=b"x", **args),
            "CreateMultipartUpload": lambda: s3.create_multipart_upload(Bucket=bucket, Key="kept/refused", **args),
            "CopyObject": lambda: s3.copy_object(
                Bucket=bucket, Key="kept/refused", CopySource={"Bucket": bucket, "Key": "kept/src"}, **args
            ),
        }
        for call, do in calls.items():
            assert error_of(do) == (501, "NotImplemented"), (what, call)
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="kept/refused"))[0] == 404
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "an upload was started"
    s3.put_object(Bucket=bucket, Key="kept/ok", Body=b"y", StorageClass="STANDARD", ServerSideEncryption="AES256")
    assert s3.get_object(Bucket=bucket, Key="kept/ok")["Body"].read() == b"y"


def test_a_write_asking_for_sse_s3_is_answered_with_it(perch, bucket):
    """S3 names the encryption a write asked for in its answer (`x-amz-server-side-encryption:
    AES256`): clients that ask for it (`aws s3 cp --sse AES256`) check it. Every object gets it at
    the origin (S3 and Tigris encrypt every object at rest)."""
    s3 = make_client(perch, "path")
    put = s3.put_object(Bucket=bucket, Key="sse/a", Body=b"a", ServerSideEncryption="AES256")
    assert put.get("ServerSideEncryption") == "AES256", put
    copy = s3.copy_object(
        Bucket=bucket, Key="sse/b", CopySource={"Bucket": bucket, "Key": "sse/a"}, ServerSideEncryption="AES256"
    )
    assert copy.get("ServerSideEncryption") == "AES256", copy
    upload = s3.create_multipart_upload(Bucket=bucket, Key="sse/c", ServerSideEncryption="AES256")
    assert upload.get("ServerSideEncryption") == "AES256", upload
    s3.abort_multipart_upload(Bucket=bucket, Key="sse/c", UploadId=upload["UploadId"])
    # Not asked, not named (as moto, and as Perch's answers have been).
    assert "ServerSideEncryption" not in s3.put_object(Bucket=bucket, Key="sse/d", Body=b"d")


def test_a_kms_key_without_kms_encryption_is_an_invalid_argument(perch, bucket):
    """A KMS key id or encryption context names an encryption the write does not ask for (SSE-S3
    or none): S3's 400 InvalidArgument, where it was taken and the key silently dropped."""
    s3 = make_client(perch, "path")
    s3.put_object(Bucket=bucket, Key="kms/src", Body=b"source")
    context = "eyJhIjoiYiJ9"  # base64 of {"a":"b"}
    for what, args in {
        "a key id with AES256": {"ServerSideEncryption": "AES256", "SSEKMSKeyId": "testkey-1"},
        "a key id alone": {"SSEKMSKeyId": "testkey-1"},
        "a context with AES256": {"ServerSideEncryption": "AES256", "SSEKMSEncryptionContext": context},
    }.items():
        for call, do in {
            "PutObject": lambda: s3.put_object(Bucket=bucket, Key="kms/refused", Body=b"x", **args),
            "CreateMultipartUpload": lambda: s3.create_multipart_upload(Bucket=bucket, Key="kms/refused", **args),
            "CopyObject": lambda: s3.copy_object(
                Bucket=bucket, Key="kms/refused", CopySource={"Bucket": bucket, "Key": "kms/src"}, **args
            ),
        }.items():
            assert error_of(do) == (400, "InvalidArgument"), (what, call)
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="kms/refused"))[0] == 404
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "an upload was started"


def test_an_empty_content_md5_is_an_invalid_digest(perch, bucket):
    """S3 refuses an empty Content-MD5 (400 InvalidDigest) as any that is not an MD5 in base64;
    s3s read it as none, and the write was taken."""
    s3 = make_client(perch, "path")

    def empty_md5(request, **kwargs):
        request.headers["Content-MD5"] = ""

    s3.meta.events.register("before-send.s3.PutObject", empty_md5)
    s3.meta.events.register("before-send.s3.UploadPart", empty_md5)
    assert error_of(lambda: s3.put_object(Bucket=bucket, Key="md5/empty", Body=b"body")) == (400, "InvalidDigest")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="md5/parts")["UploadId"]
    part = lambda: s3.upload_part(Bucket=bucket, Key="md5/parts", UploadId=upload, PartNumber=1, Body=b"part")
    assert error_of(part) == (400, "InvalidDigest")
    assert not s3.list_parts(Bucket=bucket, Key="md5/parts", UploadId=upload).get("Parts")
    s3.abort_multipart_upload(Bucket=bucket, Key="md5/parts", UploadId=upload)
    s3.meta.events.unregister("before-send.s3.PutObject", empty_md5)
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="md5/empty"))[0] == 404


def test_list_buckets_pages(perch):
    s3 = make_client(perch)
    tag = uuid.uuid4().hex[:10]
    names = sorted(f"lb-{tag}-{i}" for i in range(5))
    for n in names:
        s3.create_bucket(Bucket=n)
    everything = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert everything == sorted(everything) and set(names) <= set(everything)

    assert [b["Name"] for b in s3.list_buckets(Prefix=f"lb-{tag}-")["Buckets"]] == names
    seen, token, pages = [], None, 0
    while True:
        kw = {"MaxBuckets": 2, "Prefix": f"lb-{tag}-"}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_buckets(**kw)
        pages += 1
        assert len(page["Buckets"]) <= 2
        seen += [b["Name"] for b in page["Buckets"]]
        token = page.get("ContinuationToken")
        if not token:
            break
    assert (seen, pages) == (names, 3)
    assert [b["Name"] for b in s3.get_paginator("list_buckets").paginate(PaginationConfig={"PageSize": 3}).build_full_result()["Buckets"]] == everything
    assert error_of(lambda: s3.list_buckets(MaxBuckets=10001)) == (400, "InvalidArgument")
    assert error_of(lambda: s3.list_buckets(ContinuationToken="not-ours")) == (400, "InvalidArgument")


# --------------------------------------------------------------------------- configurations

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::BUCKET/*"}
    ],
}
LIFECYCLE = {
    "Rules": [{"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 3}}]
}
CORS = {"CORSRules": [{"AllowedMethods": ["GET", "PUT"], "AllowedOrigins": ["https://example.com"], "MaxAgeSeconds": 60}]}
TAGS = {"TagSet": [{"Key": "team", "Value": "db & <ops>"}]}


def test_bucket_configurations_pass_through_to_moto(perch_factory, moto):
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch)
    direct = moto.client()
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    policy = json.dumps(POLICY).replace("BUCKET", bucket)

    # Nothing configured yet: the origin's own answers.
    assert error_of(lambda: s3.get_bucket_policy(Bucket=bucket)) == (404, "NoSuchBucketPolicy")
    assert error_of(lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket)) == (404, "NoSuchLifecycleConfiguration")
    assert error_of(lambda: s3.get_bucket_cors(Bucket=bucket)) == (404, "NoSuchCORSConfiguration")
    assert error_of(lambda: s3.get_bucket_tagging(Bucket=bucket)) == (404, "NoSuchTagSet")
    assert s3.get_bucket_acl(Bucket=bucket)["Grants"] == direct.get_bucket_acl(Bucket=bucket)["Grants"]

    # Each change lands in the origin, and reads back through Perch as the origin answers it.
    s3.put_bucket_policy(Bucket=bucket, Policy=policy)
    assert json.loads(direct.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(policy)
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(policy)

    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    assert direct.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"

    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=LIFECYCLE)
    assert direct.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] == LIFECYCLE["Rules"]
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] == LIFECYCLE["Rules"]

    controls = {"Rules": [{"ObjectOwnership": "BucketOwnerPreferred"}]}
    s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=controls)
    assert direct.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"] == controls
    assert s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"] == controls

    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    assert direct.get_bucket_cors(Bucket=bucket)["CORSRules"] == CORS["CORSRules"]
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == CORS["CORSRules"]

    s3.put_bucket_tagging(Bucket=bucket, Tagging=TAGS)
    assert direct.get_bucket_tagging(Bucket=bucket)["TagSet"] == TAGS["TagSet"]
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == TAGS["TagSet"]

    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    grants = direct.get_bucket_acl(Bucket=bucket)["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants), grants
    assert s3.get_bucket_acl(Bucket=bucket)["Grants"] == grants

    # Object ACLs: the object is written back first, so the origin has it when the ACL goes.
    s3.put_object(Bucket=bucket, Key="k", Body=b"acl")
    assert s3.get_object_acl(Bucket=bucket, Key="k")["Owner"] == direct.get_object_acl(Bucket=bucket, Key="k")["Owner"]
    s3.put_object(Bucket=bucket, Key="k2", Body=b"acl")
    s3.put_object_acl(Bucket=bucket, Key="k2", ACL="public-read")
    grants = direct.get_object_acl(Bucket=bucket, Key="k2")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants), grants
    assert s3.get_object_acl(Bucket=bucket, Key="k2")["Grants"] == grants
    assert error_of(lambda: s3.get_object_acl(Bucket=bucket, Key="missing")) == (404, "NoSuchKey")

    # Removals.
    for name, call, get in [
        ("policy", s3.delete_bucket_policy, direct.get_bucket_policy),
        ("lifecycle", s3.delete_bucket_lifecycle, direct.get_bucket_lifecycle_configuration),
        ("cors", s3.delete_bucket_cors, direct.get_bucket_cors),
        ("tagging", s3.delete_bucket_tagging, direct.get_bucket_tagging),
        ("ownership", s3.delete_bucket_ownership_controls, direct.get_bucket_ownership_controls),
    ]:
        assert call(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204, name
        assert error_of(lambda: get(Bucket=bucket))[0] == 404, name

    # A missing bucket is the origin's 404.
    assert error_of(lambda: s3.get_bucket_tagging(Bucket=f"c-{uuid.uuid4().hex[:16]}")) == (404, "NoSuchBucket")


ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": False,
    "RestrictPublicBuckets": False,
}
NOTIFICATION = {
    "TopicConfigurations": [
        {"Id": "new", "TopicArn": "arn:aws:sns:us-east-1:123456789012:perch", "Events": ["s3:ObjectCreated:*"]}
    ]
}
WEBSITE = {"IndexDocument": {"Suffix": "index.html"}, "ErrorDocument": {"Key": "error.html"}}


def test_the_configurations_tools_read_pass_through_to_moto(perch_factory, moto):
    """The configurations a bucket tool reads on every refresh (Terraform, the console's clients,
    the AWS CLI hunt: encryption, public access block, notifications, object lock, acceleration,
    website, logging, replication) were 501 NotImplemented; they are the origin's, both ways."""
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch)
    direct = moto.client()
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)

    # Nothing configured yet: the origin's own answers.
    assert error_of(lambda: s3.get_public_access_block(Bucket=bucket)) == (404, "NoSuchPublicAccessBlockConfiguration")
    assert error_of(lambda: s3.get_object_lock_configuration(Bucket=bucket)) == (
        404,
        "ObjectLockConfigurationNotFoundError",
    )
    assert error_of(lambda: s3.get_bucket_website(Bucket=bucket)) == (404, "NoSuchWebsiteConfiguration")
    assert error_of(lambda: s3.get_bucket_replication(Bucket=bucket)) == (404, "ReplicationConfigurationNotFoundError")
    assert "TopicConfigurations" not in s3.get_bucket_notification_configuration(Bucket=bucket)
    assert "LoggingEnabled" not in s3.get_bucket_logging(Bucket=bucket)
    assert "Status" not in s3.get_bucket_accelerate_configuration(Bucket=bucket)

    # Each change lands in the origin, and reads back through Perch as the origin answers it.
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=ENCRYPTION)
    got = direct.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert got["Rules"][0]["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"] == got

    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
    assert direct.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == PUBLIC_ACCESS_BLOCK
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == PUBLIC_ACCESS_BLOCK

    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=NOTIFICATION)
    got = direct.get_bucket_notification_configuration(Bucket=bucket)["TopicConfigurations"]
    assert got[0]["TopicArn"] == NOTIFICATION["TopicConfigurations"][0]["TopicArn"], got
    assert s3.get_bucket_notification_configuration(Bucket=bucket)["TopicConfigurations"] == got

    s3.put_bucket_accelerate_configuration(Bucket=bucket, AccelerateConfiguration={"Status": "Enabled"})
    assert direct.get_bucket_accelerate_configuration(Bucket=bucket)["Status"] == "Enabled"
    assert s3.get_bucket_accelerate_configuration(Bucket=bucket)["Status"] == "Enabled"

    s3.put_bucket_website(Bucket=bucket, WebsiteConfiguration=WEBSITE)
    got = direct.get_bucket_website(Bucket=bucket)
    assert got["IndexDocument"] == WEBSITE["IndexDocument"], got
    assert s3.get_bucket_website(Bucket=bucket)["IndexDocument"] == WEBSITE["IndexDocument"]
    assert s3.get_bucket_website(Bucket=bucket)["ErrorDocument"] == WEBSITE["ErrorDocument"]

    logs = f"c-{uuid.uuid4().hex[:16]}"
    direct.create_bucket(Bucket=logs)
    direct.put_bucket_acl(Bucket=logs, ACL="log-delivery-write")
    logging = {"LoggingEnabled": {"TargetBucket": logs, "TargetPrefix": "access/"}}
    s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus=logging)
    assert direct.get_bucket_logging(Bucket=bucket)["LoggingEnabled"] == logging["LoggingEnabled"]
    assert s3.get_bucket_logging(Bucket=bucket)["LoggingEnabled"] == logging["LoggingEnabled"]
    # Turned off again: moto writes a log object for each request to the bucket meanwhile, and
    # other tests compare what the (shared) moto holds.
    s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={})
    assert "LoggingEnabled" not in direct.get_bucket_logging(Bucket=bucket)

    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    replication = {
        "Role": "arn:aws:iam::123456789012:role/perch",
        "Rules": [
            {
                "ID": "all",
                "Priority": 1,
                "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "DeleteMarkerReplication": {"Status": "Disabled"},
                "Destination": {"Bucket": f"arn:aws:s3:::{logs}"},
            }
        ],
    }
    s3.put_bucket_replication(Bucket=bucket, ReplicationConfiguration=replication)
    got = direct.get_bucket_replication(Bucket=bucket)["ReplicationConfiguration"]
    assert got["Role"] == replication["Role"], got
    assert s3.get_bucket_replication(Bucket=bucket)["ReplicationConfiguration"] == got

    # An object lock set at the origin reads through Perch; setting one through Perch is refused.
    locked = f"c-{uuid.uuid4().hex[:16]}"
    direct.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    assert s3.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"] == (
        direct.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"]
    )
    with pytest.raises(ClientError) as refused:
        s3.put_object_lock_configuration(
            Bucket=locked,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
            },
        )
    assert refused.value.response["Error"]["Code"] == "NotImplemented"
    assert "Perch keeps no object lock" in refused.value.response["Error"]["Message"]
    assert "Rule" not in direct.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"]

    # Removals.
    for name, call, get in [
        ("encryption", s3.delete_bucket_encryption, direct.get_bucket_encryption),
        ("public access block", s3.delete_public_access_block, direct.get_public_access_block),
        ("website", s3.delete_bucket_website, direct.get_bucket_website),
        ("replication", s3.delete_bucket_replication, direct.get_bucket_replication),
    ]:
        assert call(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204, name
        assert error_of(lambda: get(Bucket=bucket))[0] == 404, name

    # A missing bucket is the origin's 404.
    assert error_of(lambda: s3.get_bucket_website(Bucket=f"c-{uuid.uuid4().hex[:16]}")) == (404, "NoSuchBucket")


def test_a_bucket_configuration_is_answered_as_the_origin_wrote_it(perch_factory, moto):
    """A configuration the origin answers is passed on as it came, not read into s3s's types and
    written again: an element s3s does not know (S3 has put `BlockedEncryptionTypes` in every new
    bucket's encryption since 2026) made the read a 500, and Terraform, which reads encryption on
    every refresh, retried it until it gave up."""
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    make_client(perch).create_bucket(Bucket=bucket)
    doc = (
        '<WebsiteConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IndexDocument>'
        "<Suffix>index.html</Suffix></IndexDocument><NotYetInS3s>kept</NotYetInS3s></WebsiteConfiguration>"
    )
    # moto keeps a website document as it is sent (and checks no signature).
    assert requests.put(f"{moto.url}/{bucket}?website", data=doc, timeout=10).status_code == 200
    want = requests.get(f"{moto.url}/{bucket}?website", timeout=10).content
    assert b"<NotYetInS3s>" in want

    url = f"{perch.path_url}/{bucket}?website"
    req = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(DEV_KEY, DEV_SECRET), "s3", REGION).add_auth(req)
    got = requests.get(url, headers=dict(req.headers.items()), timeout=10)
    assert (got.status_code, got.content) == (200, want)
    assert got.headers["content-type"] == "application/xml"
    for style in ["path", "virtual"]:
        assert make_client(perch, style=style).get_bucket_website(Bucket=bucket)["IndexDocument"] == {
            "Suffix": "index.html"
        }
    # Unsigned, it is refused as every request is.
    assert requests.get(url, timeout=10).status_code == 403


def test_a_listing_does_not_wait_on_an_owner_the_origin_cannot_name(perch_factory, moto):
    """A version 1 listing names each object's owner, the bucket's, which Perch asks the origin for
    (its ACL) once. An origin that failed that question (moto answers 500 to GetBucketAcl once the
    ACL has no grants) held up the first listing for 10 s of retries, and the failure was kept: no
    listing named the owner again once the ACL could be read. Now the listing goes without it,
    at once, and the owner is asked again by the next one."""
    import time

    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch)
    bucket = f"o-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    owner = moto.client().get_bucket_acl(Bucket=bucket)["Owner"]
    moto.client().put_bucket_acl(Bucket=bucket, AccessControlPolicy={"Owner": owner, "Grants": []})
    for list_call in (s3.list_objects, s3.list_object_versions):
        started = time.monotonic()
        r = list_call(Bucket=bucket)
        took = time.monotonic() - started
        assert [o["Key"] for o in r.get("Contents", r.get("Versions", []))] == ["k"], r
        assert took < 3, f"{list_call.__name__} took {took:.1f} s"
    full = {"Grantee": {"ID": owner["ID"], "Type": "CanonicalUser"}, "Permission": "FULL_CONTROL"}
    moto.client().put_bucket_acl(Bucket=bucket, AccessControlPolicy={"Owner": owner, "Grants": [full]})
    # The lookup under way (its retries) finds it, and the listings after it name it.
    deadline = time.monotonic() + 20
    while "Owner" not in s3.list_objects(Bucket=bucket)["Contents"][0]:
        assert time.monotonic() < deadline, "no listing names the owner once the origin gives it"
        time.sleep(0.2)
    assert s3.list_objects(Bucket=bucket)["Contents"][0]["Owner"]["ID"] == owner["ID"]


def test_create_bucket_passes_its_acl_and_object_ownership_to_the_origin(perch_factory, moto):
    """CreateBucket's x-amz-acl, x-amz-grant-* and x-amz-object-ownership reach the origin (they were
    dropped: a public-read bucket came out private, an ObjectWriter one enforced); object lock,
    which Perch does not keep, is refused and creates nothing; the directory origin refuses what it
    cannot keep and takes what it is."""
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch)
    direct = moto.client()
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket, ACL="public-read", ObjectOwnership="ObjectWriter")
    rules = direct.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "ObjectWriter"}]
    grants = direct.get_bucket_acl(Bucket=bucket)["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ" for g in grants), grants
    # (moto ignores x-amz-grant-* on CreateBucket: they are sent on as the canned ACL is.)
    locked = f"c-{uuid.uuid4().hex[:16]}"
    assert error_of(lambda: s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)) == (501, "NotImplemented")
    assert locked not in [b["Name"] for b in direct.list_buckets()["Buckets"]]

    plain = make_client(perch_factory("plain", origin="dir"))
    assert error_of(lambda: plain.create_bucket(Bucket=f"c-{uuid.uuid4().hex[:16]}", ACL="public-read")) == (
        501,
        "NotImplemented",
    )
    kept = f"c-{uuid.uuid4().hex[:16]}"
    plain.create_bucket(Bucket=kept, ACL="private", ObjectOwnership="BucketOwnerEnforced")
    assert kept in [b["Name"] for b in plain.list_buckets()["Buckets"]]


def test_bucket_configurations_of_the_directory_origin(perch_factory):
    perch = perch_factory("perch", origin="dir")
    s3 = make_client(perch)
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")

    # What a new S3 bucket with nothing configured answers.
    acl = s3.get_bucket_acl(Bucket=bucket)
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]
    assert acl["Grants"][0]["Grantee"]["ID"] == acl["Owner"]["ID"]
    assert s3.get_object_acl(Bucket=bucket, Key="k")["Owner"] == acl["Owner"]
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    assert s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"] == {
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]
    }
    assert error_of(lambda: s3.get_bucket_policy(Bucket=bucket)) == (404, "NoSuchBucketPolicy")
    assert error_of(lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket)) == (404, "NoSuchLifecycleConfiguration")
    assert error_of(lambda: s3.get_bucket_cors(Bucket=bucket)) == (404, "NoSuchCORSConfiguration")
    assert error_of(lambda: s3.get_bucket_tagging(Bucket=bucket)) == (404, "NoSuchTagSet")
    assert error_of(lambda: s3.get_object_acl(Bucket=bucket, Key="missing")) == (404, "NoSuchKey")
    assert error_of(lambda: s3.get_bucket_acl(Bucket="no-such-bucket-here")) == (404, "NoSuchBucket")
    # It encrypts nothing, so it names no default encryption (S3 now names AES256).
    assert error_of(lambda: s3.get_bucket_encryption(Bucket=bucket)) == (
        404,
        "ServerSideEncryptionConfigurationNotFoundError",
    )
    # Nothing is public (every request is signed), as S3 blocks for new buckets.
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert error_of(lambda: s3.get_object_lock_configuration(Bucket=bucket)) == (
        404,
        "ObjectLockConfigurationNotFoundError",
    )
    assert error_of(lambda: s3.get_bucket_website(Bucket=bucket)) == (404, "NoSuchWebsiteConfiguration")
    assert error_of(lambda: s3.get_bucket_replication(Bucket=bucket)) == (404, "ReplicationConfigurationNotFoundError")
    notification = s3.get_bucket_notification_configuration(Bucket=bucket)
    assert not {"TopicConfigurations", "QueueConfigurations", "LambdaFunctionConfigurations"} & set(notification)
    assert s3.get_bucket_request_payment(Bucket=bucket)["Payer"] == "BucketOwner"
    assert "Status" not in s3.get_bucket_accelerate_configuration(Bucket=bucket)
    assert "LoggingEnabled" not in s3.get_bucket_logging(Bucket=bucket)
    assert error_of(lambda: s3.get_bucket_website(Bucket="no-such-bucket-here")) == (404, "NoSuchBucket")

    # Removing what is not there succeeds; a change it cannot keep is refused, not pretended.
    assert s3.delete_bucket_policy(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_bucket_tagging(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in [s3.delete_bucket_encryption, s3.delete_bucket_website, s3.delete_bucket_replication]:
        assert call(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in [
        lambda: s3.delete_public_access_block(Bucket=bucket),
        lambda: s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=ENCRYPTION),
        lambda: s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK),
        lambda: s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=NOTIFICATION),
        lambda: s3.put_bucket_request_payment(Bucket=bucket, RequestPaymentConfiguration={"Payer": "Requester"}),
        lambda: s3.put_bucket_accelerate_configuration(Bucket=bucket, AccelerateConfiguration={"Status": "Enabled"}),
        lambda: s3.put_bucket_website(Bucket=bucket, WebsiteConfiguration=WEBSITE),
        lambda: s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={}),

        lambda: s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(POLICY).replace("BUCKET", bucket)),
        lambda: s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}),
        lambda: s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=LIFECYCLE),
        lambda: s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS),
        lambda: s3.put_bucket_tagging(Bucket=bucket, Tagging=TAGS),
        lambda: s3.put_bucket_acl(Bucket=bucket, ACL="public-read"),
        lambda: s3.put_object_acl(Bucket=bucket, Key="k", ACL="public-read"),
        lambda: s3.delete_bucket_ownership_controls(Bucket=bucket),
    ]:
        assert error_of(call) == (501, "NotImplemented")


def test_replica_refuses_configuration_changes_before_the_origin(perch_factory, moto):
    primary = perch_factory("primary", origin_url=moto.url, origin="moto")
    replica = perch_factory("replica", origin_url=moto.url, role="replica", origin="moto")
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    make_client(primary).create_bucket(Bucket=bucket)
    make_client(primary).put_bucket_tagging(Bucket=bucket, Tagging=TAGS)
    direct = moto.client()
    r = make_client(replica)

    # Reads pass through.
    assert r.get_bucket_tagging(Bucket=bucket)["TagSet"] == TAGS["TagSet"]
    assert r.get_bucket_acl(Bucket=bucket)["Owner"] == direct.get_bucket_acl(Bucket=bucket)["Owner"]
    assert error_of(lambda: r.get_bucket_policy(Bucket=bucket)) == (404, "NoSuchBucketPolicy")
    assert error_of(lambda: r.get_bucket_website(Bucket=bucket)) == (404, "NoSuchWebsiteConfiguration")
    assert "LoggingEnabled" not in r.get_bucket_logging(Bucket=bucket)

    changes = {
        "PutBucketPolicy": lambda: r.put_bucket_policy(Bucket=bucket, Policy=json.dumps(POLICY).replace("BUCKET", bucket)),
        "PutBucketVersioning": lambda: r.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}),
        "PutBucketLifecycleConfiguration": lambda: r.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=LIFECYCLE),
        "PutBucketOwnershipControls": lambda: r.put_bucket_ownership_controls(
            Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "ObjectWriter"}]}
        ),
        "PutBucketCors": lambda: r.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS),
        "PutBucketTagging": lambda: r.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": []}),
        "PutBucketAcl": lambda: r.put_bucket_acl(Bucket=bucket, ACL="public-read"),
        "DeleteBucketTagging": lambda: r.delete_bucket_tagging(Bucket=bucket),
        "DeleteBucketPolicy": lambda: r.delete_bucket_policy(Bucket=bucket),
        "DeleteBucketCors": lambda: r.delete_bucket_cors(Bucket=bucket),
        "DeleteBucketLifecycle": lambda: r.delete_bucket_lifecycle(Bucket=bucket),
        "DeleteBucketOwnershipControls": lambda: r.delete_bucket_ownership_controls(Bucket=bucket),
        "PutBucketEncryption": lambda: r.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=ENCRYPTION),
        "PutPublicAccessBlock": lambda: r.put_public_access_block(
            Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK
        ),
        "PutBucketNotificationConfiguration": lambda: r.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration=NOTIFICATION
        ),
        "PutBucketAccelerateConfiguration": lambda: r.put_bucket_accelerate_configuration(
            Bucket=bucket, AccelerateConfiguration={"Status": "Enabled"}
        ),
        "PutBucketWebsite": lambda: r.put_bucket_website(Bucket=bucket, WebsiteConfiguration=WEBSITE),
        "DeleteBucketEncryption": lambda: r.delete_bucket_encryption(Bucket=bucket),
        "DeletePublicAccessBlock": lambda: r.delete_public_access_block(Bucket=bucket),
        "DeleteBucketWebsite": lambda: r.delete_bucket_website(Bucket=bucket),
    }
    for name, call in changes.items():
        assert error_of(call) == (403, "AccessDenied"), name

    # None of them reached the origin.
    assert direct.get_bucket_tagging(Bucket=bucket)["TagSet"] == TAGS["TagSet"]
    assert error_of(lambda: direct.get_bucket_policy(Bucket=bucket))[0] == 404
    assert "Status" not in direct.get_bucket_versioning(Bucket=bucket)
    assert error_of(lambda: direct.get_bucket_cors(Bucket=bucket))[0] == 404
    assert error_of(lambda: direct.get_bucket_lifecycle_configuration(Bucket=bucket))[0] == 404
    assert error_of(lambda: direct.get_public_access_block(Bucket=bucket))[0] == 404
    assert error_of(lambda: direct.get_bucket_website(Bucket=bucket))[0] == 404
    assert "TopicConfigurations" not in direct.get_bucket_notification_configuration(Bucket=bucket)
    assert "Status" not in direct.get_bucket_accelerate_configuration(Bucket=bucket)
    grants = direct.get_bucket_acl(Bucket=bucket)["Grants"]
    assert not any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants)
    # ... nor did the replica send any (the primary's tagging went through its own counter).
    metrics = requests.get(f"http://{replica.admin_addr}/metrics", timeout=10).text
    assert 'op="get_config"' in metrics
    assert 'op="put_config"' not in metrics and 'op="delete_config"' not in metrics
    primary_metrics = requests.get(f"http://{primary.admin_addr}/metrics", timeout=10).text
    assert 'op="put_config"' in primary_metrics


def test_an_objects_storage_class_at_the_origin_is_the_one_perch_reports(perch_factory, moto):
    """Objects the origin keeps in another class than STANDARD (put there by others, or moved by a
    lifecycle rule) were listed as STANDARD, and HEAD and GET named no class (the rclone hunt: its
    `lsjson` showed the tier wrong). Listings, HEAD, GET (a miss, then a hit from the cache) and
    GetObjectAttributes now name the origin's class; what Perch holds of its own writes is
    STANDARD, as S3 stores it."""
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch)
    direct = moto.client()
    bucket = f"sc-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    direct.put_object(Bucket=bucket, Key="ia", Body=b"infrequent", StorageClass="STANDARD_IA")
    direct.put_object(Bucket=bucket, Key="cold", Body=b"glacier", StorageClass="GLACIER")
    try:
        check_storage_classes(s3, bucket)
    finally:
        # moto is shared: an object no GET can read would fail the tests that read every bucket.
        direct.delete_object(Bucket=bucket, Key="cold")


def test_a_write_in_another_storage_class_is_uploaded_in_it(perch_factory, perch_bin, moto):
    """A PUT, a multipart upload or a copy naming a storage class other than STANDARD was 501
    NotImplemented (`aws s3 cp --storage-class`, `rclone --s3-storage-class` and `s3cmd
    --storage-class` all failed; s3cmd retried for 45 s). Now the class is kept with the write,
    named by HEAD and listings, and carried by its upload; a copy is STANDARD unless it names one
    (as on S3), and a copy onto itself that names one changes it. A class the origin does not
    offer is its refusal at once (400 InvalidStorageClass), with nothing stored: acknowledged, the
    write could never have been uploaded."""
    perch = perch_factory("perch", origin_url=moto.url, origin="moto")
    s3 = make_client(perch)
    direct = moto.client()
    bucket = f"scw-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)

    s3.put_object(Bucket=bucket, Key="ia", Body=b"infrequent", StorageClass="STANDARD_IA")
    s3.put_object(Bucket=bucket, Key="plain", Body=b"standard", StorageClass="STANDARD")
    up = s3.create_multipart_upload(Bucket=bucket, Key="parts", StorageClass="ONEZONE_IA")
    part = s3.upload_part(Bucket=bucket, Key="parts", UploadId=up["UploadId"], PartNumber=1, Body=b"p" * 1000)
    s3.complete_multipart_upload(
        Bucket=bucket, Key="parts", UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    # A copy of a pending source is made here; of a source the origin holds, by the origin.
    s3.copy_object(Bucket=bucket, Key="copy-std", CopySource={"Bucket": bucket, "Key": "ia"})
    s3.copy_object(Bucket=bucket, Key="copy-rr", CopySource={"Bucket": bucket, "Key": "ia"},
                   StorageClass="REDUCED_REDUNDANCY")
    s3.copy_object(Bucket=bucket, Key="plain", CopySource={"Bucket": bucket, "Key": "plain"},
                   StorageClass="INTELLIGENT_TIERING")
    want = {
        "ia": "STANDARD_IA", "plain": "INTELLIGENT_TIERING", "parts": "ONEZONE_IA",
        "copy-std": "STANDARD", "copy-rr": "REDUCED_REDUNDANCY",
    }

    def classes(client):
        heads = {k: client.head_object(Bucket=bucket, Key=k).get("StorageClass", "STANDARD") for k in want}
        listed = {o["Key"]: o["StorageClass"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        return heads, listed

    assert classes(s3) == (want, want), "pending writes"
    flush(perch_bin, perch)
    assert classes(direct) == (want, want), "at the origin"
    assert classes(s3) == (want, want), "uploaded"
    s3.copy_object(Bucket=bucket, Key="copy-origin", CopySource={"Bucket": bucket, "Key": "ia"},
                   StorageClass="GLACIER_IR")
    s3.copy_object(Bucket=bucket, Key="ia", CopySource={"Bucket": bucket, "Key": "ia"}, StorageClass="STANDARD")
    want.update({"copy-origin": "GLACIER_IR", "ia": "STANDARD"})
    flush(perch_bin, perch)
    assert classes(direct) == (want, want), "copies made by the origin"
    assert s3.get_object(Bucket=bucket, Key="copy-origin")["Body"].read() == b"infrequent"

    # OUTPOSTS: a class S3 knows and this origin does not offer.
    refused = {
        "PutObject": lambda: s3.put_object(Bucket=bucket, Key="out", Body=b"x", StorageClass="OUTPOSTS"),
        "CreateMultipartUpload": lambda: s3.create_multipart_upload(Bucket=bucket, Key="out", StorageClass="OUTPOSTS"),
        "CopyObject": lambda: s3.copy_object(
            Bucket=bucket, Key="out", CopySource={"Bucket": bucket, "Key": "ia"}, StorageClass="OUTPOSTS"
        ),
    }
    for call, do in refused.items():
        assert error_of(do) == (400, "InvalidStorageClass"), call
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="out"))[0] == 404
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "an upload was started"
    at_origin = sorted(o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"])
    assert at_origin == sorted(want), "the origin holds a refused write or a probe"


def check_storage_classes(s3, bucket):
    """The classes of `bucket`'s objects as Perch reports them (`ia` and `cold` were put at the origin)."""
    s3.put_object(Bucket=bucket, Key="mine", Body=b"written through perch")

    want = {"ia": "STANDARD_IA", "cold": "GLACIER", "mine": "STANDARD"}
    listed = {o["Key"]: o["StorageClass"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == want
    listed = {o["Key"]: o["StorageClass"] for o in s3.list_objects(Bucket=bucket)["Contents"]}
    assert listed == want
    versions = {o["Key"]: o["StorageClass"] for o in s3.list_object_versions(Bucket=bucket)["Versions"]}
    assert versions == want

    assert s3.head_object(Bucket=bucket, Key="ia")["StorageClass"] == "STANDARD_IA"
    for _ in range(3):  # a miss, then hits (from disk, then from memory)
        got = s3.get_object(Bucket=bucket, Key="ia")
        assert got["Body"].read() == b"infrequent"
        assert got["StorageClass"] == "STANDARD_IA"
    assert s3.head_object(Bucket=bucket, Key="ia")["StorageClass"] == "STANDARD_IA"
    attrs = s3.get_object_attributes(Bucket=bucket, Key="ia", ObjectAttributes=["StorageClass"])
    assert attrs["StorageClass"] == "STANDARD_IA"
    assert s3.head_object(Bucket=bucket, Key="cold")["StorageClass"] == "GLACIER"
    # S3 names no class for STANDARD objects on HEAD and GET.
    assert "StorageClass" not in s3.head_object(Bucket=bucket, Key="mine")
    attrs = s3.get_object_attributes(Bucket=bucket, Key="mine", ObjectAttributes=["StorageClass"])
    assert attrs["StorageClass"] == "STANDARD"
