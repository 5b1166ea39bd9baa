"""Bad input gets a defined 4xx in the JSON error shape, never a 5xx, and writes nothing.

Each test sends the request that used to go wrong (a 503 for a long multibyte URL, JSON read
from text/plain and form bodies, `true` taken as a vote, a zero-width space taken as a body,
plain-text 405s, Gunicorn's HTML error pages, a 500 for a signed token without a user,
`/healthz` answering 404 to an X-Tenant header, a file path in an error message) and checks the
status, the error code and, where the request would write, the rows on the shard.
"""

from __future__ import annotations

import json
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.core import signing

from sites.schemas import is_blank
from tests.api_client import SiteClient, create_site
from tests.client import Response, get, request

pytestmark = pytest.mark.usefixtures("django_db")

USER_SALT = "shardsvc.user"  # comments.auth signs end-user tokens with it


@pytest.fixture(scope="module")
def site(service, topology) -> SiteClient:
    return create_site(service, topology, prefix="input", shard="shard_0").as_user("ann", "Ann")


def scalar(admin, alias: str, sql: str, *params: Any) -> Any:
    return admin(alias).execute(sql, params).fetchone()[0]


def comments_in(admin, site: SiteClient, thread_id: int) -> int:
    return scalar(admin, site.shard, "SELECT count(*) FROM comments_comment WHERE thread_id = %s",
                  thread_id)


def assert_error(answer: Response, status: int, code: str) -> None:
    assert answer.status == status, answer.body
    assert isinstance(answer.body, dict), answer.body
    assert answer.body["error"] == code and answer.body["message"], answer.body


# ----- thread URLs: uniqueness that takes every URL the schema takes


def test_long_multibyte_url_gets_a_thread_once(site, admin) -> None:
    # 2,000 characters of 4-byte UTF-8 (~8,000 bytes): past what a btree entry holds (2,704),
    # which made the unique index on the URL itself fail and the API answer 503.
    stem = "https://x.test/" + "".join(chr(0x10000 + i) for i in range(1980))
    url = stem + "\U0001f600" * (2000 - len(stem))
    assert len(url) == 2000 and len(url.encode()) > 7000
    first = site.call("PUT", "/threads", {"url": url, "title": "wide"})
    assert first.status == 201, first.body
    again = site.call("PUT", "/threads", {"url": url, "title": "other"})
    assert again.status == 200 and again.body["id"] == first.body["id"]
    assert again.body["url"] == url and again.body["title"] == "wide"
    neighbour = site.call("PUT", "/threads", {"url": url[:-1] + "\U0001f601"})
    assert neighbour.status == 201 and neighbour.body["id"] != first.body["id"]
    stored = admin(site.shard).execute(
        "SELECT url FROM comments_thread WHERE id = %s", [first.body["id"]]).fetchone()
    assert stored == (url,)


def test_concurrent_puts_of_one_url_make_one_thread(site, admin) -> None:
    url = f"https://x.test/race/{uuid.uuid4()}/" + "\U00010348" * 1000
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: site.call("PUT", "/threads", {"url": url}), range(8)))
    assert sorted(a.status for a in answers) == [200] * 7 + [201], [a.body for a in answers]
    assert len({a.body["id"] for a in answers}) == 1
    assert scalar(admin, site.shard, "SELECT count(*) FROM comments_thread WHERE url = %s",
                  url) == 1


def test_thread_lookup_uses_the_url_hash_index(site, topology) -> None:
    from django.db import connections, transaction

    from comments.service import threads_at
    from shards.directory import lookup
    from shards.tenancy import tenant

    site.thread("https://x.test/indexed")
    with tenant(lookup(site.slug)), transaction.atomic(using=site.shard):
        with connections[site.shard].cursor() as cursor:
            # The test tables are tiny, and a site with a thread or two is as well served by the
            # (tenant_id, id) index: the planner's choice between the two depends on what other
            # tests left in the table. Without that index (dropped in this transaction, which
            # rolls back) and without sequential scans, the plan shows whether the lookup can
            # use the URL hash index at all.
            cursor.execute("ALTER TABLE comments_thread "
                           "DROP CONSTRAINT comments_thread_tenant_uniq CASCADE")
            cursor.execute("SET LOCAL enable_seqscan = off")
        plan = threads_at("https://x.test/indexed", site.shard).explain()
        transaction.set_rollback(True, using=site.shard)  # the constraint stays
    assert "comments_thread_url_md5_uniq" in plan, plan


@pytest.mark.parametrize("alias", ["shard_0", "shard_1"])
def test_every_shard_has_the_hash_index_and_keeps_its_replica_identity(admin, topology,
                                                                       alias) -> None:
    conn = admin(alias)
    index = conn.execute(
        "SELECT i.indisunique, i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indexrelid = to_regclass('comments_thread_url_md5_uniq')").fetchone()
    assert index is not None and index[0] and index[1], index
    assert "md5" in index[2] and "tenant_id" in index[2]
    old = conn.execute("SELECT count(*) FROM pg_constraint "
                       "WHERE conname = 'comments_thread_url_uniq'").fetchone()[0]
    assert old == 0
    identity = conn.execute(
        "SELECT c.relreplident, i.indexrelid::regclass::text FROM pg_class c "
        "JOIN pg_index i ON i.indrelid = c.oid AND i.indisreplident "
        "WHERE c.oid = 'comments_thread'::regclass").fetchone()
    assert identity == ("i", "comments_thread_tenant_uniq")


