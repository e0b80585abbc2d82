#!/usr/bin/env python3
"""Failed requests across prefork reloads: starts the prefork example (release build) with
--workers 2, keeps a steady closed-loop load on it (keep-alive clients and one-connection-per-
request clients, each sending its next request as soon as it has an answer), sends HUP, waits
until every worker is new, and again, N times; then counts requests answered and failed. Not
run by CI; bounded in time; 127.0.0.1 only; stops only the process it started.

    python3 benches/reloads.py [--reloads 100] [--clients 8] [--workers 2]

Build first: cargo build --release --example prefork
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def children(pid):
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def read_response(sock, buf):
    """Reads one Content-Length response; returns (closes, rest of buffer)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed without an answer")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").lower().split("\r\n")
    if not lines[0].startswith("http/1.1 200 "):
        raise ConnectionError(f"status {lines[0]!r}")
    length = next(int(l.split(":", 1)[1]) for l in lines if l.startswith("content-length:"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed inside a body")
        rest += data
    return "connection: close" in lines, rest[length:]


def client(port, keep_alive, stop, counts, failures):
    sock, buf = None, b""
    close = b"" if keep_alive else b"Connection: close\r\n"
    while not stop.is_set():
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                buf = b""
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n")
            closes, buf = read_response(sock, buf)
            counts[0] += 1
            if closes or not keep_alive:
                sock.close()
                sock = None
        except (OSError, ConnectionError, StopIteration) as e:
            failures.append(f"{time.monotonic():.3f}: {e!r}")
            if sock is not None:
                sock.close()
            sock = None


class Load:
    """`clients` closed-loop clients on 127.0.0.1:`port`, half keep-alive, half a connection
    per request, from `start` until `finish`, which returns the requests answered."""

    def __init__(self, port, clients):
        self.stop = threading.Event()
        self.counts = [[0] for _ in range(clients)]
        self.failures = []
        self.threads = [threading.Thread(target=client, args=(port, i % 2 == 0, self.stop, self.counts[i],
                                                               self.failures))
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        return sum(c[0] for c in self.counts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reloads", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=18600)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/examples/prefork"))
    args = ap.parse_args()
    server = subprocess.Popen([args.binary, "--bind", f"127.0.0.1:{args.port}", "--workers", str(args.workers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while len(children(server.pid)) < args.workers:
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("the server did not start")
            time.sleep(0.05)
        time.sleep(0.3)
        load = Load(args.port, args.clients)
        started = time.monotonic()
        stuck = 0
        for _ in range(args.reloads):
            old = children(server.pid)
            server.send_signal(signal.SIGHUP)
            until = time.monotonic() + 10
            while time.monotonic() < until:
                now = children(server.pid)
                if len(now) == args.workers and not (now & old):
                    break
                time.sleep(0.01)
            else:
                stuck += 1
        took = time.monotonic() - started
        answered = load.finish()
        print(f"{args.reloads} reloads in {took:.1f} s ({stuck} not completed within 10 s) under {args.clients} "
              f"closed-loop clients: {answered} requests answered, {len(load.failures)} failed")
        for f in load.failures[:10]:
            print("  ", f)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
