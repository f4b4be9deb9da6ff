"""Open and decode media files the way training will, so that a broken one is found now, not mid-epoch.

NeMo's loaders (`TarOrFolderImageLoader.open_image`: `Image.open(...).convert('RGB')`; the video loader:
`decord.VideoReader`) raise on a corrupt file and stop the run. Images are decoded fully with Pillow (a
file cut in half fails only when its pixels are read) and their real format must match the extension;
videos are opened with PyAV (FFmpeg, as decord): a video stream, at least `num_frames` decoded frames, and
a duration. Each problem is a `RecordError` whose detail carries the decoder's own message.
"""

from __future__ import annotations

import io
import posixpath
from typing import IO, Any

from neva_prep import storage
from neva_prep.data.records import RecordError

_DETAIL = 300


def _source(url: str) -> str | IO[bytes]:
    """A local path as is (the decoders seek in it); object-store media read whole into memory."""
    if storage.is_local(url):
        return storage.local_path(url)
    return io.BytesIO(storage.read_bytes(url))


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:_DETAIL]


def _extension_format(name: str) -> str | None:
    from PIL import Image

    return Image.registered_extensions().get(posixpath.splitext(name)[1].lower())


def check_image(url: str, relative: str) -> RecordError | None:
    """None when Pillow decodes every pixel and the format matches the extension."""
    from PIL import Image

    try:
        with Image.open(_source(url)) as im:
            real = im.format
            im.load()
    except Exception as exc:  # any decoder failure is what training would hit
        return RecordError("media undecodable", f"image {relative!r}: {_why(exc)}")
    expected = _extension_format(relative)
    if expected is not None and real != expected and not (expected == "JPEG" and real == "MPO"):
        return RecordError(
            "media format mismatch", f"image {relative!r} is {real}, its extension says {expected}"
        )
    return None


def check_video(url: str, relative: str, num_frames: int) -> RecordError | None:
    """None when PyAV opens it, finds a video stream, decodes `num_frames` frames and reads a duration."""
    import av

    try:
        with av.open(_source(url), mode="r") as container:
            if not container.streams.video:
                return RecordError("media undecodable", f"video {relative!r}: no video stream")
            stream = container.streams.video[0]
            frames = 0
            for _ in container.decode(stream):
                frames += 1
                if frames >= num_frames:
                    break
            duration = _duration(container, stream)
    except Exception as exc:
        return RecordError("media undecodable", f"video {relative!r}: {_why(exc)}")
    if frames < num_frames:
        return RecordError(
            "video too short", f"video {relative!r}: {frames} frame(s) decode, --num-frames {num_frames}"
        )
    if duration is None:
        return RecordError("media undecodable", f"video {relative!r}: no duration in the container")
    return None


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return None


def check_media(url: str, relative: str, media: str, num_frames: int) -> RecordError | None:
    """`check_image` or `check_video`; an unreadable file (permissions, a folder) is a finding too."""
    try:
        if media == "image":
            return check_image(url, relative)
        return check_video(url, relative, num_frames)
    except Exception as exc:  # reading it failed before any decoder ran (BadInput from storage, OSError)
        return RecordError("media unreadable", f"{media} {relative!r}: {_why(exc)}")
