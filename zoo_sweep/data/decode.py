"""One image file -> the cache's uint8 square (3 x S x S): the short side resized to S (bicubic, antialiased),
then centre-cropped. Runs in decode worker processes, so it imports only what a decode needs.

Two decoders, measured against each other by bench/data_path.py (BENCHMARKS.md):

- ``torchvision``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo) and torch's vectorised uint8 antialiased
  bicubic resize (within one level of Pillow's). On 500 x 375 photos at S = 256 about 1.8-2x faster than
  Pillow's decode + resize, and still faster at S = 128.
- ``pil``: Pillow with ``draft()``, which lets libjpeg decode in the DCT domain at 1/2, 1/4 or 1/8 scale (never
  below S), then Pillow's resize of the crop box only. Faster once it decodes at 1/4 scale or less.

``auto`` picks per file by that fixed rule (JPEGs at least 4 x S on their short side go through ``pil``, the
others through ``torchvision``), never by timing, so a set's pixels never depend on the machine that decoded
it. Non-JPEG files (PNG, BMP, ...) always go through Pillow.
"""

from __future__ import annotations

import os
import select
import stat
import threading
import time

import numpy as np

JPEG_MAGIC = b"\xff\xd8"


def geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(resized w, resized h, left, top): the short side scaled to ``size``, the crop centred."""
    s = size / min(w, h)
    rw, rh = max(size, round(w * s)), max(size, round(h * s))
    return rw, rh, (rw - size) // 2, (rh - size) // 2


def decode_pil(data: bytes, size: int) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        # JPEG only: DCT-domain downscaling, never below size on either side; ``box`` is where the whole image
        # lies in the smaller one (libjpeg rounds partial blocks up, so the scale is not exactly 1/2, 1/4, 1/8)
        drafted = im.draft("RGB", (size, size))
        bw, bh = drafted[1][2:] if drafted and drafted[1] else (w, h)
        im = im.convert("RGB")
    rw, rh, left, top = geometry(w, h, size)
    sx, sy = bw / rw, bh / rh
    # the crop box, in the decoded image's coordinates: only the pixels kept are resampled
    out = im.resize((size, size), Image.BICUBIC, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def decode_torchvision(data: bytes, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    h, w = x.shape[-2:]
    rw, rh, left, top = geometry(w, h, size)
    if (rw, rh) != (w, h):
        x = F.interpolate(x[None], size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)[0]
    return x[:, top:top + size, left:left + size].numpy()


def decode_auto(data: bytes, size: int) -> np.ndarray:
    dims = jpeg_size(data) if data.startswith(JPEG_MAGIC) else None
    if dims is None or min(dims) >= 4 * size:  # not a JPEG, or one draft() decodes at 1/4 scale or less
        return decode_pil(data, size)
    try:
        return decode_torchvision(data, size)
    except RuntimeError:  # a JPEG libjpeg-turbo refuses through torchvision (rare colour spaces): Pillow decides
        return decode_pil(data, size)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None; a tenth of what opening it with Pillow costs."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


DECODERS = {"auto": decode_auto, "pil": decode_pil, "torchvision": decode_torchvision}


def decode_file(path: str, size: int, decoder: str = "auto") -> np.ndarray | None:
    """The file's 3 x size x size uint8 square, or None when it cannot be read as an image."""
    try:
        data = read_regular(path)
        return None if data is None else DECODERS[decoder](data, size)
    except Exception:  # a corrupt file costs one sample, not the set
        return None


def read_regular(path: str) -> bytes | None:
    """The bytes of a regular file (or of one a link points to); None for anything else named like an image: a
    named pipe would block the read until something writes to it, for ever, and a socket or a device is no
    image. It then costs one sample, counted and named with the unreadable files."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # checked before opening: opening a device may do something
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # cannot block, even if the name became a pipe since
    with os.fdopen(fd, "rb") as f:
        return f.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None


def init_worker(client: int) -> None:
    """Decode workers run one image at a time each (torch's own threads would only oversubscribe the cores), and
    end when the process that asked for them (``client``) ends: a pool's workers hold both ends of its task
    pipe, and the fork server they come from lives as long as they do, so nothing else would stop them after a
    killed decode."""
    threading.Thread(target=_exit_with, args=(client,), daemon=True).start()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _exit_with(pid: int) -> None:
    """Ends this process once process ``pid`` has ended."""
    try:
        fd = os.pidfd_open(pid)  # readable once that process has ended (Linux 5.3+)
    except (AttributeError, OSError):
        while _alive(pid):
            time.sleep(1.0)
    else:
        select.select([fd], [], [])
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
