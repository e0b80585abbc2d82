#!/usr/bin/env python3
"""Server CPU per gigabyte sent, with sendfile(2) and with reads and writes: starts the files
example (release build) on a 100 MB file, downloads it N times with one keep-alive client
(Python's http.client, reading into a reused buffer), and reads the server's CPU time (user +
system, /proc/PID/stat) before and after. Both modes run in the same invocation, alternately,
so the ratio holds on a noisy machine. Not run by CI; 127.0.0.1 only; stops only what it started.

    python3 benches/sendfile.py [--size-mb 100] [--rounds 10] [--runner pool]

Build first: cargo build --release --example files
"""
import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(directory, size, rounds, runner, read_mode):
    port = free_port()
    env = dict(os.environ, FILES_ROOT=directory)
    if read_mode:
        env["FILES_READ"] = "1"
    exe = os.path.join(ROOT, "target", "release", "examples", "files")
    server = subprocess.Popen([exe, "--bind", f"127.0.0.1:{port}", "--runner", runner, "--workers", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        server.stdout.readline()  # "files: serving on ..."
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        buf = bytearray(1 << 20)
        before, t0 = cpu_seconds(server.pid), time.monotonic()
        for _ in range(rounds):
            conn.request("GET", "/big.bin")
            response = conn.getresponse()
            got = 0
            while True:
                n = response.readinto(buf)
                if not n:
                    break
                got += n
            assert response.status == 200 and got == size, (response.status, got)
        cpu, wall = cpu_seconds(server.pid) - before, time.monotonic() - t0
        conn.close()
        return cpu, wall
    finally:
        server.terminate()
        server.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runner", default="pool")
    args = ap.parse_args()
    size = args.size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "big.bin"), "wb") as f:
            f.write(os.urandom(size))
        gigabytes = size * args.rounds / 1e9
        results = {"sendfile": [], "read+write": []}
        for _ in range(3):
            for mode in results:
                results[mode].append(measure(directory, size, args.rounds, args.runner, mode == "read+write"))
        print(f"{args.rounds} x {args.size_mb} MB ({gigabytes:.2f} GB) per run, runner {args.runner}, 3 runs each:")
        best = {}
        for mode, runs in results.items():
            cpu = min(c for c, _ in runs)
            wall = min(w for _, w in runs)
            best[mode] = cpu
            print(f"  {mode:10}: server CPU {cpu / gigabytes:.3f} s/GB (best), wall {gigabytes / wall:.2f} GB/s (best)")
        if best["sendfile"] > 0:
            print(f"  read+write costs {best['read+write'] / best['sendfile']:.1f}x the server CPU of sendfile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
