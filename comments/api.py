"""End-user endpoints, scoped to one site: /api/sites/<site>/..."""

from __future__ import annotations

from typing import Annotated

from django.db import connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from ninja import Path, Query, Router

from comments import live, live_hub, service
from comments.auth import (
    EndUser,
    PublicKeyQuery,
    SiteKey,
    check_page_url,
    end_user,
    issue_user_token,
    require_secret_key,
    site_of_request,
)
from comments.schemas import (
    CommentEdit,
    CommentIn,
    CommentOut,
    CommentPageOut,
    CountsOut,
    IdIn,
    Order,
    ThreadIn,
    ThreadOut,
    UserTokenIn,
    UserTokenOut,
    VoteIn,
    VoteOut,
    comment_json,
    thread_json,
)
from routers.context import use_primary
from sites import throttle
from sites.schemas import ErrorOut

Id = Annotated[IdIn, Path()]
# Declared by every handler so the schema documents the path parameter (django-ninja leaves out,
# with a warning, one a handler does not take); its value is not read here: the routing
# middleware has already resolved the site from the path (project.middleware.tenant_key).
Site = Annotated[str, Path(max_length=63, description="The site's slug.")]
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 413: ErrorOut,
          422: ErrorOut, 429: ErrorOut, 503: ErrorOut}
# Endpoints that read a JSON body also answer 415 to any other content type.
BODY_ERRORS = {**ERRORS, 415: ErrorOut}

# What django-ninja's JSON renderer answers with.
JSON = "application/json; charset=utf-8"

router = Router(auth=SiteKey(), tags=["site"])


def writer(request: HttpRequest) -> EndUser:
    """The end user of a write, within their write budget on this site (429 past it)."""
    user = end_user(request)
    throttle.count_write(request, site_of_request().id, user.id)
    return user


@router.post("/users/token", response={200: UserTokenOut, **BODY_ERRORS})
def user_token(request: HttpRequest, site: Site, payload: UserTokenIn):
    """Sign an end-user identity for this site (call from the site's backend)."""
    require_secret_key(request, "signing a user token")
    return {"token": issue_user_token(request, payload.user_id, payload.name)}


@router.put("/threads", response={200: ThreadOut, 201: ThreadOut, 409: ErrorOut, **BODY_ERRORS})
def put_thread(request: HttpRequest, site: Site, payload: ThreadIn):
    """Get or create the thread of a page URL."""
    check_page_url(request, payload.url)
    thread, created = service.get_or_create_thread(payload.url, payload.title)
    return (201 if created else 200), thread


@router.get("/threads/counts", response={200: CountsOut, **ERRORS})
def thread_counts(
    request: HttpRequest, site: Site,
    ids: Annotated[list[IdIn], Query(max_length=100)],
):
    """Comment counts of up to 100 threads; unknown ids are left out."""
    return {"counts": service.comment_counts(ids)}


@router.get("/threads/{thread_id}", response={200: ThreadOut, **ERRORS})
def get_thread(request: HttpRequest, site: Site, thread_id: Id):
    # Rendered here through ThreadOut (schemas.thread_json): ninja passes an HttpResponse
    # through as it is, and the most frequent read of the API skips its answer-wrapping model.
    return HttpResponse(thread_json(service.get_thread(thread_id)), content_type=JSON)


@router.get("/threads/{thread_id}/comments", response={200: CommentPageOut, **ERRORS})
def list_comments(
    request: HttpRequest, site: Site, thread_id: Id,
    order: Order = "newest",
    cursor: Annotated[str | None, Query(max_length=300)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
):
    """Top-level comments, paginated, each with its reply tree."""
    body, how = service.cached_comment_page(thread_id, order, cursor, limit,
                                            throttle_check=throttle.deferred_read(request))
    # The page was validated and rendered by CommentPageOut when it was built (page_json):
    # returned as those bytes, ninja passes it through without validating it again.
    response = HttpResponse(body, content_type=JSON)
    response["X-Cache"] = how
    return response


@router.post("/threads/{thread_id}/comments", response={201: CommentOut, **BODY_ERRORS})
def post_comment(request: HttpRequest, site: Site, thread_id: Id, payload: CommentIn):
    """Post a comment, or a reply with parent_id."""
    user = writer(request)
    comment = service.post_comment(thread_id, author=user.id, author_name=user.name,
                                   body=payload.body, parent_id=payload.parent_id)
    # Rendered here, as get_thread's answer is (schemas.comment_json).
    return HttpResponse(comment_json(service.comment_dict(comment)), status=201,
                        content_type=JSON)


@router.patch("/comments/{comment_id}", response={200: CommentOut, **BODY_ERRORS})
def edit_comment(request: HttpRequest, site: Site, comment_id: Id, payload: CommentEdit):
    """Edit one's own comment."""
    comment = service.edit_comment(comment_id, user=writer(request).id, body=payload.body)
    return HttpResponse(comment_json(service.comment_dict(comment)), content_type=JSON)


@router.delete("/comments/{comment_id}", response={204: None, **ERRORS})
def delete_comment(request: HttpRequest, site: Site, comment_id: Id):
    """Delete one's own comment (soft: replies stay, the body is removed)."""
    service.delete_comment(comment_id, user=writer(request).id)
    return 204, None


@router.put("/comments/{comment_id}/vote", response={200: VoteOut, **BODY_ERRORS})
def vote(request: HttpRequest, site: Site, comment_id: Id, payload: VoteIn):
    """Vote a comment up (1) or down (-1), or take the vote back (0). Idempotent."""
    value, score = service.vote(comment_id, user=writer(request).id, value=payload.value)
    return {"comment_id": comment_id, "value": value, "score": score}


@router.get("/threads/{thread_id}/events", auth=[SiteKey(), PublicKeyQuery()],
            response={200: None, **ERRORS})
def thread_events(
    request: HttpRequest, site: Site, thread_id: Id,
    since: Annotated[str | None, Query(pattern=live.EVENT_ID.pattern, description=(
        "replay the events after this id (EventSource sends Last-Event-ID by itself)"))] = None,
):
    """Live events of a thread (text/event-stream): comments created, edited, deleted, voted."""
    try:
        service.get_thread(thread_id)  # another site's thread is a 404, as everywhere
    except service.NotFound:
        # EventSource cannot send the causal token: a thread made a moment ago may not have
        # reached the replica yet. Ask the primary before saying 404.
        with use_primary():
            service.get_thread(thread_id)
    last = request.headers.get("Last-Event-ID") or since
    if last is not None and not live.EVENT_ID.fullmatch(last):
        raise service.Invalid("Last-Event-ID is not an event id of this stream")
    # The stream may stay open for minutes: give the database connections back now.
    for connection in connections.all(initialized_only=True):
        connection.close()
    response = StreamingHttpResponse(
        live_hub.event_stream(site_of_request().id, thread_id, last),
        content_type="text/event-stream")
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"  # nginx passes each event on at once
    return response
