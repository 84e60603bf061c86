#!/usr/bin/env python3
"""Bytes on the wire of /ws delta frames with permessage-deflate, JSON or binary frames.

A measurement, not a test (BENCHMARKS.md, "Compact binary frames"): a bare WebSocket client
(standard library only) that offers permessage-deflate like a browser, subscribes to
[0, 0] .. [1024, 1024] and counts, for SECONDS after the first delta, each delta's bytes on the
wire and its payload (inflated), and the sizes of the first reset. `binary` offers
terrarium.binary.v1, `binary2` terrarium.binary.v2 (with role/status entries). Against a running
game_server:

    python3 server/tests/browser/wire_bytes.py HOST PORT KEY json|binary|binary2 SECONDS
"""
import base64, os, socket, struct, sys, time, zlib, json
host, port, key, proto, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
s = socket.create_connection((host, port))
protos = {"binary": "terrarium.binary.v1, ", "binary2": "terrarium.binary.v2, terrarium.binary.v1, "}.get(proto, "") + "terrarium.v1"
req = (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
       f"Sec-WebSocket-Protocol: {protos}\r\nx-api-key: {key}\r\n"
       "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n\r\n")
s.sendall(req.encode())
buf = b""
while b"\r\n\r\n" not in buf: buf += s.recv(65536)
head, buf = buf.split(b"\r\n\r\n", 1)
print(head.decode().split("\r\n")[0], [l for l in head.decode().split("\r\n") if l.lower().startswith("sec-websocket-")], file=sys.stderr)
def need(n):
    global buf
    while len(buf) < n:
        d = s.recv(1 << 20)
        if not d: raise EOFError
        buf += d
def frame():
    global buf
    need(2); b0, b1 = buf[0], buf[1]; n = b1 & 0x7F; at = 2
    if n == 126: need(4); n = struct.unpack(">H", buf[2:4])[0]; at = 4
    elif n == 127: need(10); n = struct.unpack(">Q", buf[2:10])[0]; at = 10
    need(at + n); payload = buf[at:at + n]; buf = buf[at + n:]
    fin, rsv1, op = b0 >> 7, (b0 >> 6) & 1, b0 & 0xF
    assert fin, "fragmented"
    raw = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") if rsv1 else payload
    return op, at + n, raw
def send_text(t):
    p = t.encode(); mask = os.urandom(4)
    hdr = bytes([0x81]) + (bytes([0x80 | len(p)]) if len(p) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(p)))
    s.sendall(hdr + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(p)))
frame()  # hello
send_text(json.dumps({"type": "subscribe", "min": [0, 0], "max": [1024, 1024]}))
wire = raw = n = 0; t0 = None; reset = None
while True:
    op, w, r = frame()
    if reset is None and ((op == 2 and r[0] == 1) or (op == 1 and r.startswith(b'{"type":"reset"'))):
        reset = (len(r), w)
    is_delta = (op == 2 and r[0] == 2) or (op == 1 and r.startswith(b'{"type":"delta"'))
    if not is_delta: continue
    if t0 is None: t0 = time.time(); continue
    wire += w; raw += len(r); n += 1
    if time.time() - t0 > secs: break
el = time.time() - t0
print(json.dumps({"frames": proto, "deltas": n, "per_s": round(n / el, 1), "payload_per_frame": raw // max(n, 1), "wire_per_frame": wire // max(n, 1), "reset_payload": reset and reset[0], "reset_wire": reset and reset[1], "load": open("/proc/loadavg").read().split()[:3]}))
