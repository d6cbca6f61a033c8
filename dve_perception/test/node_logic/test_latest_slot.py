"""The one-item mailbox between the synchroniser callback and the perception thread."""

from __future__ import annotations

import threading
import time

from dve_perception.node_logic import LatestSlot


def test_take_returns_the_newest_item_and_counts_the_replaced_ones():
    slot: LatestSlot[int] = LatestSlot()
    for item in range(5):
        slot.put(item)
    assert slot.take(timeout_s=0) == 4
    assert (slot.received, slot.dropped) == (5, 4)
    assert slot.take(timeout_s=0) is None


def test_an_item_taken_before_the_next_put_is_not_counted_as_dropped():
    slot: LatestSlot[str] = LatestSlot()
    slot.put("a")
    assert slot.take(timeout_s=0) == "a"
    slot.put("b")
    assert slot.take(timeout_s=0) == "b"
    assert slot.dropped == 0


def test_take_waits_for_a_put_from_another_thread():
    slot: LatestSlot[str] = LatestSlot()
    threading.Timer(0.05, slot.put, args=("frame",)).start()
    assert slot.take(timeout_s=5.0) == "frame"


def test_close_wakes_a_waiting_worker_and_refuses_later_items():
    slot: LatestSlot[str] = LatestSlot()
    woke: list[object] = []
    worker = threading.Thread(target=lambda: woke.append(slot.take(timeout_s=10.0)))
    worker.start()
    time.sleep(0.05)
    slot.close()
    worker.join(timeout=2.0)
    assert not worker.is_alive() and woke == [None]
    slot.put("late")
    assert slot.closed and slot.take(timeout_s=0) is None and slot.received == 0
