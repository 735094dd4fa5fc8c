"""The content-addressed image store, over the real wire connection."""
from __future__ import annotations

import base64
import hashlib
import threading
from urllib.parse import urlsplit

import gridfs
import pytest
from pymongo import MongoClient

from core import embedded_store
from core.embedded_store import GRIDFS_CHUNK_SIZE
from core.image_store import (
    Image, ImageDecodeError, create_indexes, decode_image, get_image, put_image,
)
from tests.helpers import PNG_1PX
from tests.tcp_gate import TcpGate

JPEG_HEAD = b"\xff\xd8\xff\xe0" + b"\x00" * 20
WEBP_HEAD = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 8


@pytest.mark.parametrize("value,content_type", [
    (PNG_1PX, "image/png"),
    (f"data:image/png;base64,{PNG_1PX}", "image/png"),
    (base64.b64encode(JPEG_HEAD).decode(), "image/jpeg"),
    ("data:image/webp;base64," + base64.b64encode(WEBP_HEAD).decode(), "image/webp"),
])
def test_decode_accepts_png_jpeg_webp(value, content_type):
    assert decode_image(value).content_type == content_type


@pytest.mark.parametrize("value", ["", "data:image/png,rawtext", "data:image/png;base64,@@@",
                                   base64.b64encode(b"GIF89a....").decode(), 42, None])
def test_decode_rejects_non_images(value):
    with pytest.raises(ImageDecodeError):
        decode_image(value)


def test_put_is_content_addressed_and_idempotent(db):
    image = decode_image(PNG_1PX)
    key = put_image(db, image)
    assert key == hashlib.sha256(base64.b64decode(PNG_1PX)).hexdigest()
    assert put_image(db, image) == key
    assert len(list(db["fs.files"].find({}, {"_id": 1}))) == 1  # nx-27017 cannot count GridFS
    stored = get_image(db, key)
    assert stored.data == image.data and stored.content_type == "image/png"
    assert get_image(db, key) is not None and get_image(db, "0" * 64) is None


def test_concurrent_puts_of_one_image_keep_it_readable(db):
    image = decode_image(base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2000).decode())
    barrier = threading.Barrier(8)

    def put():
        barrier.wait()
        put_image(db, image)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert get_image(db, image.sha256).data == image.data


def test_multi_chunk_image_reads_back_through_gridfs(db):
    """On the embedded store the files are written directly, as the GridFS spec lays them out."""
    create_indexes(db)
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (GRIDFS_CHUNK_SIZE // 100)  # several chunks
    key = put_image(db, Image(data, "image/png"))
    info = db["fs.files"].find_one({"_id": key})
    assert info["length"] == len(data) and info["chunkSize"] == GRIDFS_CHUNK_SIZE and info["filename"] == key
    assert gridfs.GridFSBucket(db).open_download_stream(key).read() == data
    assert get_image(db, key).data == data


def test_a_real_mongodb_gets_files_from_gridfs_own_uploader(mongo_uri, db):
    """Through a relay the store is a MongoDB at an address it did not start: the standard path runs."""
    parts = urlsplit(mongo_uri)
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2048  # two chunks
    image = Image(data, "image/png")
    with TcpGate((parts.hostname, parts.port)) as gate:
        relayed = MongoClient(f"mongodb://127.0.0.1:{gate.port}/", serverSelectionTimeoutMS=2000)
        try:
            other = relayed[db.name]
            assert embedded_store.serves(db) and not embedded_store.serves(other)
            assert put_image(other, image) == image.sha256
            assert put_image(other, image) == image.sha256  # stored once
        finally:
            relayed.close()
    info = db["fs.files"].find_one({"_id": image.sha256})
    assert info["length"] == len(data) and info["metadata"] == {"contentType": "image/png"}
    assert "uploadDate" in info  # a BSON date in MongoDB; the embedded store hands GridFS's own back as text
    assert gridfs.GridFSBucket(db).open_download_stream(image.sha256).read() == data
    assert get_image(db, image.sha256).data == data
