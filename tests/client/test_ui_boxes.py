"""client/ui_boxes.py: two clicks make a box; boxes are drawn on a copy of the image."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from client.ui_boxes import draw_boxes, pick_corner
from tests.client.conftest import MEDIA

coord = st.integers(min_value=0, max_value=2000)


@given(coord, coord, coord, coord)
def test_two_clicks_give_an_ordered_box(x0: int, y0: int, x1: int, y1: int) -> None:
    pending, box = pick_corner(None, (x0, y0))
    assert pending == [x0, y0] and box is None
    pending, box = pick_corner(pending, (x1, y1))
    if abs(x1 - x0) < 2 or abs(y1 - y0) < 2:
        assert box is None and pending == [x1, y1]
    else:
        assert pending is None and box == [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def test_draw_boxes_keeps_the_size_and_refuses_a_non_image(tmp_path: Path) -> None:
    from PIL import Image

    out = draw_boxes(str(MEDIA / "two_people.png"), [0, 0, 224, 280], [224, 0, 448, 280], tmp_path)
    with Image.open(out) as drawn, Image.open(MEDIA / "two_people.png") as orig:
        assert drawn.size == orig.size
        assert drawn.convert("RGB").getpixel((1, 100)) != orig.convert("RGB").getpixel((1, 100))
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    assert draw_boxes(str(bad), None, None, tmp_path) is None
