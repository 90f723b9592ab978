"""client/preview.py against the worker's real publisher on moto_server S3: each poll fetches only the new
segments through their presigned URLs, the followed file plays at every moment, the local playlist ends
when the worker's does. A vanished playlist is a miss, not a crash."""
from __future__ import annotations

import av
import numpy as np

from client.preview import PreviewFollower, parse_media_playlist, preview_location
from tests.worker.conftest import moto_s3, moto_server  # noqa: F401 - fixtures
from tests.worker.test_segment import smooth_frames
from worker.preview.publisher import PreviewPublisher
from worker.preview.segment import SegmentPlan
from worker.storage.s3 import S3Store


def frames_in(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_follower_mirrors_a_growing_s3_preview(moto_s3, tmp_path):
    moto_s3.client().create_bucket(Bucket="results")
    store = S3Store(moto_s3.settings())
    audio = np.zeros(16000 * 6, dtype=np.float32)  # 150 frames: 3 chunks of 50
    pub = PreviewPublisher(store, "watch/job9", SegmentPlan(audio=audio), tmp_path / "worker")
    follow = tmp_path / "me" / "follow.ts"
    fol = PreviewFollower(tmp_path / "me" / "mirror", follow_file=follow)
    assert preview_location(pub.status()) is None and fol.update(pub.status()) == 0  # nothing yet
    for i in range(3):
        pub.add_chunk(smooth_frames(50, 32, 48, i), last=i == 2)
        status = pub.status()
        assert preview_location(status).startswith(moto_s3.endpoint)
        assert fol.update(status) == 1 and fol.update(status) == 0  # only what is new
        assert frames_in(follow) == 50 * (i + 1)  # the growing file plays as it is
    assert fol.ended and fol.seconds == 6.0
    entries, ended = parse_media_playlist(fol.local_playlist.read_text())
    assert ended and [e.uri for e in entries] == ["seg-00000.ts", "seg-00001.ts", "seg-00002.ts"]
    assert all((fol.folder / e.uri).stat().st_size > 0 for e in entries)


def test_unreachable_playlist_is_a_miss_not_an_error(tmp_path):
    fol = PreviewFollower(tmp_path / "m")
    gone = {"available": True, "segments": 1, "playlist_path": str(tmp_path / "nowhere" / "index.m3u8")}
    assert fol.update(gone) == 0 and fol.fetched == 0
    assert fol.update({"available": False, "reason": "inline"}) == 0
