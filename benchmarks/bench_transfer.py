"""Frame-transfer throughput: lorafx Client/ProtocolServer vs raw pyzmq, TCP loopback.

Moves 49 frames of 832x480 RGBA half (one model-resolution window, 149 MiB) from a client to a
server that discards them, and prints MiB/s for

- raw:    a bare DEALER -> ROUTER, one multipart message [tiny msgpack header, pixels] per frame
          sent with copy=False, the server acknowledging once after the last frame (the floor
          of what ZeroMQ + Python can do here);
- lorafx: Client.put_frames -> ProtocolServer with a sink `shot.put_frames` handler (the full
          protocol: headers, validation, limits, a reply per message, handler thread pool);

and their ratio (goal >= 0.8). As in production the server runs in its own process (one per
variant, started once); the client is this process. Rounds alternate raw/lorafx so machine load
hits both alike; the ratio reported is the median of the per-round ratios (robust on a busy
machine), with the best-of-rounds throughputs beside it, and the CPU seconds each variant
spends per round in the client and the server process (what bounds throughput when the
machine is saturated).

    python benchmarks/bench_transfer.py [--frames 49] [--rounds 21] [--batch-mib 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import time

import msgpack
import numpy as np
import zmq

H, W, C = 480, 832, 4


def make_frames(n: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {1001 + i: rng.random((H, W, C), dtype=np.float32).astype(np.float16)
            for i in range(n)}


# --- servers (child processes) ----------------------------------------------------------------

def _raw_server(conn) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("tcp://127.0.0.1:*")
    conn.send(router.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        parts = router.recv_multipart(copy=False)
        tag = parts[1].bytes
        if tag == b"end":  # all frames of a round received: acknowledge
            router.send_multipart([parts[0], b"ok"])
        elif tag == b"quit":
            break
    router.close(0)
    ctx.term()


def _lorafx_server(conn) -> None:
    from lorafx.protocol import ProtocolServer

    def sink(req):  # touch nothing: the pixels are views over the received frames
        return {"shot": req.body["shot"], "role": req.body["role"],
                "stored": [d["frame"] for d in req.body["frames"]]}

    server = ProtocolServer("tcp://127.0.0.1:*", {"shot.put_frames": sink}).start()
    conn.send(server.endpoint)
    conn.recv()  # until the parent says stop
    server.stop()


# --- clients (this process) -------------------------------------------------------------------

class RawClient:
    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def round(self, frames: dict[int, np.ndarray]) -> float:
        t0 = time.perf_counter()
        for number, arr in frames.items():
            head = msgpack.packb({"frame": number, "shape": list(arr.shape)})
            self.sock.send_multipart([head, arr], copy=False)
        self.sock.send(b"end")
        if not self.sock.poll(60_000):
            raise TimeoutError("raw server did not acknowledge")
        self.sock.recv()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.send(b"quit")
        time.sleep(0.1)
        self.sock.close(0)
        self.ctx.term()


class LorafxClient:
    def __init__(self, endpoint: str, batch_mib: float | None, in_flight: int | None):
        from lorafx.protocol import Client

        tuning = {}
        if batch_mib is not None:
            tuning["batch_bytes"] = int(batch_mib * 2**20)
        if in_flight is not None:
            tuning["max_in_flight"] = in_flight
        self.client = Client(endpoint, timeout_s=60, **tuning)
        self.client.hello()  # connect and learn the limits outside the timed part

    def round(self, frames: dict[int, np.ndarray]) -> float:
        t0 = time.perf_counter()
        stored = self.client.put_frames("bench", "plate", frames)
        dt = time.perf_counter() - t0
        assert sorted(stored) == sorted(frames), "the server did not store every frame"
        return dt

    def close(self) -> None:
        self.client.close()


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads, zmq's I/O threads included
    return r.ru_utime + r.ru_stime


def _proc_cpu_s(pid: int) -> float | None:
    """CPU seconds of another process (Linux /proc; 10 ms ticks: only sums are meaningful)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _timed(client, frames, server_pid, cpu: list) -> float:
    c0, s0 = _own_cpu_s(), _proc_cpu_s(server_pid)
    dt = client.round(frames)
    s1 = _proc_cpu_s(server_pid)
    cpu.append((_own_cpu_s() - c0, None if s0 is None or s1 is None else s1 - s0))
    return dt


