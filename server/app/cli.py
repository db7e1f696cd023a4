"""`lorafx` command line: the server, the client commands a TD scripts with, and the demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lorafx.errors import LorafxError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="lorafx: carry a one-frame edit through a whole shot (LoRA-Edit on Wan2.1-I2V).")
console = Console(stderr=True)
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def _client(endpoint: str, timeout: float = 30.0):
    """A protocol client; CURVE keys from LORAFX_CURVE_SECRET / LORAFX_SERVER_KEY when set."""
    from lorafx.protocol.client import Client

    curve = None
    secret, server_key = os.environ.get("LORAFX_CURVE_SECRET"), os.environ.get("LORAFX_SERVER_KEY")
    if secret or server_key:  # CURVE when the environment names the keys (PROTOCOL.md §9)
        from lorafx.protocol.keys import ClientCurveConfig

        curve = ClientCurveConfig(secret, server_key)
    return Client(endpoint, timeout_s=timeout, curve=curve, name="lorafx-cli")


def _fail(err: Exception) -> None:
    code = getattr(err, "code", "error")
    console.print(f"[bold red]lorafx: {code}:[/] {err}")
    raise typer.Exit(2)


def _train_request(steps: int | None, **settings) -> dict:
    """job.train settings: `steps` only when given (else the model's recommendation applies)."""
    return {**({} if steps is None else {"steps": steps}), **settings}


def wait_with_progress(client, job: str, title: str) -> dict:
    """Follow a job's progress events with a progress bar; returns its final record."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(title, total=None, info="queued")

        def on_event(ev: dict):
            if ev.get("event") == "progress" and ev.get("total"):
                loss = ev.get("loss")
                info = f"{ev.get('stage', '')}" + (f" loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
                bar.update(task, total=ev["total"], completed=ev.get("step", 0), info=info,
                           description=f"{title} ({ev.get('stage', '')})")
            elif ev.get("event") == "job_state":
                bar.update(task, info=ev.get("state", ""))

        return client.wait(job, on_progress=on_event)


# ----------------------------------------------------------------------------- server


@app.command()
def serve(
    state: Path = typer.Option(Path("lorafx-state"), help="server state: jobs database, shots, LoRAs, results"),
    endpoint: str = typer.Option(DEFAULT_ENDPOINT, help="ZeroMQ endpoint to bind (tcp://127.0.0.1:0 picks a port)"),
    model: str = typer.Option("auto", help="auto | mini | tiny | path to a Wan2.1-I2V-14B-480P-Diffusers directory"),
    device: Optional[str] = typer.Option(None, help="cuda, cuda:1, cpu (default: cuda when present)"),
    fp8: bool = typer.Option(False, help="store frozen transformer weights in fp8 (App. C)"),
    group_offload: bool = typer.Option(False, "--group-offload", help="keep frozen blocks off the GPU until needed"),
    curve_secret: Optional[Path] = typer.Option(None, help="CURVE: the server's secret certificate (zmq.auth format)"),
    curve_clients: Optional[Path] = typer.Option(None, help="CURVE: directory of allowed clients' public certificates"),
    allow_insecure: bool = typer.Option(False, help="allow a non-loopback bind without CURVE keys"),
    endpoint_file: Optional[Path] = typer.Option(None, help="write the bound endpoint here once serving"),
    metrics_port: Optional[int] = typer.Option(None, help="serve Prometheus metrics over HTTP on this port"),
    sam2_checkpoint: Optional[Path] = typer.Option(None, help="SAM2 checkpoint (.pt) for click-to-matte jobs"),
    log_level: str = typer.Option("INFO"),
):
    """Run the lorafx server: one resident model, a durable job queue, per-shot LoRAs."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lorafx.server.app.models import open_model
    from lorafx.server.app.service import LorafxService

    curve = None
    try:
        if curve_secret or curve_clients:
            from lorafx.protocol.keys import CurveConfig

            curve = CurveConfig(curve_secret, curve_clients)
        stack, info = open_model(model, device=device, fp8=fp8, group_offload=group_offload)
        service = LorafxService(stack, info, state, endpoint=endpoint, curve=curve,
                                allow_insecure=allow_insecure,
                                sam2_checkpoint=str(sam2_checkpoint) if sam2_checkpoint else None).start()
    except LorafxError as e:
        _fail(e)
    if metrics_port:
        from lorafx.server.jobs import start_metrics_http

        start_metrics_http(metrics_port, addr="127.0.0.1")
    if endpoint_file:
        tmp = endpoint_file.with_suffix(".tmp")
        tmp.write_text(service.endpoint)
        os.replace(tmp, endpoint_file)
    console.print(f"lorafx serving [bold]{info.name}[/] on {service.endpoint} (state {state})")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    console.print("lorafx: stopping (running jobs resume on the next start)")
    service.stop()


# ----------------------------------------------------------------------------- client commands


@app.command()
def submit(
    shot: str = typer.Option(..., help="shot name"),
    plate: str = typer.Option(..., help="plate pattern, e.g. /shows/x/plate.####.exr"),
    matte: str = typer.Option(..., help="roto matte pattern (1 = region to change)"),
    edited: Path = typer.Option(..., help="the edited first frame (same resolution and colour space as the plate)"),
    first: int = typer.Option(...), last: int = typer.Option(...),
    painted: list[str] = typer.Option([], help="FRAME=PATH painted later frames for the appearance stage"),
    steps: Optional[int] = typer.Option(None, help="motion-stage training steps (default: the model's "
                                                   "recommendation, else 100)"),
    render_steps: int = typer.Option(30), cfg: float = typer.Option(5.0), seed: int = typer.Option(0),
    caption: str = typer.Option("", help="caption of the edited frame"),
    settings: str = typer.Option("{}", help="extra shot settings as JSON"),
    endpoint: str = typer.Option(DEFAULT_ENDPOINT),
    wait: bool = typer.Option(True, help="follow both jobs; --no-wait prints their ids and returns (farm use)"),
):
    """Create a shot from sequences on shared storage, train its LoRA and render it. Both jobs are
    queued at once (the render waits on the server for the training), so a bad render setting
    fails now, not after the training."""
    try:
        with _client(endpoint) as c:
            extra = json.loads(settings)
            c.create_shot(shot, first, last, plate=plate, matte=matte, replace=True,
                          settings={"caption": caption, **extra})
            refs = {first: str(edited)}
            for item in painted:
                f, p = item.split("=", 1)
                refs[int(f)] = p
            c.put_frames(shot, "reference", refs)
            train_job = c.train(shot, _train_request(steps))
            try:
                render_job = c.render(shot, seed=seed, steps=render_steps, cfg=cfg)
            except LorafxError:
                c.cancel(train_job)  # the render was refused: do not leave its training running
                raise
            if not wait:
                print(f"train {train_job} render {render_job}")
                return
            rec = wait_with_progress(c, train_job, f"train {shot}")
            console.print(f"trained LoRA {rec['result'].get('lora')} ({rec['result'].get('key')})")
            rec = wait_with_progress(c, render_job, f"render {shot}")
            console.print(f"rendered {rec['result']['frames']} frames: {rec['result']['pattern']}")
            print(rec["result"]["pattern"])
    except LorafxError as e:
        _fail(e)


@app.command()
def train(shot: str, steps: Optional[int] = typer.Option(None, help="default: the model's recommendation, else 100"),
          settings: str = typer.Option("{}"),
          endpoint: str = typer.Option(DEFAULT_ENDPOINT), wait: bool = typer.Option(True)):
    """Train (or reuse the cached) LoRA of an existing shot."""
    try:
        with _client(endpoint) as c:
            job = c.train(shot, _train_request(steps, **json.loads(settings)))
            print(job)
            if wait:
                wait_with_progress(c, job, f"train {shot}")
    except LorafxError as e:
        _fail(e)


@app.command()
def render(shot: str, edited: Optional[Path] = typer.Option(None, help="edited first frame (else the uploaded one)"),
           steps: int = typer.Option(30), cfg: float = typer.Option(5.0), seed: int = typer.Option(0),
           endpoint: str = typer.Option(DEFAULT_ENDPOINT), wait: bool = typer.Option(True)):
    """Render a trained shot from its edited first frame."""
    try:
        with _client(endpoint) as c:
            rec = c.get_shot(shot)
            job = c.render(shot, seed=seed, steps=steps, cfg=cfg,
                           edited={rec["first"]: str(edited)} if edited else None)
            print(job)
            if wait:
                out = wait_with_progress(c, job, f"render {shot}")
                print(out["result"]["pattern"])
    except LorafxError as e:
        _fail(e)


@app.command()
def mask(shot: str, frame: int, point: list[str] = typer.Option(..., help="x,y positive click (plate pixels)"),
         negative: list[str] = typer.Option([], help="x,y negative click"), mode: str = typer.Option("bbox"),
         endpoint: str = typer.Option(DEFAULT_ENDPOINT)):
    """Derive the shot's mattes from clicks with SAM2 video propagation."""
    try:
        with _client(endpoint) as c:
            pos = [[float(v) for v in p.split(",")] for p in point]
            neg = [[float(v) for v in p.split(",")] for p in negative]
            job = c.mask(shot, frame, pos, neg, mode=mode)
            wait_with_progress(c, job, f"mask {shot}")
    except LorafxError as e:
        _fail(e)


@app.command()
def status(job: Optional[str] = typer.Argument(None), endpoint: str = typer.Option(DEFAULT_ENDPOINT)):
    """One job's record, or the server's health and recent jobs."""
    try:
        with _client(endpoint, timeout=10) as c:
            if job:
                print(json.dumps(c.status(job), indent=2, default=str))
            else:
                print(json.dumps({"health": c.health(), "jobs": c.list_jobs(limit=20)}, indent=2, default=str))
    except LorafxError as e:
        _fail(e)


@app.command()
def cancel(job: str, endpoint: str = typer.Option(DEFAULT_ENDPOINT)):
    """Cancel a queued or running job (a running one stops within one step)."""
    try:
        with _client(endpoint, timeout=10) as c:
            print(json.dumps(c.cancel(job), indent=2, default=str))
    except LorafxError as e:
        _fail(e)


# ----------------------------------------------------------------------------- demo


def start_server_process(state: Path, model: str = "auto", extra: list[str] | None = None,
                         timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start `lorafx serve` on a free loopback port; returns (process, endpoint)."""
    state.mkdir(parents=True, exist_ok=True)
    endpoint_file = state / "endpoint"
    endpoint_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "lorafx.server.app.cli", "serve", "--state", str(state), "--endpoint",
           "tcp://127.0.0.1:0", "--model", model, "--endpoint-file", str(endpoint_file), *(extra or [])]
    log = open(state / "server.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + timeout
    while not endpoint_file.is_file():
        if proc.poll() is not None:
            raise RuntimeError(f"lorafx serve exited with {proc.returncode}; see {state / 'server.log'}")
        if time.monotonic() > end:
            proc.kill()
            raise RuntimeError(f"lorafx serve did not start within {timeout:.0f}s; see {state / 'server.log'}")
        time.sleep(0.1)
    return proc, endpoint_file.read_text().strip()


@app.command()
def demo(
    out: Path = typer.Option(Path("lorafx-demo"), help="where the shot, the state and the results go"),
    images: Optional[Path] = typer.Option(None, help="a folder of images to use as the plate (e.g. ../shared/data/bedroom)"),
    plate: Optional[str] = typer.Option(None, help="plate pattern (with --matte and --edited)"),
    matte: Optional[str] = typer.Option(None), edited: Optional[Path] = typer.Option(None),
    first: int = typer.Option(1001), last: Optional[int] = typer.Option(None),
    frames: int = typer.Option(17, help="frames of the generated / image-folder shot (4k+1)"),
    model: str = typer.Option("auto", help="auto | mini | tiny | Wan directory"),
    steps: Optional[int] = typer.Option(None, help="training steps (default: the model's, else 100)"),
    render_steps: int = typer.Option(20), cfg: float = typer.Option(1.0),
    seed: int = typer.Option(0),
):
    """The whole path on loopback: make (or take) a plate + matte + edited frame, start a server,
    train, render, write the EXR sequence and a contact sheet, print where they are."""
    from lorafx.server.app import demo as demos

    out = out.resolve()
    settings = {}
    if plate or matte or edited:
        if not (plate and matte and edited and last):
            _fail(typer.BadParameter("--plate, --matte, --edited and --last go together"))
        shot = demos.DemoShot(name="shot", first=first, last=last, plate=plate, matte=matte,
                              edited_first=str(edited), caption="", display=[])
    elif images:
        shot = demos.image_sequence_shot(images, out / "input", frames=frames)
    else:
        shot = demos.miniworld_shot(out / "input", frames=frames)
        settings["roi_mode"] = "full"  # the miniature world is framed for the whole 64x64 frame
    settings["caption"] = shot.caption
    console.print(f"shot [bold]{shot.name}[/] {shot.first}-{shot.last}: plate {shot.plate}")
    proc, endpoint = start_server_process(out / "state", model)
    try:
        with _client(endpoint, timeout=60) as c:
            info = c.hello()
            console.print(f"server {endpoint}: model {info.get('model')} on {info.get('device')}")
            c.create_shot(shot.name, shot.first, shot.last, plate=shot.plate, matte=shot.matte, replace=True,
                          settings=settings)
            c.put_frames(shot.name, "reference", {shot.first: shot.edited_first})
            t0 = time.monotonic()
            wait_with_progress(c, c.train(shot.name, _train_request(steps, seed=seed)), "train")
            rec = wait_with_progress(c, c.render(shot.name, seed=seed, steps=render_steps, cfg=cfg), "render")
            pattern = rec["result"]["pattern"]
            sheet = out / "contact_sheet.png"
            _contact_sheet(shot, pattern, sheet)
            console.print(f"done in {time.monotonic() - t0:.0f}s")
            console.print(f"EXR sequence: {pattern} ({shot.first}-{shot.last})")
            console.print(f"contact sheet: {sheet}")
            print(pattern)
    except LorafxError as e:
        _fail(e)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _contact_sheet(shot, pattern: str, path: Path) -> None:
    """Rows: a few frames; columns: source / edited first frame / result (display-referred)."""
    import numpy as np

    from lorafx.server.media.colour import ColourSettings, ColourTransform
    from lorafx.server.media.io import read_frame, sequence_path
    from lorafx.server.media.plate import make_contact_sheet

    to_display = ColourTransform(ColourSettings())

    def disp(p):
        fr = read_frame(p)
        return to_display.to_model(fr.pixels[..., list(fr.rgb_indices())])[0]

    n = shot.last - shot.first + 1
    picks = sorted({0, n // 2, n - 1})
    edited = disp(shot.edited_first)
    rows = []
    for k in picks:
        f = shot.first + k
        src = disp(sequence_path(shot.plate, f))
        res = disp(sequence_path(pattern, f))
        middle = edited if k == 0 else (shot.ground_truth[k] if shot.ground_truth is not None
                                        else np.zeros_like(edited))
        rows.append([src, middle, res])
    truth = "ground truth" if shot.ground_truth is not None else ""
    labels = [[f"source {shot.first + k}", "edited first frame" if k == 0 else truth, f"result {shot.first + k}"]
              for k in picks]
    make_contact_sheet(rows, labels, path)


def main():
    app()


if __name__ == "__main__":
    main()
