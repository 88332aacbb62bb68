"""Signatures: a wrong secret, presigned GETs (fresh and expired) fetched with `requests`."""

import re
import time

import pytest
import requests
from botocore.exceptions import ClientError

from conftest import DEV_KEY, DEV_SECRET, make_client


def code_of(xml_text):
    m = re.search(r"<Code>([^<]*)</Code>", xml_text)
    return m and m.group(1)


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_wrong_secret(perch, bucket, style):
    good = make_client(perch, style)
    good.put_object(Bucket=bucket, Key="k", Body=b"v")
    bad = make_client(perch, style, secret="not-the-secret")
    for call in [
        lambda: bad.get_object(Bucket=bucket, Key="k"),
        lambda: bad.put_object(Bucket=bucket, Key="k", Body=b"overwritten"),
        lambda: bad.list_objects_v2(Bucket=bucket),
    ]:
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
        # As S3 writes it: a message a person can act on (s3s gives none), the request id.
        assert "signature" in e.value.response["Error"]["Message"], e.value.response
        assert e.value.response["ResponseMetadata"]["RequestId"]
    assert good.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_error_documents_carry_a_message_and_the_request_id(perch):
    """Every S3 error document names its request id (the header's), and has a Message, as S3's."""
    s3 = make_client(perch, "path")
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="Bad_Name")
    r = e.value.response
    assert r["Error"]["Code"] == "InvalidBucketName"
    assert r["Error"]["Message"] == "The specified bucket is not valid."
    raw = requests.get(f"{perch.path_url}/nosuchbucket/k", timeout=10)
    assert raw.status_code == 403
    assert f"<RequestId>{raw.headers['x-amz-request-id']}</RequestId>" in raw.text, raw.text
    assert code_of(raw.text) == "AccessDenied" and "<Message>" in raw.text


def test_unknown_access_key(perch, bucket):
    bad = make_client(perch, "path", key="AKIDUNKNOWN", secret="whatever")
    with pytest.raises(ClientError) as e:
        bad.list_objects_v2(Bucket=bucket)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert e.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_anonymous_is_refused(perch, bucket):
    make_client(perch, "path").put_object(Bucket=bucket, Key="k", Body=b"v")
    r = requests.get(f"{perch.path_url}/{bucket}/k", timeout=10)
    assert r.status_code == 403
    assert code_of(r.text) == "AccessDenied"


def presigner(perch, style, sig):
    """boto3's presigner: `default` is what boto3 does unconfigured (SigV2 query auth for
    us-east-1 here), `s3v4` is SigV4 query auth."""
    if sig == "s3v4":
        return make_client(perch, style, signature_version="s3v4")
    return make_client(perch, style)


