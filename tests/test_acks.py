from gridwatch.streams.acks import OrderedAcker


def test_acks_are_released_in_offset_order_only():
    acked: list[int] = []
    a = OrderedAcker()
    done = {o: a.track(0, o, lambda o=o: acked.append(o)) for o in (10, 11, 12, 13)}
    done[11]()  # a tick, durable at once: must wait for 10
    done[13]()
    assert acked == []
    done[10]()
    assert acked == [10, 11]
    done[12]()
    assert acked == [10, 11, 12, 13]
    assert a.pending(0) == 0


def test_partitions_are_independent_and_forgettable():
    acked: list[tuple[int, int]] = []
    a = OrderedAcker()
    d0 = a.track(0, 5, lambda: acked.append((0, 5)))
    d1 = a.track(1, 7, lambda: acked.append((1, 7)))
    d1()
    assert acked == [(1, 7)]
    a.forget(0)
    d0()  # a late completion for a revoked partition releases nothing
    assert acked == [(1, 7)] and a.pending(0) == 0
