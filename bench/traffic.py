#!/usr/bin/env python3
"""Traffic endpoints for bench/throughput.py (stdlib only). Run inside a namespace with
`ip netns exec NS python3 bench/traffic.py MODE ...`.

  sink PORT              TCP server: per connection, read and discard until EOF, then reply
                         with the byte count (8 bytes, big-endian). Serves forever.
  acceptor PORT          TCP server: per connection, send one byte and close. Serves forever;
                         SO_REUSEPORT, so several processes can share the port.
  send HOST PORT SECS    one connection, send for SECS seconds, half-close, wait for the
                         server's count; prints {"bytes": N, "secs": S}.
  connect HOST PORT SECS connect, receive the byte, close (RST, so no TIME_WAIT piles up),
                         in a loop for SECS seconds; prints {"conns": N, "secs": S}.

Servers print "ready" on stdout once listening.
"""

import json
import socket
import struct
import sys
import time

CHUNK = 256 * 1024


def listener(port, reuseport=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    print("ready", flush=True)
    return s


def sink(port):
    s = listener(port)
    buf = bytearray(CHUNK)
    while True:
        c, _ = s.accept()
        total = 0
        with c:
            while True:
                n = c.recv_into(buf)
                if not n:
                    break
                total += n
            c.sendall(struct.pack("!Q", total))


def acceptor(port):
    s = listener(port, reuseport=True)
    while True:
        c, _ = s.accept()
        try:
            c.send(b"x")
        except OSError:
            pass
        c.close()


def send(host, port, secs):
    data = b"\0" * CHUNK
    c = socket.create_connection((host, port), timeout=10)
    t0 = time.perf_counter()
    end = t0 + secs
    while time.perf_counter() < end:
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < 8:
        part = c.recv(8 - len(got))
        if not part:
            raise SystemExit("sink closed without a count")
        got += part
    elapsed = time.perf_counter() - t0
    c.close()
    print(json.dumps({"bytes": struct.unpack("!Q", got)[0], "secs": elapsed}))


def connect(host, port, secs):
    addr = (host, port)
    linger0 = struct.pack("ii", 1, 0)
    n = 0
    t0 = time.perf_counter()
    end = t0 + secs
    while time.perf_counter() < end:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect(addr)
        if c.recv(1) != b"x":
            raise SystemExit("acceptor did not answer")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        c.close()
        n += 1
    print(json.dumps({"conns": n, "secs": time.perf_counter() - t0}))


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "sink":
        sink(int(args[0]))
    elif mode == "acceptor":
        acceptor(int(args[0]))
    elif mode == "send":
        send(args[0], int(args[1]), float(args[2]))
    elif mode == "connect":
        connect(args[0], int(args[1]), float(args[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
