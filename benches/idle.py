#!/usr/bin/env python3
"""Memory per idle keep-alive connection: opens N connections to a server (bench_app), sends one
request on each, leaves them idle, reads the server's VmRSS before and after, then asks again on
every connection and counts the answers. Not run by CI; bounded in time; 127.0.0.1 only.

    python3 benches/idle.py [--connections 10000] [--idle 10] [--runner pool] [--workers 4]

It starts target/release/examples/bench_app itself (build it first: cargo build --release
--example bench_app) with --max-connections and --keep-alive raised above the idle time, and
raises its own descriptor limit to the hard limit.
"""
import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def ask_all(socks, deadline):
    """Sends GET /hello on every socket, waits for every answer; returns how many came."""
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    sel = selectors.DefaultSelector()
    pending = {}
    for s in socks:
        s.sendall(request)
        sel.register(s, selectors.EVENT_READ)
        pending[s] = b""
    answered = 0
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            data = s.recv(4096)
            if not data:
                sel.unregister(s)
                del pending[s]
                continue
            pending[s] += data
            if pending[s].endswith(b"Hello, World!"):
                answered += 1
                sel.unregister(s)
                del pending[s]
    sel.close()
    return answered


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--runner", default="pool")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--port", type=int, default=18500)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/examples/bench_app"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + 100 > hard:
        sys.exit(f"the hard descriptor limit ({hard}) is too low for {args.connections} connections")

    def raise_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    cmd = [args.binary, "--bind", f"127.0.0.1:{args.port}", "--runner", args.runner, "--workers", str(args.workers),
           "--keep-alive", str(args.idle * 3 + 30)]
    if args.runner == "pool":
        cmd += ["--max-connections", str(args.connections + 16)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=raise_limit)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", args.port)).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("server did not start")
                time.sleep(0.1)
        # Warm: one connection's worth of buffers and the workers' stacks are touched.
        warm = socket.create_connection(("127.0.0.1", args.port))
        ask_all([warm], time.monotonic() + 5)
        time.sleep(0.5)
        before = rss_kib(server.pid)
        socks = []
        for _ in range(args.connections):
            socks.append(socket.create_connection(("127.0.0.1", args.port)))
        first = ask_all(socks, time.monotonic() + 60)
        time.sleep(args.idle)
        after = rss_kib(server.pid)
        second = ask_all(socks, time.monotonic() + 60)
        per = (after - before) / args.connections
        print(f"{args.runner}: {args.connections} idle keep-alive connections, idle {args.idle} s: "
              f"VmRSS {before} KiB -> {after} KiB, {per:.2f} KiB per connection; "
              f"answered {first} before and {second} after the idle time")
        for s in socks:
            s.close()
        return 0 if first == second == args.connections else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
