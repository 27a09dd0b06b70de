"""Peak memory and time of N simultaneous worst-case uploads, in one process, like the server.

    .venv/bin/python bench/bench_upload_memory.py [--threads 1 6 12] [--kinds png16-6300 ...]
    .venv/bin/python bench/bench_upload_memory.py --module-file /tmp/old_preprocess.py   # compare a version

Each upload does what the home page does with a file: ``preprocess(load_image(data))``, an
ImageError counting as handled (refused). N uploads of the same file start together, one
thread each (Streamlit runs every session's script in its own thread of one process).

Kinds (all small files that decode large):

- ``png16-6300``: a 16-bit greyscale PNG of 6300 x 6300 pixels (about 77 KB): the attack in
  issue 12 (more pixels than the limit: refused from its header);
- ``png16-4000``, ``rgba-4000``: 16-bit greyscale and RGBA PNGs of 4000 x 4000, a digit on a
  flat background: the largest pictures the limit accepts (16,000,000 pixels), decoded in full;
- ``jpeg-8000``: an 8000 x 6000 JPEG (48 megapixels, a big phone camera's full resolution),
  decoded at a reduced scale (draft);
- ``jpeg-4032``: a 4032 x 3024 JPEG, a usual 12 MP phone photo.

Every (kind, N) runs in a fresh Python process, so each peak is its own. Figures: the
process's peak resident memory during the uploads above what it held just before (Linux
VmHWM, reset through /proc/self/clear_refs; sampled every millisecond where that reset is
not allowed), what it still holds after them, and the wall time until the last upload
finished. ``--module-file`` loads another version of cnn_core/preprocess.py instead (e.g.
``git show HEAD:cnn_core/preprocess.py > /tmp/old.py``), to measure before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("png16-6300", "png16-4000", "rgba-4000", "jpeg-8000", "jpeg-4032")


# --------------------------------------------------------------------------- the files


def _png_grey16(side: int) -> bytes:
    """A 16-bit greyscale PNG, all black but a white bar, written row by row (never held decoded)."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    black = b"\x00" * (1 + 2 * side)  # filter byte + 16-bit pixels
    bar = b"\x00" + (b"\x00\x00" * (side // 2 - side // 40) + b"\xff\xff" * (side // 20)).ljust(2 * side, b"\x00")
    parts = [z.compress(bar if side // 4 <= y < 3 * side // 4 else black) for y in range(side)]
    idat = b"".join(parts) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _digit_picture(width: int, height: int, mode: str):
    """A large, flat picture with a 7 drawn on it (compresses to a small file)."""
    from PIL import Image, ImageDraw

    ink, paper = {"RGBA": ((20, 20, 20, 255), (235, 235, 230, 255)), "RGB": ((20, 20, 20), (235, 235, 230))}[mode]
    img = Image.new(mode, (width, height), paper)
    k = min(width, height) / 280
    pts = [(width / 2 - 70 * k, height / 2 - 80 * k), (width / 2 + 70 * k, height / 2 - 80 * k),
           (width / 2 - 20 * k, height / 2 + 90 * k)]
    ImageDraw.Draw(img).line(pts, fill=ink, width=round(20 * k), joint="curve")
    return img


def make_file(kind: str) -> bytes:
    """The upload's bytes for one kind (see the module's docstring)."""
    buf = io.BytesIO()
    if kind == "png16-6300":
        return _png_grey16(6300)
    if kind == "png16-4000":
        return _png_grey16(4000)
    if kind == "rgba-4000":
        _digit_picture(4000, 4000, "RGBA").save(buf, "PNG", compress_level=9)
    elif kind == "jpeg-8000":
        _digit_picture(8000, 6000, "RGB").save(buf, "JPEG", quality=90)
    elif kind == "jpeg-4032":
        _digit_picture(4032, 3024, "RGB").save(buf, "JPEG", quality=90)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    return buf.getvalue()


# --------------------------------------------------------------------------- one measurement (child process)


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM) to the current one
        return True
    except OSError:
        return False


def measure(path: str, threads: int, module_file: str | None) -> dict:
    """Run ``threads`` uploads of the file at ``path`` at once in this process; return the figures."""
    if module_file:
        spec = importlib.util.spec_from_file_location("cnn_core._compared_preprocess", module_file)
        assert spec is not None and spec.loader is not None
        pre = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = pre
        spec.loader.exec_module(pre)
    else:
        from cnn_core import preprocess as pre
    import torch

    torch.set_num_threads(1)
    data = Path(path).read_bytes()
    # Warm up on a small picture so that first-call costs are not counted as the upload's.
    small = io.BytesIO()
    _digit_picture(280, 280, "RGB").save(small, "PNG")
    pre.preprocess(pre.load_image(small.getvalue()))

    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)

    def upload() -> None:
        start.wait()
        try:
            result = pre.preprocess(pre.load_image(data))
            outcome = "blank" if result.blank else "digit"
        except pre.ImageError as e:
            outcome = f"refused: {e}"
        except MemoryError:
            outcome = "MemoryError"
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=upload) for _ in range(threads)]
    for t in workers:
        t.start()
    before = _rss_kb()
    exact = _reset_hwm()
    sampled = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sampled.append(_rss_kb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    start.wait()
    for t in workers:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    peak = _hwm_kb() if exact else max(sampled)
    return {
        "peak_mib": (peak - before) / 1024,
        "after_mib": (_rss_kb() - before) / 1024,
        "wall_s": wall,
        "exact_peak": exact,
        "outcomes": sorted(set(outcomes)),
    }


# --------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 6, 12], help="simultaneous uploads")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--module-file", help="another version of cnn_core/preprocess.py to measure instead")
    parser.add_argument("--child", nargs=2, metavar=("FILE", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.module_file)))
        return

    what = args.module_file or "cnn_core/preprocess.py"
    print(f"{what}: peak = resident memory above the process's own before the uploads started")
    print(f"{'kind':12s} {'file':>9s} {'uploads':>7s} {'peak MiB':>9s} {'after MiB':>9s} {'wall s':>7s}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            data = make_file(kind)
            path = Path(tmp) / kind
            path.write_bytes(data)
            for n in args.threads:
                command = [sys.executable, __file__, "--child", str(path), str(n)]
                if args.module_file:
                    command += ["--module-file", args.module_file]
                done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
                if done.returncode != 0:
                    tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
                    print(f"{kind:12s} {len(data) / 1000:7.0f}KB {n:7d}  failed (exit {done.returncode}): {tail[0]}")
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                mark = "" if r["exact_peak"] else "~"
                outcome = "; ".join(o[:70] for o in r["outcomes"])
                print(f"{kind:12s} {len(data) / 1000:7.0f}KB {n:7d} {mark}{r['peak_mib']:8.0f} "
                      f"{r['after_mib']:9.0f} {r['wall_s']:7.2f}  {outcome}", flush=True)


if __name__ == "__main__":
    main()
