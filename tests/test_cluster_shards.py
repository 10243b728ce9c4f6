"""Sharded roles: two channel_svc and two presence_svc instances split threads and users.

The cluster here has two of each sharded role (and two socket servers, one message_svc), so
group fan-out and presence each really go through two owners on their rings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from natter.errors import Unavailable
from tests.cluster import Chat, Cluster, running_cluster
from tests.helpers import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sharded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_cluster(
        tmp_path_factory.mktemp("sharded"), sockets=2, messages=1, channels=2, presences=2
    ) as c:
        yield c


def owner(cluster: Cluster, role: str, key: int) -> str:
    assert cluster.observer is not None
    node = cluster.observer.ring(role).owner(str(key))
    assert node is not None, f"no {role} node owns {key}"
    return node.node_id


def received(chat: Chat) -> int:
    """Messages from others the chat's devices have shown so far."""
    return sum(len(got) for p in chat.peers for got in p.received.values())


def reached(chat: Chat, goal: int) -> Callable[[], bool]:
    """Whether the chat's devices have shown `goal` messages from others."""
    return lambda: received(chat) >= goal


async def test_groups_on_both_channel_shards_and_one_shard_killed(sharded: Cluster) -> None:
    chats: list[Chat] = []
    try:
        # Groups until both channel nodes own at least one (thread ids hash over the ring).
        by_node: dict[str, Chat] = {}
        while len(by_node) < 2:
            assert len(chats) < 12, "twelve groups all hashed to one channel node"
            chat = await Chat(sharded.front_door, 3, group=True, interval=0.2).open()
            chats.append(chat)
            by_node.setdefault(owner(sharded, "channel", chat.peers[0].thread_id), chat)
        for chat in chats:
            chat.start()
        for chat in chats:
            await eventually(reached(chat, 12), 20, message="live delivery in every group")

        victim_id = next(iter(by_node))
        sharded.proc(victim_id).kill()
        # The survivor takes over the victim's threads once its lease is gone; every group
        # keeps delivering, the victim's ones included.
        await eventually(
            lambda: victim_id not in sharded.registered("channel"),
            sharded.ttl + 5,
            message="the killed channel node left the ring",
        )
        goals = [received(chat) + 12 for chat in chats]
        for chat, goal in zip(chats, goals, strict=True):
            await eventually(
                reached(chat, goal), 20, message="live delivery after a channel shard died"
            )
        await sharded.heal()
        for chat in chats:
            await chat.stop()
        for chat in chats:
            await chat.settle()
            await chat.check_store()
    finally:
        for chat in chats:
            await chat.close()


async def test_presence_of_users_owned_by_either_presence_shard(sharded: Cluster) -> None:
    await sharded.heal()
    chat = await Chat(sharded.front_door, 8, interval=1.0).open()
    try:
        owners = {}
        for p in chat.peers:
            assert p.conn is not None and p.conn.user is not None
            owners[p.name] = owner(sharded, "presence", p.conn.user.user_id)
        assert len(set(owners.values())) == 2, f"8 users all on one presence node: {owners}"
        watcher, *others = chat.peers
        for p in others:
            await watcher.client.add_contact(p.name)
            await p.client.add_contact(watcher.name)  # status shows to mutual contacts
        names = [p.name for p in others]

        async def all_online() -> bool:
            try:
                found = await watcher.client.presence(names)
            except Unavailable:
                return False
            return sorted(s.user.username for s in found if s.online) == sorted(names)

        await eventually(all_online, 10, message="every contact online, whichever shard owns them")
    finally:
        await chat.close()
