"""fleet.controller.longpoll: one broadcast wakes many waiters from another thread, a published change
carries the new desired state, and an older revision never replaces a newer one."""

from __future__ import annotations

import asyncio
import threading

from fleet.controller.longpoll import ChangeNotifier, Targeted, Waiter
from fleet.shared.protocol import Artifact

ARTIFACT = Artifact(
    model="churn",
    version="2",
    variant="host-cpu-int8",
    sha256="0" * 64,
    signature="c2ln",
    release=2,
    size_bytes=10,
    url="/v1/artifacts/churn/2/host-cpu-int8",
)
V2 = Targeted(model="churn", version="2", rollout_id="r-1", artifacts={"host-cpu": ARTIFACT})


def from_thread(action: object) -> None:
    assert callable(action)
    thread = threading.Thread(target=action)
    thread.start()
    thread.join()


def test_a_publish_from_another_thread_wakes_every_waiter_with_its_state() -> None:
    notifier = ChangeNotifier()

    async def main() -> list[tuple[str, int, str | None, str | None]]:
        with (
            notifier.subscribe("a") as a,
            notifier.subscribe("b") as b,
            notifier.subscribe("c") as c,
        ):
            assert notifier.waiting() == 3
            from_thread(lambda: notifier.publish(V2, {"a": 4, "b": 7}))
            await asyncio.wait_for(asyncio.gather(a.event.wait(), b.event.wait()), timeout=5)
            assert not c.event.is_set()  # not part of the change
            answers = []
            for waiter, cls in ((a, "host-cpu"), (b, "edge-small")):
                desired = waiter.desired(cls)
                assert desired is not None
                version = desired.artifact.version if desired.artifact else None
                answers.append((desired.device_id, desired.revision, version, desired.rollout_id))
            return answers

    answers = asyncio.run(main())
    # a class without a signed variant of the version gets no artifact
    assert answers == [("a", 4, "2", "r-1"), ("b", 7, None, "r-1")]
    assert notifier.waiting() == 0


def test_notify_only_wakes_and_the_waiter_reads_the_database() -> None:
    notifier = ChangeNotifier()

    async def main() -> Waiter:
        with notifier.subscribe("a") as a:
            notifier.publish(V2, {"a": 3})
            notifier.notify(["a"])  # a change whose state is not known here
            await asyncio.wait_for(a.event.wait(), timeout=5)
            return a

    waiter = asyncio.run(main())
    assert waiter.desired("host-cpu") is None


def test_an_older_revision_never_replaces_a_newer_one() -> None:
    notifier = ChangeNotifier()
    stale = Targeted(model="churn", version="1", rollout_id=None)

    async def main() -> Waiter:
        with notifier.subscribe("a") as a:
            notifier.publish(V2, {"a": 9})
            notifier.publish(stale, {"a": 8})  # committed earlier, published later
            await asyncio.wait_for(a.event.wait(), timeout=5)
            await asyncio.sleep(0)  # both callbacks have run
            return a

    waiter = asyncio.run(main())
    desired = waiter.desired("host-cpu")
    assert desired is not None and desired.revision == 9 and desired.rollout_id == "r-1"
    waiter.clear()
    assert waiter.desired("host-cpu") is None and not waiter.event.is_set()
