"""Reference video frames come out at 25 fps whatever the source rate, lazily, and upright; images upright and 8-bit."""
from __future__ import annotations

import io
import struct
import subprocess

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from contract.errors import ErrorCode, JobError
from worker.media.media_frames import iter_video_frames, open_image_rgb


def make_video(path, fps: int, n: int) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            img = np.full((48, 64, 3), i * 7 % 255, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("fps,n", [(25, 50), (50, 100), (10, 20)])
def test_resampled_to_25_fps(tmp_path, fps, n):
    path = tmp_path / f"v{fps}.mp4"
    make_video(path, fps, n)
    frames = list(iter_video_frames(path, 25))
    assert abs(len(frames) - 50) <= 2 and frames[0].size == (64, 48)


def test_corrupt_video_is_input_validation(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(JobError) as e:
        list(iter_video_frames(bad))
    assert e.value.code is ErrorCode.E_INPUT_VALIDATION


def _marked(w: int, h: int) -> Image.Image:
    """Grey with a red block in the top-left corner, to see which way a picture was turned."""
    a = np.full((h, w, 3), 128, dtype=np.uint8)
    a[: h // 4, : w // 4] = (255, 0, 0)
    return Image.fromarray(a)


def _red_corner(im: Image.Image) -> str:
    a = np.asarray(im).astype(int)
    h, w = a.shape[:2]
    corners = {"top-left": a[2, 2], "top-right": a[2, w - 3], "bottom-left": a[h - 3, 2], "bottom-right": a[h - 3, w - 3]}
    return max(corners, key=lambda k: corners[k][0] - corners[k][1])


@pytest.mark.parametrize("orientation,size,corner", [(1, (96, 64), "top-left"), (3, (96, 64), "bottom-right"),
                                                      (6, (64, 96), "top-right"), (8, (64, 96), "bottom-left")])
def test_an_image_is_turned_upright_as_its_exif_says(tmp_path, orientation, size, corner):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    _marked(96, 64).save(path, "JPEG", exif=exif, quality=95)
    im = open_image_rgb(path)
    assert (im.mode, im.size, _red_corner(im)) == ("RGB", size, corner)


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    got = np.asarray(open_image_rgb(tmp_path / "g16.png"))[..., 0].astype(int)
    assert np.abs(got - ramp / 257.0).max() <= 1  # a plain convert("RGB") clips this to 255 almost everywhere
    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)).save(tmp_path / "f.tif")
    got = np.asarray(open_image_rgb(tmp_path / "f.tif"))[..., 0].astype(int)
    assert got.min() == 0 and got.max() == 255 and abs(got.mean() - 127.5) < 1


def test_a_rotated_video_comes_out_as_ffmpeg_shows_it(tmp_path):
    """The display matrix (a phone's portrait video is stored landscape) is applied exactly as ffmpeg's
    autorotate does: ffmpeg's own decode of the first frame is the reference."""
    src, rotated, ref = tmp_path / "src.mp4", tmp_path / "rot.mp4", tmp_path / "ref.png"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv444p"
        for _ in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(np.asarray(_marked(96, 64)), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    for angle in ("90", "270"):
        run = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]
        subprocess.run([*run, "-i", str(src), "-c", "copy", "-metadata:s:v:0", f"rotate={angle}", str(rotated)], check=True)
        subprocess.run([*run, "-i", str(rotated), "-frames:v", "1", str(ref)], check=True)
        expected = np.asarray(Image.open(ref).convert("RGB")).astype(int)
        got = np.asarray(next(iter_video_frames(rotated))).astype(int)
        assert got.shape == expected.shape == (96, 64, 3)
        assert np.abs(got - expected).mean() < 2 and _red_corner(Image.fromarray(got.astype(np.uint8))) != "top-left"


@pytest.mark.parametrize("remux", [["-output_ts_offset", "5", "-f", "mp4"], ["-f", "mpegts"]])
def test_a_video_whose_clock_starts_late_is_timed_from_its_first_frame(tmp_path, remux):
    """MPEG-TS starts at 1.4 s, a cut clip anywhere: each 25 fps source frame comes out once, in order (timed
    from 0 the first frame stood frozen for the offset, and float error repeated one frame and dropped the next)."""
    src, moved = tmp_path / "src.mp4", tmp_path / "moved.bin"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"qp": "0"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv444p"
        for i in range(50):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, dtype=np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-c", "copy", *remux, str(moved)],
                   check=True)
    levels = [int(np.asarray(f).mean() / 5 + 0.5) for f in iter_video_frames(moved, 25)]
    assert levels == list(range(50))


def _exif_jpeg() -> tuple[bytes, int, int]:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "camera"
    buf = io.BytesIO()
    _marked(40, 30).save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    at = data.find(b"Exif\x00\x00")
    return data, at + 6, at - 2 + struct.unpack(">H", data[at - 2:at])[0]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL's own notes on the corrupt block, the point here
@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_a_mangled_exif_block_leaves_the_picture_as_stored(edits):
    """Broken metadata never fails a picture whose pixels decode (PIL's exif_transpose raised struct.error and
    TypeError here): the image comes out upright when the orientation survives, as stored when it does not."""
    data, start, end = _exif_jpeg()
    raw = bytearray(data)
    for where, value in edits:
        raw[start + where % (end - start)] = value
    im = open_image_rgb(io.BytesIO(bytes(raw)))
    assert im.mode == "RGB" and im.size in ((40, 30), (30, 40))


def _faststart(tmp_path, seconds: int = 4):
    path = tmp_path / "fs.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size=128x96:rate=25:d={seconds}", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
                    str(path)], check=True)
    return path


def test_a_damaged_stretch_is_skipped_as_ffmpeg_does(tmp_path):
    """Garbage in the middle of the frames (found by fuzzing) raised after 61 of 100 frames, in the middle of
    sampling, in library words; the damaged packet is skipped now and the video plays to its end."""
    path = _faststart(tmp_path)
    data = bytearray(path.read_bytes())
    at = int(len(data) * 0.73)  # inside the frames (faststart: the index is in front), past a keyframe
    data[at:at + 400] = bytes(np.random.default_rng(3).integers(0, 256, 400, dtype=np.uint8))
    path.write_bytes(bytes(data))
    assert sum(1 for _ in iter_video_frames(path, 25)) == 100


@settings(max_examples=40, deadline=None)
@given(at=st.floats(0.1, 0.95), n=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_damaged_frames_end_in_frames_or_a_coded_error_naming_video(tmp_path_factory, at, n, seed):
    path = _FS.get("path")
    if path is None:
        path = _FS["path"] = _faststart(tmp_path_factory.mktemp("fs"))
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 8
    j = start + int((len(data) - start) * at)
    data[j:j + n] = bytes(np.random.default_rng(seed).integers(0, 256, len(data[j:j + n]), dtype=np.uint8))
    bad = path.with_name("bad.mp4")
    bad.write_bytes(bytes(data))
    try:
        frames = sum(1 for _ in iter_video_frames(bad, 25))
    except JobError as e:
        assert e.code is ErrorCode.E_INPUT_VALIDATION and e.message.startswith("video: ")
        assert e.details["field"] == "video" and "Errno" not in e.message
    else:
        assert 1 <= frames <= 101


_FS: dict = {}