@pytest.mark.parametrize("sig", ["s3v4", "default"])
@pytest.mark.parametrize("style", ["path", "virtual"])
def test_presigned_get(perch, bucket, style, sig):
    s3 = presigner(perch, style, sig)
    body = b"presigned body " * 100
    s3.put_object(Bucket=bucket, Key="dir/pre signed+key", Body=body, ContentType="text/x-pre")

    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "dir/pre signed+key"}, ExpiresIn=300)
    if style == "virtual":
        assert url.startswith(f"http://{bucket}.localhost:{perch.port}/"), url
    if sig == "s3v4":
        assert f"X-Amz-Credential={DEV_KEY}" in url, url
    else:
        assert f"AWSAccessKeyId={DEV_KEY}" in url, url
    r = requests.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == body
    assert r.headers["Content-Type"] == "text/x-pre"

    # Response overrides ride in the signed query.
    url = s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": bucket, "Key": "dir/pre signed+key", "ResponseContentDisposition": "attachment"},
        ExpiresIn=300,
    )
    r = requests.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Disposition"] == "attachment"

    # A tampered presigned URL is refused.
    r = requests.get(url.replace("attachment", "inline"), timeout=10)
    assert r.status_code == 403
    assert code_of(r.text) == "SignatureDoesNotMatch"


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_sigv2_bucket_requests_are_taken_as_botocore_signs_them(perch, bucket, style):
    """botocore signs a bucket's SigV2 resource as `/BUCKET/` (`/BUCKET/?location`) while it sends
    `/BUCKET?location` in path style, as S3 takes it: presigned listings (what boto3 presigns
    unconfigured) and header-signed listings and DeleteObjects were 403 SignatureDoesNotMatch."""
    s3 = presigner(perch, style, "default")
    s3.put_object(Bucket=bucket, Key="a/one", Body=b"1")
    s3.put_object(Bucket=bucket, Key="a/two", Body=b"2")
    for operation, params in [
        ("list_objects_v2", {"Bucket": bucket, "Prefix": "a/"}),
        ("list_objects", {"Bucket": bucket}),
        ("get_bucket_location", {"Bucket": bucket}),
    ]:
        url = s3.generate_presigned_url(operation, Params=params, ExpiresIn=300)
        assert "AWSAccessKeyId=" in url, url
        r = requests.get(url, timeout=10)
        assert r.status_code == 200, (operation, r.text)
    # A listing whose signed expiry was moved is refused (SigV2 signs no listing parameter).
    url = s3.generate_presigned_url("list_objects_v2", Params={"Bucket": bucket}, ExpiresIn=300)
    expires = re.search(r"Expires=(\d+)", url).group(1)
    r = requests.get(url.replace(f"Expires={expires}", f"Expires={int(expires) + 1}"), timeout=10)
    assert r.status_code == 403 and code_of(r.text) == "SignatureDoesNotMatch", "a tampered listing"

    v2 = make_client(perch, style, signature_version="s3")
    assert sorted(o["Key"] for o in v2.list_objects_v2(Bucket=bucket)["Contents"]) == ["a/one", "a/two"]
    out = v2.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a/one"}]})
    assert [d["Key"] for d in out["Deleted"]] == ["a/one"]
    assert [o["Key"] for o in v2.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/two"]
    # The wrong secret is still refused, in both forms.
    wrong = make_client(perch, style, secret="not-the-secret", signature_version="s3")
    with pytest.raises(ClientError) as e:
        wrong.list_objects_v2(Bucket=bucket)
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_presigned_get_expired(perch, bucket):
    make_client(perch, "path").put_object(Bucket=bucket, Key="k", Body=b"v")
    urls = {}
    for style in ["path", "virtual"]:
        for sig in ["s3v4", "default"]:
            s3 = presigner(perch, style, sig)
            urls[(style, sig)] = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1)
    time.sleep(2.1)
    for which, url in urls.items():
        r = requests.get(url, timeout=10)
        assert r.status_code == 403, (which, r.text)
        assert code_of(r.text) == "AccessDenied", (which, r.text)  # S3: AccessDenied, "Request has expired"


def test_presigned_url_signed_in_the_future_is_not_valid_yet(perch, bucket):
    """A presigned URL signed over 15 minutes ahead of the server's clock is 403 AccessDenied,
    "Request is not valid yet", as S3 answers it (Perch answered RequestTimeTooSkewed, the
    answer to a header-signed request); 10 minutes ahead is within the skew S3 allows."""
    import datetime
    from unittest import mock

    s3 = presigner(perch, "path", "s3v4")
    s3.put_object(Bucket=bucket, Key="later", Body=b"v")
    # botocore's clock, as it reads it: naive UTC.
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    for ahead, status, code in [(datetime.timedelta(hours=2), 403, "AccessDenied"),
                                (datetime.timedelta(minutes=10), 200, None)]:
        with mock.patch("botocore.auth.get_current_datetime", return_value=now + ahead):
            url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "later"}, ExpiresIn=60)
        r = requests.get(url, timeout=10)
        assert r.status_code == status, (ahead, r.text)
        if code:
            assert code_of(r.text) == code, r.text
            assert "Request is not valid yet" in r.text, r.text


def test_presigned_for_over_a_week_is_refused(perch, bucket):
    """S3 takes a SigV4 presigned URL valid for at most 7 days (604,800 s); a longer one is 400
    AuthorizationQueryParametersError, not served (Perch served it)."""
    s3 = presigner(perch, "path", "s3v4")
    s3.put_object(Bucket=bucket, Key="week", Body=b"v")
    week = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "week"}, ExpiresIn=604800)
    r = requests.get(week, timeout=10)
    assert r.status_code == 200, r.text
    longer = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "week"}, ExpiresIn=604801)
    r = requests.get(longer, timeout=10)
    assert r.status_code == 400, r.text
    assert code_of(r.text) == "AuthorizationQueryParametersError", r.text


def test_presigned_for_no_time_or_a_negative_time_is_refused(perch, bucket):
    """A presigned URL valid for 0 seconds has expired (S3: 403 AccessDenied; Perch served it
    until the end of its signing second), and a negative validity is 400
    AuthorizationQueryParametersError with a message that says so (Perch's said "less than a
    week"). The Ceph conformance suite's `x_amz_expires_out_range` tests found both."""
    s3 = presigner(perch, "path", "s3v4")
    s3.put_object(Bucket=bucket, Key="now", Body=b"v")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "now"}, ExpiresIn=60)
    assert requests.get(url, timeout=10).status_code == 200
    zero = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "now"}, ExpiresIn=0)
    r = requests.get(zero, timeout=10)
    assert r.status_code == 403, r.text
    assert code_of(r.text) == "AccessDenied", r.text
    negative = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "now"}, ExpiresIn=-1)
    assert "X-Amz-Expires=-1" in negative, negative
    r = requests.get(negative, timeout=10)
    assert r.status_code == 400, r.text
    assert code_of(r.text) == "AuthorizationQueryParametersError", r.text
    assert "from 0" in r.text, r.text