# ----- content type: JSON bodies only


@pytest.mark.parametrize("content_type,data", [
    ("text/plain", b'{"body": "as text"}'),
    ("application/x-www-form-urlencoded", b"body=as+a+form"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="body"'
                                        b'\r\n\r\nhi\r\n--x--\r\n'),
    ("application/json; charset=latin-1", b'{"body": "caf\xe9"}'),
])
def test_non_json_bodies_are_415_and_write_nothing(site, admin, content_type, data) -> None:
    thread = site.thread()
    headers = {"X-Api-Key": site.key, "X-User-Token": site.user_token,
               "Content-Type": content_type}
    answer = request("POST", f"{site.root}/threads/{thread}/comments", data=data,
                     headers=headers)
    assert_error(answer, 415, "unsupported_media_type")
    assert "application/json" in answer.body["message"]
    assert comments_in(admin, site, thread) == 0


def test_thread_put_as_text_is_415(site, admin) -> None:
    url = f"https://x.test/{uuid.uuid4()}"
    answer = request("PUT", f"{site.root}/threads", body={"url": url},
                     headers={"X-Api-Key": site.key, "Content-Type": "text/plain"})
    assert_error(answer, 415, "unsupported_media_type")
    assert scalar(admin, site.shard, "SELECT count(*) FROM comments_thread WHERE url = %s",
                  url) == 0


def test_json_with_a_charset_parameter_is_accepted(site, admin) -> None:
    thread = site.thread()
    answer = request("POST", f"{site.root}/threads/{thread}/comments",
                     data='{"body": "café"}'.encode(),
                     headers={"X-Api-Key": site.key, "X-User-Token": site.user_token,
                              "Content-Type": "Application/JSON; charset=UTF-8"})
    assert answer.status == 201, answer.body
    assert comments_in(admin, site, thread) == 1


# ----- strict types


@pytest.mark.parametrize("value", [True, False, 1.0, -1.0, "1", None, [1], 2])
def test_votes_take_only_the_integers_minus_one_zero_one(site, admin, value) -> None:
    comment = site.comment(site.thread())["id"]
    answer = site.call("PUT", f"/comments/{comment}/vote", {"value": value}, user=True)
    assert_error(answer, 422, "invalid")
    assert scalar(admin, site.shard, "SELECT count(*) FROM comments_vote WHERE comment_id = %s",
                  comment) == 0


@pytest.mark.parametrize("make_parent", [
    lambda real: int(real), lambda real: True, lambda real: float(real), lambda real: [real],
    lambda real: str(2**63), lambda real: "0" + real, lambda real: real + " ",
])
def test_parent_ids_are_strict_id_strings(site, admin, make_parent) -> None:
    thread = site.thread()
    parent = site.comment(thread, "parent")["id"]
    answer = site.call("POST", f"/threads/{thread}/comments",
                       {"body": "reply", "parent_id": make_parent(parent)}, user=True)
    assert_error(answer, 422, "invalid")
    assert comments_in(admin, site, thread) == 1


def test_the_schema_still_describes_the_strict_fields(service) -> None:
    schemas = get(f"{service.url}/api/openapi.json").body["components"]["schemas"]
    assert schemas["VoteIn"]["properties"]["value"] == {
        "description": "1 up, -1 down, 0 removes the vote.", "examples": [1], "maximum": 1,
        "minimum": -1, "title": "Value", "type": "integer"}
    parent = schemas["CommentIn"]["properties"]["parent_id"]
    assert {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}.items() <= parent["anyOf"][0].items()


# ----- not blank


INVISIBLE = ["\u200b", "\ufeff", "\u2028", "\u2029", " \u3000\t\n", "\u200d\u200c\u2060",
             "\u3164", "\u2800", "\u00a0", "\u202e", "\x07"]


@pytest.mark.parametrize("text", INVISIBLE)
def test_invisible_text_is_blank(text) -> None:
    assert is_blank(text)
    assert not is_blank(text + "a")
    assert not is_blank("\u200b\U0001f600")


@pytest.mark.parametrize("text", ["\u200b", "\ufeff", "\u3000\u200b"])
def test_invisible_bodies_and_urls_are_422_and_write_nothing(site, admin, text) -> None:
    thread = site.thread()
    answer = site.call("POST", f"/threads/{thread}/comments", {"body": text}, user=True)
    assert_error(answer, 422, "invalid")
    assert comments_in(admin, site, thread) == 0
    assert_error(site.call("PUT", "/threads", {"url": text}), 422, "invalid")
    assert scalar(admin, site.shard, "SELECT count(*) FROM comments_thread WHERE url = %s",
                  text) == 0


