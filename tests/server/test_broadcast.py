"""/broadcast: every message to every /broadcast client, sender included."""
import asyncio

from websockets.asyncio.client import connect

T = 30


def test_everyone_gets_everything_in_one_order(ringcast):
    srv = ringcast("--shards", "2")
    n_clients, per_client = 10, 20

    async def run():
        clients = [
            await connect(srv.url("/broadcast"), open_timeout=T, max_queue=None, max_size=None)
            for _ in range(n_clients)
        ]
        # Subscriptions become active asynchronously: wait until a probe from
        # the last client reaches the first one.
        await clients[-1].send("probe")
        for c in clients:
            while await asyncio.wait_for(c.recv(), T) != "probe":
                pass

        async def talk(i, c):
            for k in range(per_client):
                # Alternate text and binary: the opcode is kept.
                await c.send(f"{i}:{k}" if k % 2 == 0 else f"{i}:{k}".encode())

        async def listen(c):
            return [await asyncio.wait_for(c.recv(), T) for _ in range(n_clients * per_client)]

        listeners = [asyncio.create_task(listen(c)) for c in clients]
        await asyncio.gather(*(talk(i, c) for i, c in enumerate(clients)))
        seen = await asyncio.gather(*listeners)
        await asyncio.gather(*(c.close() for c in clients))
        return seen

    seen = asyncio.run(run())
    for other in seen[1:]:
        assert other == seen[0]
    for i in range(n_clients):
        mine = [m for m in seen[0] if (m if isinstance(m, str) else m.decode()).startswith(f"{i}:")]
        assert mine == [f"{i}:{k}" if k % 2 == 0 else f"{i}:{k}".encode() for k in range(per_client)]


def test_broadcast_does_not_reach_other_routes(ringcast):
    srv = ringcast("--shards", "2")

    async def run():
        b = await connect(srv.url("/broadcast"), open_timeout=T)
        e = await connect(srv.url("/echo"), open_timeout=T)
        await b.send("to broadcast")
        assert await asyncio.wait_for(b.recv(), T) == "to broadcast"
        await e.send("to echo")
        assert await asyncio.wait_for(e.recv(), T) == "to echo"
        await b.close()
        await e.close()

    asyncio.run(run())