def _sigv2_put(perch, bucket, key, dates, method="PUT"):
    """A PUT (or `method`) signed with SigV2 in its header, over `dates` (header name -> value) as
    sent."""
    import base64
    import hashlib
    import hmac
    import http.client

    path = f"/{bucket}/{key}"
    # SigV2's string to sign: the Date line is empty when x-amz-date is given (then signed as an
    # x-amz header).
    date_line = "" if "x-amz-date" in dates else dates.get("Date", "")
    amz = "".join(f"{n}:{v}\n" for n, v in sorted(dates.items()) if n.startswith("x-amz-"))
    to_sign = f"{method}\n\n\n{date_line}\n{amz}{path}"
    sig = base64.b64encode(hmac.new(DEV_SECRET.encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
    c = http.client.HTTPConnection("127.0.0.1", perch.port, timeout=10)
    c.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
    for n, v in dates.items():
        c.putheader(n, v)
    c.putheader("Authorization", f"AWS {DEV_KEY}:{sig}")
    if method == "PUT":
        c.putheader("Content-Length", "3")
        c.endheaders(b"new")
    else:
        c.endheaders()
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, code_of(body)


def test_sigv2_requests_are_refused_outside_fifteen_minutes_of_their_date(perch, bucket):
    """S3 takes a SigV2 request only within 15 minutes of its date (x-amz-date, else Date), and
    refuses one without a date it can read: s3s checked neither, so a request seen once could be
    sent again at any time."""
    from email.utils import formatdate

    s3 = make_client(perch, "path")
    now = time.time()
    assert _sigv2_put(perch, bucket, "fresh", {"Date": formatdate(now, usegmt=True)}) == (200, None)
    amz_now = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
    assert _sigv2_put(perch, bucket, "fresh-amz", {"x-amz-date": amz_now}) == (200, None)
    # Five minutes off either way is within S3's bound.
    assert _sigv2_put(perch, bucket, "near", {"Date": formatdate(now - 300, usegmt=True)}) == (200, None)
    # The forms SigV2 clients write: s3cmd's x-amz-date (+0000), rclone's Date (UTC), Python's
    # formatdate() (-0000), a one-digit day, a zone other than UTC.
    tm = time.gmtime(now)
    for who, dates in [
        ("s3cmd", {"x-amz-date": time.strftime("%a, %d %b %Y %H:%M:%S +0000", tm)}),
        ("rclone", {"Date": time.strftime("%a, %d %b %Y %H:%M:%S UTC", tm)}),
        ("formatdate", {"Date": formatdate(now)}),
        ("one-digit-day", {"Date": time.strftime("%a, ", tm) + str(tm.tm_mday) + time.strftime(" %b %Y %H:%M:%S GMT", tm)}),
        ("+0130", {"Date": time.strftime("%a, %d %b %Y %H:%M:%S +0130", time.gmtime(now + 5400))}),
    ]:
        assert _sigv2_put(perch, bucket, f"form-{who}", dates) == (200, None), (who, dates)
    for what, dates, expected in [
        ("a date of 2010", {"Date": "Tue, 07 Jul 2010 21:53:04 GMT"}, (403, "RequestTimeTooSkewed")),
        ("an hour ahead", {"Date": formatdate(now + 3600, usegmt=True)}, (403, "RequestTimeTooSkewed")),
        ("x-amz-date of 2010", {"x-amz-date": "Tue, 07 Jul 2010 21:53:04 GMT"}, (403, "RequestTimeTooSkewed")),
        ("no date", {}, (403, "AccessDenied")),
        ("no date in Date", {"Date": "Bad Date"}, (403, "AccessDenied")),
    ]:
        assert _sigv2_put(perch, bucket, "replayed", dates) == expected, what
    # A GET too (an object read goes by the hit fast path first, which takes only SigV4).
    s3.get_object(Bucket=bucket, Key="fresh")["Body"].read()
    assert _sigv2_put(perch, bucket, "fresh", {"Date": formatdate(now, usegmt=True)}, method="GET") == (200, None)
    stale = {"Date": "Tue, 07 Jul 2010 21:53:04 GMT"}
    assert _sigv2_put(perch, bucket, "fresh", stale, method="GET") == (403, "RequestTimeTooSkewed")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="replayed")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404, "nothing refused was written"
