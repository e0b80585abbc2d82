#!/usr/bin/env python3
"""Failed requests across prefork binary upgrades: starts the prefork example (release build)
in a session of its own (no controlling terminal, as a daemon or a service) with a pidfile,
keeps the closed-loop load of reloads.py on it, and N times runs the upgrade sequence: USR2 to
the master in the pidfile, wait for the new master and its workers, WINCH to the old one, wait
until its workers are gone, TERM it, wait until it is gone; then counts requests answered and
failed. Not run by CI; bounded in time; 127.0.0.1 only; stops only processes it started (the
masters each upgrade starts descend from the first: this script is their subreaper).

    python3 benches/upgrades.py [--upgrades 20] [--clients 8] [--workers 2]

Build first: cargo build --release --example prefork
"""
import argparse
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reloads import ROOT, Load, children  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36


def alive(pid):
    """Running: not gone, not a zombie (reaped below, as this script is the subreaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def wait(condition, limit=10):
    until = time.monotonic() + limit
    while time.monotonic() < until:
        reap()
        if condition():
            return True
        time.sleep(0.01)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upgrades", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=18610)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/examples/prefork"))
    args = ap.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("cannot become a subreaper")
    work = tempfile.mkdtemp(prefix="sgi-upgrades-")
    pidfile = os.path.join(work, "app.pid")
    server = subprocess.Popen([args.binary, "--bind", f"127.0.0.1:{args.port}", "--workers", str(args.workers),
                               "--pidfile", pidfile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        if not wait(lambda: read_pid(pidfile) == server.pid and len(children(server.pid)) == args.workers):
            sys.exit("the server did not start")
        time.sleep(0.3)
        load = Load(args.port, args.clients)
        started = time.monotonic()
        stuck = 0
        masters = [server.pid]
        for _ in range(args.upgrades):
            old = read_pid(pidfile)
            os.kill(old, signal.SIGUSR2)
            new_up = wait(lambda: (read_pid(pidfile) or old) != old
                          and len(children(read_pid(pidfile))) == args.workers)
            new = read_pid(pidfile)
            masters.append(new)
            os.kill(old, signal.SIGWINCH)
            workers_gone = wait(lambda: children(old) <= {new})
            os.kill(old, signal.SIGTERM)
            old_gone = wait(lambda: not alive(old))
            stuck += not (new_up and workers_gone and old_gone)
        took = time.monotonic() - started
        answered = load.finish()
        print(f"{args.upgrades} binary upgrades (USR2, WINCH, TERM) in {took:.1f} s ({stuck} not completed "
              f"within 10 s a step) under {args.clients} closed-loop clients: {answered} requests answered, "
              f"{len(load.failures)} failed; {len(set(masters))} masters in turn")
        for f in load.failures[:10]:
            print("  ", f)
    finally:
        last = read_pid(pidfile)
        for pid in {server.pid, last} - {None}:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        wait(lambda: not any(alive(p) for p in {server.pid, last} - {None}))
        reap()


if __name__ == "__main__":
    main()
