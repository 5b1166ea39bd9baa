from comments import live
from comments.live_hub import QUEUE_SIZE, RESYNC, LiveHub


def hub() -> LiveHub:
    # No connection is opened until a command runs: nothing here talks to Redis.
    return LiveHub("redis://127.0.0.1:1/0")


def test_events_go_to_the_queues_of_exactly_their_channel() -> None:
    h = hub()
    a, b, a_other_thread = (live.channel(1, 10), live.channel(2, 10), live.channel(1, 11))
    queues = {name: h.queues[name] for name in (a, b, a_other_thread)}
    from gevent.queue import Queue

    for name in queues:
        queues[name].add(Queue(maxsize=QUEUE_SIZE))
    h.dispatch(a, "1-0 {}")
    assert [q.qsize() for q in h.queues[a]] == [1]
    assert [q.qsize() for q in h.queues[b]] == [0]
    assert [q.qsize() for q in h.queues[a_other_thread]] == [0]


def test_channel_names_carry_tenant_and_thread() -> None:
    assert live.channel(12, 345) == "shardsvc:live:12:345"
    assert live.channel(1, 23) != live.channel(12, 3)  # no tenant/thread ambiguity


def test_a_full_queue_is_replaced_by_one_resync() -> None:
    from gevent.queue import Queue

    h = hub()
    name = live.channel(1, 1)
    queue: Queue = Queue(maxsize=3)
    h.queues[name].add(queue)
    for i in range(5):
        h.dispatch(name, f"{i}-0 {{}}")
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    # The stream replays everything after its last id first; "4-0" is then skipped as seen.
    assert items == [RESYNC, "4-0 {}"]


def test_unsubscribing_the_last_queue_forgets_the_channel() -> None:
    from gevent.queue import Queue

    h = hub()
    name = live.channel(3, 4)
    queue: Queue = Queue()
    h.queues[name].add(queue)
    h.unsubscribe(name, queue)
    assert name not in h.queues and h.open_streams() == 0
