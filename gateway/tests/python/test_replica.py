"""A read replica that refuses writes (`perch --role replica --replica-writes refuse`) in front of
the moto origin a primary filled: reads work, every write is refused with 403 AccessDenied, and
moto is left exactly as it was. (A replica's default keeps its writes in a local overlay instead:
gateway/tests/s3/replica.rs.)"""

import hashlib
import uuid

import pytest
import requests
from botocore.exceptions import ClientError

from conftest import flush, make_client


def snapshot(moto_s3):
    """Everything in moto: buckets, and per bucket each key with its ETag and body."""
    state = {}
    for b in moto_s3.list_buckets()["Buckets"]:
        name = b["Name"]
        objects = {}
        for page in moto_s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for o in page.get("Contents", []):
                objects[o["Key"]] = (o["ETag"], moto_s3.get_object(Bucket=name, Key=o["Key"])["Body"].read())
        uploads = moto_s3.list_multipart_uploads(Bucket=name).get("Uploads", [])
        state[name] = (objects, [(u["Key"], u["UploadId"]) for u in uploads])
    return state


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_replica_reads_and_refuses_writes(perch_factory, perch_bin, moto, style):
    primary = perch_factory("primary", origin_url=moto.url, origin="moto")
    replica = perch_factory(
        "replica", origin_url=moto.url, role="replica", origin="moto", args=["--replica-writes", "refuse"]
    )
    bucket = f"r-{uuid.uuid4().hex[:16]}"

    w = make_client(primary, style)
    w.create_bucket(Bucket=bucket)
    bodies = {f"data/{i}": f"body {i}".encode() * (i + 1) for i in range(5)}
    for k, v in bodies.items():
        w.put_object(Bucket=bucket, Key=k, Body=v, Metadata={"n": k}, ContentType="text/plain")
    flush(perch_bin, primary)
    direct = moto.client()
    assert sorted(o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]) == sorted(bodies)
    before = snapshot(direct)

    r = make_client(replica, style)
    # Reads.
    assert bucket in [b["Name"] for b in r.list_buckets()["Buckets"]]
    assert r.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    listed = r.list_objects_v2(Bucket=bucket, Prefix="data/")
    assert [o["Key"] for o in listed["Contents"]] == sorted(bodies)
    for k, v in bodies.items():
        g = r.get_object(Bucket=bucket, Key=k)
        assert g["Body"].read() == v
        assert g["ETag"] == '"' + hashlib.md5(v).hexdigest() + '"'
        assert g["Metadata"] == {"n": k}
        assert g["ContentType"] == "text/plain"
        h = r.head_object(Bucket=bucket, Key=k)
        assert h["ContentLength"] == len(v)
    part = r.get_object(Bucket=bucket, Key="data/4", Range="bytes=2-5")
    assert part["Body"].read() == bodies["data/4"][2:6]
    with pytest.raises(ClientError) as e:
        r.get_object(Bucket=bucket, Key="data/missing")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"

    # Writes, each refused.
    refused = {
        "PutObject": lambda: r.put_object(Bucket=bucket, Key="data/new", Body=b"nope"),
        "PutObject(overwrite)": lambda: r.put_object(Bucket=bucket, Key="data/0", Body=b"nope"),
        "PutObject(empty)": lambda: r.put_object(Bucket=bucket, Key="data/empty", Body=b""),
        "PutObject(IfNoneMatch)": lambda: r.put_object(Bucket=bucket, Key="lock", Body=b"x", IfNoneMatch="*"),
        "DeleteObject": lambda: r.delete_object(Bucket=bucket, Key="data/1"),
        "DeleteObjects": lambda: r.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "data/2"}]}),
        "CopyObject": lambda: r.copy_object(
            Bucket=bucket, Key="data/copy", CopySource={"Bucket": bucket, "Key": "data/3"}
        ),
        "CopyObject(in place)": lambda: r.copy_object(
            Bucket=bucket,
            Key="data/3",
            CopySource={"Bucket": bucket, "Key": "data/3"},
            MetadataDirective="REPLACE",
            Metadata={"n": "changed"},
        ),
        "CreateMultipartUpload": lambda: r.create_multipart_upload(Bucket=bucket, Key="data/mpu"),
        "CreateBucket": lambda: r.create_bucket(Bucket=f"r-{uuid.uuid4().hex[:16]}"),
        "DeleteBucket": lambda: r.delete_bucket(Bucket=bucket),
    }
    for name, call in refused.items():
        with pytest.raises(ClientError) as e:
            call()
        err = e.value.response
        assert (err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"]) == (403, "AccessDenied"), name

    # The replica still serves reads on the same client after the refusals.
    assert r.get_object(Bucket=bucket, Key="data/0")["Body"].read() == bodies["data/0"]

    # moto, asked directly, is unchanged.
    assert snapshot(direct) == before

    # And the primary still writes.
    w.put_object(Bucket=bucket, Key="data/new", Body=b"yes")
    flush(perch_bin, primary)
    assert r.get_object(Bucket=bucket, Key="data/new")["Body"].read() == b"yes"


def test_a_replica_keeps_a_browser_form_upload_in_its_overlay_as_it_keeps_a_put(perch_factory, perch_bin, moto):
    """PostObject is a PUT in a form: a replica with its overlay (the default) keeps it there, as
    it keeps a PUT, and the shared bucket is left as it was; a replica refusing writes refuses
    both."""
    primary = perch_factory("primary", origin_url=moto.url, origin="moto")
    overlay = perch_factory("overlay", origin_url=moto.url, role="replica", origin="moto")
    refusing = perch_factory(
        "refusing", origin_url=moto.url, role="replica", origin="moto", args=["--replica-writes", "refuse"]
    )
    bucket = f"r-{uuid.uuid4().hex[:16]}"
    w = make_client(primary)
    w.create_bucket(Bucket=bucket)
    w.put_object(Bucket=bucket, Key="shared", Body=b"from the primary")
    flush(perch_bin, primary)
    direct = moto.client()
    before = snapshot(direct)

    body = bytes(range(256)) * 8
    for replica, expected in ((overlay, 204), (refusing, 403)):
        s3 = make_client(replica, signature_version="s3v4")
        post = s3.generate_presigned_post(bucket, "form/upload.bin")
        r = requests.post(post["url"], data=post["fields"], files={"file": ("upload.bin", body)}, timeout=60)
        assert r.status_code == expected, (replica, r.text)
        if expected == 204:
            assert s3.get_object(Bucket=bucket, Key="form/upload.bin")["Body"].read() == body
            s3.put_object(Bucket=bucket, Key="form/put.bin", Body=body)
        else:
            assert "<Code>AccessDenied</Code>" in r.text, r.text
    assert snapshot(direct) == before


def test_a_replica_answers_the_acl_of_the_objects_it_wrote_and_of_the_shared_ones(perch_factory, perch_bin, moto):
    """GetObjectAcl in the replica's view: its own object is the bucket owner's (the shared
    bucket's ACL), a shared object's is the origin's, a key it deleted is NoSuchKey."""
    primary = perch_factory("primary", origin_url=moto.url, origin="moto")
    replica = perch_factory("replica", origin_url=moto.url, role="replica", origin="moto")
    bucket = f"r-{uuid.uuid4().hex[:16]}"
    w = make_client(primary)
    w.create_bucket(Bucket=bucket)
    w.put_object(Bucket=bucket, Key="shared", Body=b"from the primary")
    w.put_object(Bucket=bucket, Key="gone", Body=b"deleted on the replica")
    flush(perch_bin, primary)
    direct = moto.client()
    owner = direct.get_bucket_acl(Bucket=bucket)["Owner"]

    r = make_client(replica)
    r.put_object(Bucket=bucket, Key="mine", Body=b"the replica's own")
    r.delete_object(Bucket=bucket, Key="gone")
    mine = r.get_object_acl(Bucket=bucket, Key="mine")
    assert mine["Owner"] == owner
    assert any(g["Permission"] == "FULL_CONTROL" and g["Grantee"].get("ID") == owner["ID"] for g in mine["Grants"]), mine
    assert r.get_object_acl(Bucket=bucket, Key="shared")["Owner"] == direct.get_object_acl(Bucket=bucket, Key="shared")["Owner"]
    for key in ("gone", "never-written"):
        with pytest.raises(ClientError) as e:
            r.get_object_acl(Bucket=bucket, Key=key)
        assert e.value.response["Error"]["Code"] == "NoSuchKey", key
    assert "mine" not in [o["Key"] for o in direct.list_objects_v2(Bucket=bucket).get("Contents", [])]
