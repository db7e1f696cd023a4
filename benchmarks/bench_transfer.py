"""Frame-transfer throughput: lorafx Client/ProtocolServer vs raw pyzmq, TCP loopback.

Moves 49 frames of 832x480 RGBA half (the model-resolution window, 149 MiB) from a client to a
server that discards them, and prints MiB/s for

- raw:    a bare DEALER -> ROUTER, one multipart message [tiny header, pixels] per frame sent
          with copy=False, the server acknowledging once after the last frame (the floor of
          what ZeroMQ + Python can do here);
- lorafx: Client.put_frames -> ProtocolServer with a sink `shot.put_frames` handler (full
          protocol: msgpack headers, validation, limits, per-message replies, thread pool);

and their ratio (goal >= 0.8). Both run in this process, interleaved, best of --repeats.

    python benchmarks/bench_transfer.py [--frames 49] [--repeats 7] [--batch-mib 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import msgpack
import numpy as np
import zmq

from lorafx.protocol import Client, ProtocolServer

H, W, C = 480, 832, 4


def make_frames(n: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {1001 + i: rng.random((H, W, C), dtype=np.float32).astype(np.float16)
            for i in range(n)}


def bench_raw(frames: dict[int, np.ndarray]) -> float:
    """Seconds to push all frames through a bare DEALER/ROUTER pair and get one ack."""
    ctx_s, ctx_c = zmq.Context(), zmq.Context()
    router = ctx_s.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    n = len(frames)

    def sink():
        for _ in range(n):
            parts = router.recv_multipart(copy=False)
        router.send_multipart([parts[0], b"ok"])

    dealer = ctx_c.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(endpoint)
    # Warm the connection so both measurements start connected.
    dealer.send(b"warm")
    router.recv_multipart()
    t = threading.Thread(target=sink)
    t.start()
    t0 = time.perf_counter()
    for number, arr in frames.items():
        head = msgpack.packb({"frame": number, "shape": list(arr.shape)})
        dealer.send_multipart([head, arr], copy=False)
    dealer.recv()
    dt = time.perf_counter() - t0
    t.join()
    dealer.close(0)
    router.close(0)
    ctx_c.term()
    ctx_s.term()
    return dt


def bench_lorafx(frames: dict[int, np.ndarray], batch_mib: float | None,
                 in_flight: int | None) -> float:
    received = []

    def sink(req):
        received.append(len(req.arrays))  # touch nothing: the pixels are views, discarded
        return {"shot": req.body["shot"], "role": req.body["role"],
                "stored": [d["frame"] for d in req.body["frames"]]}

    server = ProtocolServer("tcp://127.0.0.1:*", {"shot.put_frames": sink}).start()
    try:
        tuning = {}
        if batch_mib is not None:
            tuning["batch_bytes"] = int(batch_mib * 2**20)
        if in_flight is not None:
            tuning["max_in_flight"] = in_flight
        with Client(server.endpoint, timeout_s=30, **tuning) as client:
            client.hello()  # connect + learn limits outside the timed part, as raw warms up
            t0 = time.perf_counter()
            stored = client.put_frames("bench", "plate", frames)
            dt = time.perf_counter() - t0
        assert sorted(stored) == sorted(frames), "server did not store every frame"
        assert sum(received) == len(frames)
        return dt
    finally:
        server.stop()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-mib", type=float, default=None,
                    help="Client.batch_bytes in MiB (default: the Client's, 4 MiB)")
    ap.add_argument("--in-flight", type=int, default=None,
                    help="Client.max_in_flight (default: the Client's, 16)")
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    args = ap.parse_args(argv)

    frames = make_frames(args.frames)
    mib = sum(a.nbytes for a in frames.values()) / 2**20
    raw, ours = [], []
    for _ in range(args.repeats):  # interleaved so machine load hits both alike
        raw.append(bench_raw(frames))
        ours.append(bench_lorafx(frames, args.batch_mib, args.in_flight))
    raw_mibs, our_mibs = mib / min(raw), mib / min(ours)
    result = {
        "frames": args.frames, "mib": round(mib, 1), "repeats": args.repeats,
        "batch_mib": args.batch_mib, "in_flight": args.in_flight,
        "raw_mib_s": round(raw_mibs, 1), "lorafx_mib_s": round(our_mibs, 1),
        "raw_median_mib_s": round(mib / statistics.median(raw), 1),
        "lorafx_median_mib_s": round(mib / statistics.median(ours), 1),
        "ratio": round(our_mibs / raw_mibs, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.frames} frames {H}x{W}x{C} f16 = {mib:.1f} MiB over TCP loopback, "
              f"best of {args.repeats}")
        print(f"  raw pyzmq (per-frame multipart, copy=False): {raw_mibs:8.1f} MiB/s "
              f"(median {result['raw_median_mib_s']})")
        print(f"  lorafx Client.put_frames -> ProtocolServer:   {our_mibs:8.1f} MiB/s "
              f"(median {result['lorafx_median_mib_s']})")
        print(f"  ratio lorafx/raw: {result['ratio']:.3f} (goal >= 0.8)")
    return result


if __name__ == "__main__":
    main()
