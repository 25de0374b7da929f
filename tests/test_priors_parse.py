"""The answer parser on recorded-style MLLM answers, and on arbitrary text (it must never raise)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2l.priors import parse
from l2l.priors.parse import parse_answer

W, H = 640, 480
FRAME = (644.0, 476.0)  # a Qwen2.5-VL resized frame (multiples of 28) for a 640x480 image


def test_qwen25_json_in_fence_with_prose_maps_from_resized_frame() -> None:
    text = ('Sure! Here is the object:\n```json\n[\n  {"bbox_2d": [161, 119, 322, 357], "point_2d": [240, 238], '
            '"label": "man in red shirt"}\n]\n```\nLet me know if you need anything else.')
    p = parse_answer(text, "man in red shirt", W, H, json_frame=FRAME)
    assert p.ok and p.reason == ""
    assert p.box == pytest.approx([161 * W / 644, 119 * H / 476, 322 * W / 644, 357 * H / 476])
    assert p.points == [pytest.approx((240 * W / 644, 238 * H / 476, 1))]


def test_qwen2_box_tokens_in_0_1000() -> None:
    text = "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(250,100),(750,900)<|box_end|>"
    p = parse_answer(text, "the dog", W, H)
    assert p.box == pytest.approx([160.0, 48.0, 480.0, 432.0])


def test_qwen2_box_without_special_tokens_as_servers_return_it() -> None:
    p = parse_answer("the dog(250,100),(750,900)", "the dog", W, H)
    assert p.box == pytest.approx([160.0, 48.0, 480.0, 432.0])


def test_several_boxes_pick_the_label_matching_the_expression() -> None:
    text = ('[{"bbox_2d": [10, 10, 100, 100], "label": "left cup"}, '
            '{"bbox_2d": [300, 50, 400, 200], "label": "red umbrella"}]')
    p = parse_answer(text, "the red umbrella on the right", W, H)
    assert p.box == [300.0, 50.0, 400.0, 200.0]


def test_several_boxes_without_matching_labels_pick_the_first() -> None:
    text = '[{"bbox_2d": [10, 10, 100, 100]}, {"bbox_2d": [300, 50, 400, 200]}]'
    assert parse_answer(text, "zebra", W, H).box == [10.0, 10.0, 100.0, 100.0]


def test_qwen2_several_boxes_pick_label() -> None:
    text = ("<|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|> and "
            "<|object_ref_start|>brown dog<|object_ref_end|><|box_start|>(500,500),(600,700)<|box_end|>")
    assert parse_answer(text, "small brown dog", 1000, 1000).box == [500.0, 500.0, 600.0, 700.0]


def test_truncated_json_list_keeps_the_complete_objects() -> None:
    text = '```json\n[{"bbox_2d": [12, 30, 200, 180], "label": "cup"}, {"bbox_2d": [300, 4'
    assert parse_answer(text, "cup", W, H).box == [12.0, 30.0, 200.0, 180.0]


def test_single_quoted_pseudo_json_is_read() -> None:
    text = "{'bbox_2d': [12, 30, 200, 180], 'label': 'cup',}"
    assert parse_answer(text, "cup", W, H).box == [12.0, 30.0, 200.0, 180.0]


def test_numbers_as_strings_and_reversed_corners() -> None:
    text = '{"bbox_2d": ["200", "180", "12", "30"]}'
    assert parse_answer(text, "cup", W, H).box == [12.0, 30.0, 200.0, 180.0]


def test_coordinates_outside_the_image_are_clipped() -> None:
    p = parse_answer('{"bbox_2d": [-20, 400, 700, 900], "point_2d": [700, -5]}', "x", W, H)
    assert p.box == [0.0, 400.0, float(W), float(H)]
    assert p.points == [(W - 1.0, 0.0, 1)]


@pytest.mark.parametrize("text, reason", [
    ("", parse.EMPTY),
    ("   \n", parse.EMPTY),
    ("I cannot find that object in the image.", parse.NO_BOX),
    ('{"label": "cup", "confidence": 0.3}', parse.NO_BOX),
    ('{"bbox_2d": [10, 20, 10, 90]}', parse.DEGENERATE),
    ('{"bbox_2d": [10.2, 20, 10.7, 90]}', parse.DEGENERATE),
    ('{"bbox_2d": [700, 500, 900, 800]}', parse.OUTSIDE),
    ('{"bbox_2d": [10, 20, 30]}', parse.MALFORMED),
    ('{"bbox_2d": "somewhere on the left"}', parse.MALFORMED),
    ('{"bbox_2d": [1, 2, null, 4]}', parse.MALFORMED),
    ("<|box_start|>left side<|box_end|>", parse.MALFORMED),
    ("[[[[[[[[{{{{", parse.NO_BOX),
])
def test_unusable_answers_become_reasons(text: str, reason: str) -> None:
    p = parse_answer(text, "the cup", W, H)
    assert p.box is None and p.reason == reason


def test_first_usable_box_wins_over_a_broken_one() -> None:
    text = '[{"bbox_2d": [5, 5, 5, 5]}, {"bbox_2d": [10, 20, 110, 220]}]'
    assert parse_answer(text, "cup", W, H).box == [10.0, 20.0, 110.0, 220.0]


_answers = st.one_of(
    st.text(max_size=300),
    st.text(alphabet='{}[]":,0123456789.-e bbox_2dpoint_labl<|>()', max_size=200),
    st.builds(lambda a, b: f'{a}{{"bbox_2d": {b}}}', st.text(max_size=30),
              st.lists(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=4)),
                       max_size=6)),
    st.builds(lambda v: f"<|box_start|>({v[0]},{v[1]}),({v[2]},{v[3]})<|box_end|>",
              st.lists(st.integers(-5000, 5000), min_size=4, max_size=4)),
)


@settings(max_examples=300, deadline=None)
@given(text=_answers, expression=st.text(max_size=40), width=st.integers(1, 4000), height=st.integers(1, 4000))
def test_arbitrary_text_never_raises_and_boxes_are_valid(text: str, expression: str, width: int, height: int) -> None:
    p = parse_answer(text, expression, width, height, json_frame=(float(width) * 1.1, float(height) * 0.9))
    if p.ok:
        x1, y1, x2, y2 = p.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert x2 - x1 >= 1 and y2 - y1 >= 1
        assert p.reason == ""
    else:
        assert p.reason
    for x, y, label in p.points:
        assert 0 <= x <= width and 0 <= y <= height and label in (0, 1)
