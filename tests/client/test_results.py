"""Saving a finished job's MP4 from each form a worker may return it in."""
from __future__ import annotations

from pathlib import Path

import pytest

from client.results import save_result
from tests.client.conftest import MEDIA


def test_save_result_downloads_a_url_and_decodes_base64(tmp_path: Path) -> None:
    import base64
    import functools
    import http.server
    import threading

    src = MEDIA / "reference.mp4"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(MEDIA))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        got = save_result({"video_url": f"http://127.0.0.1:{srv.server_address[1]}/reference.mp4"}, tmp_path, "j1")
        assert got is not None and got.read_bytes() == src.read_bytes()
        missing = f"http://127.0.0.1:{srv.server_address[1]}/missing.mp4"
        with pytest.raises(Exception):
            save_result({"video_url": missing}, tmp_path, "j2")
        assert not (tmp_path / "j2.mp4").exists() and not (tmp_path / "j2.part").exists()
    finally:
        srv.shutdown()
        srv.server_close()
    got = save_result({"video_base64": base64.b64encode(src.read_bytes()).decode()}, tmp_path, "j3")
    assert got is not None and got.read_bytes() == src.read_bytes()
    assert save_result({"video_path": "/nonexistent/x.mp4"}, tmp_path, "j4") is None
