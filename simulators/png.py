"""Cheap, deterministic PNG pictures for the Stable Diffusion simulator (a test double).

The picture is a grid of flat coloured blocks whose colours come from a hash of the prompt,
so the same prompt always gives the same bytes. It is an 8-bit palette PNG: the pixel data
(block indices) depends only on the size and is compressed once per size, and each picture
only gets its own palette. Encoded with zlib and struct, so the simulator needs no Pillow
and costs almost no CPU next to the client it serves; `read_png_header` checks the result.
"""
from __future__ import annotations

import functools
import hashlib
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = 4
BANDS = 3


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@functools.lru_cache(maxsize=16)
def _pixels(width: int, height: int) -> bytes:
    """Return the IDAT chunk of a size: BANDS rows of COLUMNS blocks, palette index per block."""
    edges = [width * i // COLUMNS for i in range(COLUMNS + 1)]
    rows = []
    for band in range(BANDS):
        # Filter byte 0, then the band's palette indices; every row of a band is the same.
        line = b"\x00" + b"".join(
            bytes([band * COLUMNS + col]) * (edges[col + 1] - edges[col]) for col in range(COLUMNS)
        )
        rows.append(line * (height * (band + 1) // BANDS - height * band // BANDS))
    return _chunk(b"IDAT", zlib.compress(b"".join(rows), 6))


def render_png(width: int, height: int, seed_text: str) -> bytes:
    """Return a valid PNG of `width` x `height` whose colours come from a hash of `seed_text`."""
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    palette = hashlib.sha512(seed_text.encode("utf-8")).digest()[:COLUMNS * BANDS * 3]
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"PLTE", palette)
            + _pixels(width, height) + _chunk(b"IEND", b""))


def read_png_header(data: bytes) -> tuple[int, int]:
    """Return (width, height) of a PNG after checking its signature, chunk CRCs and pixel data."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG: bad signature")
    pos, chunks, idat = len(SIGNATURE), [], b""
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("truncated chunk header")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body, crc = data[pos + 8:pos + 8 + length], data[pos + 8 + length:pos + 12 + length]
        if len(crc) != 4 or struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF) != crc:
            raise ValueError(f"bad CRC in {kind!r} chunk")
        chunks.append(kind)
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    if not chunks or chunks[0] != b"IHDR" or chunks[-1] != b"IEND":
        raise ValueError("chunks must start with IHDR and end with IEND")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    bytes_per_pixel = {(8, 2): 3, (8, 3): 1}.get((depth, colour))
    if bytes_per_pixel is None or (colour == 3 and b"PLTE" not in chunks):
        raise ValueError("only 8-bit RGB or palette pictures are expected")
    if len(zlib.decompress(idat)) != height * (1 + bytes_per_pixel * width):
        raise ValueError("pixel data does not match IHDR size")
    return width, height