# ----- 405s


def test_a_method_a_path_does_not_take_is_a_json_405(site, service) -> None:
    answer = site.call("DELETE", "/threads")
    assert_error(answer, 405, "method_not_allowed")
    assert answer.headers["Allow"] == "PUT"
    ops = request("DELETE", f"{service.url}/api/ops/sites")
    assert_error(ops, 405, "method_not_allowed")
    assert ops.headers["Allow"] == "GET, POST"
    assert ops.headers["Content-Type"] == "application/json; charset=utf-8"


# ----- Gunicorn's own errors


def raw_http(service, payload: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are and read the answer to the end (Gunicorn closes after errors)."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(payload)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("payload,status,code", [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
     + b"\r\n", 431, "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431,
     "headers_too_large"),
    (b"NOT A REQUEST\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n", 400, "bad_request"),
])
def test_gunicorns_own_errors_are_json(service, payload, status, code) -> None:
    got, headers, body = raw_http(service, payload)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert answer["error"] == code and answer["message"], answer


# ----- signed user tokens that are not identities


def real_payload(site: SiteClient) -> dict[str, Any]:
    """What the service signs for a user, read back with the key the service shares with this
    process (the topology passes its settings to both)."""
    return signing.loads(site.user_token, salt=USER_SALT)


@pytest.mark.parametrize("change", [
    lambda p: {k: v for k, v in p.items() if k != "u"},
    lambda p: {**p, "u": ""},
    lambda p: {**p, "u": 42},
    lambda p: {**p, "u": None},
    lambda p: {**p, "u": ["ann"]},
    lambda p: {**p, "u": "x" * 151},
    lambda p: {**p, "n": {"first": "Ann"}},
    lambda p: {**p, "t": str(p["t"])},
    lambda p: {k: v for k, v in p.items() if k != "t"},
    lambda p: [p["t"], p["u"]],
    lambda p: 42,
    lambda p: "ann",
    lambda p: None,
])
def test_signed_tokens_that_are_not_identities_are_401(site, admin, change) -> None:
    thread = site.thread()
    token = signing.dumps(change(real_payload(site)), salt=USER_SALT, compress=True)
    answer = site.call("POST", f"/threads/{thread}/comments", {"body": "hi"},
                       headers={"X-User-Token": token})
    assert_error(answer, 401, "unauthorized")
    assert comments_in(admin, site, thread) == 0


def test_a_resigned_real_identity_is_accepted(site, admin) -> None:
    # The control for the test above: this process signs with the service's key, so the 401s
    # there come from the payloads, not from a signature the service cannot check.
    thread = site.thread()
    token = signing.dumps(real_payload(site), salt=USER_SALT, compress=True)
    answer = site.call("POST", f"/threads/{thread}/comments", {"body": "hi"},
                       headers={"X-User-Token": token})
    assert answer.status == 201, answer.body
    assert answer.body["author"] == "ann"
    assert comments_in(admin, site, thread) == 1


def test_a_signed_non_json_token_is_401(site, admin) -> None:
    thread = site.thread()
    token = signing.TimestampSigner(salt=USER_SALT).sign("bm90IGpzb24")  # base64 "not json"
    answer = site.call("POST", f"/threads/{thread}/comments", {"body": "hi"},
                       headers={"X-User-Token": token})
    assert_error(answer, 401, "unauthorized")
    assert comments_in(admin, site, thread) == 0


# ----- health and metrics ignore tenant headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_ignore_x_tenant(service, path) -> None:
    plain = get(f"{service.url}{path}")
    for value in ["unknown-tenant-42", "NOT A SLUG!"]:
        answer = get(f"{service.url}{path}", headers={"X-Tenant": value})
        assert answer.status == plain.status, answer.body
        assert not (isinstance(answer.body, dict) and "tenant" in answer.body.get("error", ""))


def test_healthz_answers_ok_with_an_unknown_tenant(service) -> None:
    answer = get(f"{service.url}/healthz", headers={"X-Tenant": "unknown"})
    assert answer.status == 200 and answer.body == {"status": "ok"}


# ----- no file paths in answers


def test_unknown_shard_answer_names_no_file(service, topology) -> None:
    answer = request("POST", f"{service.url}/api/ops/sites",
                     body={"slug": f"nowhere-{uuid.uuid4().hex[:8]}", "name": "N",
                           "shard": "shard_9"},
                     headers={"X-Ops-Token": topology.ops_token()})
    assert_error(answer, 422, "invalid")
    message = answer.body["message"]
    assert "shard_9" in message and "shard_0" in message
    assert "/" not in message and ".toml" not in message


def test_unknown_shard_keeps_the_file_for_operators(topology) -> None:
    from shards.errors import UnknownShard
    from shards.topology import get_shard_map

    with pytest.raises(UnknownShard) as info:
        get_shard_map().shard("shard_9")
    assert str(topology.layout.topology_file.name) in str(info.value)
    assert "topology" not in info.value.public_message
