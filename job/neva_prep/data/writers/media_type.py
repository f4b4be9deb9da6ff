"""What a media file is, from its first bytes: the extension its tar member gets.

The name in a record says nothing reliable (WebVid `.mp4` names, PNGs saved as `.jpg`): Energon's decoder
picks its handler by the member's extension, so the extension must match the bytes.
"""

from __future__ import annotations

IMAGE = "image"
VIDEO = "video"
SNIFF_BYTES = 64
"""How many leading bytes `extension` needs."""


def extension(head: bytes) -> tuple[str, str] | None:
    """(kind, extension) of a file starting with `head` (image or video), or None when unrecognized."""
    if head.startswith(b"\xff\xd8\xff"):
        return IMAGE, "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return IMAGE, "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return IMAGE, "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return IMAGE, "webp"
    if head[:4] in (b"II*\0", b"MM\0*"):
        return IMAGE, "tiff"
    if head[:2] == b"BM" and len(head) >= 26 and head[6:10] == b"\0\0\0\0":
        return IMAGE, "bmp"
    if head[4:8] == b"ftyp":
        return VIDEO, "mov" if head[8:12] == b"qt  " else "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return VIDEO, "webm" if b"webm" in head[:SNIFF_BYTES] else "mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return VIDEO, "avi"
    return None
