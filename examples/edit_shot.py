"""A pipeline TD's script: send a shot to a running `lorafx serve`, train, render, fetch the EXRs.

    lorafx serve --state /tmp/lorafx-state &          # or --model /models/Wan2.1-I2V-14B-480P-Diffusers
    python examples/edit_shot.py --images ../shared/data/bedroom --frames 17

It builds a scene-linear EXR plate + roto + edited first frame from an image folder (the bedroom
footage beside the checkout, or any image sequence), uploads the frames inline (a remote GPU box
with no shared storage), follows progress, and writes the returned frames next to the input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorafx.protocol.client import Client
from lorafx.server.app.demo import image_sequence_shot
from lorafx.server.media.io import read_frame, sequence_path, write_exr_atomic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--out", type=Path, default=Path("lorafx-example"))
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the model's recommendation)")
    p.add_argument("--render-steps", type=int, default=20)
    args = p.parse_args()

    shot = image_sequence_shot(args.images, args.out / "input", frames=args.frames)
    frames = range(shot.first, shot.last + 1)

    def load(pattern):
        return {f: read_frame(sequence_path(pattern, f)).pixels for f in frames}

    with Client(args.endpoint, timeout_s=60) as c:
        print("server:", c.hello()["model"])
        c.create_shot(shot.name, shot.first, shot.last, replace=True, settings={"caption": shot.caption})
        c.put_frames(shot.name, "plate", load(shot.plate))
        c.put_frames(shot.name, "matte", load(shot.matte))
        c.put_frames(shot.name, "reference", {shot.first: read_frame(shot.edited_first).pixels})

        def show(ev):
            if ev.get("event") == "progress" and ev.get("total"):
                print(f"\r{ev['stage']:>10} {ev['step']}/{ev['total']}", end="", flush=True)

        c.wait(c.train(shot.name, {} if args.steps is None else {"steps": args.steps}), on_progress=show)
        c.wait(c.render(shot.name, steps=args.render_steps), on_progress=show)
        print()
        out = args.out / "result"
        for f, pixels in c.fetch_results(shot.name).items():
            write_exr_atomic(sequence_path(str(out / "result.####.exr"), f), pixels, ["R", "G", "B", "A"][: pixels.shape[-1]])
        print("wrote", out / "result.####.exr")


if __name__ == "__main__":
    main()
