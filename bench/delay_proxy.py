"""A TCP proxy that delays every byte by a fixed time each way: a remote apiserver's round trip,
for both tools alike. TLS passes through untouched (the proxy never reads the stream's content).

    python bench/delay_proxy.py --target 127.0.0.1:6443 --delay-ms 10   # prints the port it listens on

The delay is latency, not bandwidth: each chunk is forwarded `delay` after it arrived, in order."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(forward())
    try:
        while True:
            chunk = await reader.read(65536)
            await queue.put((time.monotonic() + delay, chunk))
            if not chunk:
                break
    except ConnectionError:
        await queue.put((0.0, b""))
    await sender


async def _serve(target_host: str, target_port: int, delay: float, log_accepts: bool) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if log_accepts:  # when a client's connection reached us (the Job's first request, bench/job_start.py)
            print(f"accepted {time.time_ns()}", flush=True)
        try:
            server_reader, server_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer, delay), _pipe(server_reader, client_writer, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="added each way, milliseconds")
    parser.add_argument("--log-accepts", action="store_true", help="print each connection's arrival (ns)")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    asyncio.run(_serve(host, int(port), args.delay_ms / 1000, args.log_accepts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