def _cpu_ms(cpu: list) -> dict:
    n = len(cpu)
    server = [s for _, s in cpu if s is not None]
    return {"client_cpu_ms": round(sum(c for c, _ in cpu) / n * 1e3, 1),
            "server_cpu_ms": round(sum(server) / len(server) * 1e3, 1) if server else None}


def _start(target):
    ctx = mp.get_context("spawn")  # a fresh interpreter: no zmq state inherited by fork
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child,), daemon=True)
    proc.start()
    if not parent.poll(60):
        raise RuntimeError(f"{target.__name__} did not start")
    return proc, parent, parent.recv()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--batch-mib", type=float, default=None,
                    help="Client.batch_bytes in MiB (default: the Client's, 16 MiB)")
    ap.add_argument("--in-flight", type=int, default=None,
                    help="Client.max_in_flight (default: the Client's, 4)")
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    args = ap.parse_args(argv)

    frames = make_frames(args.frames)
    mib = sum(a.nbytes for a in frames.values()) / 2**20
    raw_proc, raw_conn, raw_ep = _start(_raw_server)
    our_proc, our_conn, our_ep = _start(_lorafx_server)
    raw, ours = RawClient(raw_ep), LorafxClient(our_ep, args.batch_mib, args.in_flight)
    try:
        raw.round(frames), ours.round(frames)  # warm-up: page in, connect, JIT-free caches
        raw_t, our_t, raw_cpu, our_cpu = [], [], [], []
        for _ in range(args.rounds):
            raw_t.append(_timed(raw, frames, raw_proc.pid, raw_cpu))
            our_t.append(_timed(ours, frames, our_proc.pid, our_cpu))
    finally:
        raw.close()
        ours.close()
        our_conn.send("stop")
        for proc in (raw_proc, our_proc):
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
    ratios = [r / o for r, o in zip(raw_t, our_t)]  # throughput ratio lorafx/raw per round
    result = {
        "frames": args.frames, "mib": round(mib, 1), "rounds": args.rounds,
        "batch_mib": args.batch_mib, "in_flight": args.in_flight,
        "raw_best_mib_s": round(mib / min(raw_t), 1),
        "lorafx_best_mib_s": round(mib / min(our_t), 1),
        "raw_median_mib_s": round(mib / statistics.median(raw_t), 1),
        "lorafx_median_mib_s": round(mib / statistics.median(our_t), 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_best": round(min(raw_t) / min(our_t), 3),
        "raw_cpu": _cpu_ms(raw_cpu), "lorafx_cpu": _cpu_ms(our_cpu),
    }
    rc, oc = result["raw_cpu"], result["lorafx_cpu"]
    if rc["server_cpu_ms"] and oc["server_cpu_ms"]:
        # Load-independent view: on a saturated machine throughput follows CPU per round.
        result["cpu_ratio"] = round((rc["client_cpu_ms"] + rc["server_cpu_ms"])
                                    / (oc["client_cpu_ms"] + oc["server_cpu_ms"]), 3)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.frames} frames {W}x{H} RGBA f16 = {mib:.1f} MiB over TCP loopback, "
              f"server in its own process, {args.rounds} alternating rounds")
        print(f"  raw pyzmq (per-frame multipart, copy=False): best {result['raw_best_mib_s']:7.1f}"
              f" MiB/s, median {result['raw_median_mib_s']:7.1f} MiB/s")
        print(f"  lorafx Client.put_frames -> ProtocolServer:  best "
              f"{result['lorafx_best_mib_s']:7.1f} MiB/s, median "
              f"{result['lorafx_median_mib_s']:7.1f} MiB/s")
        print(f"  ratio lorafx/raw: median of rounds {result['ratio_median']:.3f}, best vs best "
              f"{result['ratio_best']:.3f} (goal >= 0.8)")
        print(f"  CPU per round (client + server process): raw {rc['client_cpu_ms']} + "
              f"{rc['server_cpu_ms']} ms, lorafx {oc['client_cpu_ms']} + {oc['server_cpu_ms']} ms"
              + (f" -> CPU ratio {result['cpu_ratio']:.3f}" if "cpu_ratio" in result else ""))
    return result


if __name__ == "__main__":
    main()
