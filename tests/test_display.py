"""The admin's short forms and the history chart: pure functions."""

import re
from datetime import timedelta

import pytest

from sessions_app.display import minute_chart_svg, short_id, short_span

pytestmark = pytest.mark.path_independent


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0 s"),
        (42, "42 s"),
        (60, "1 min"),
        (3 * 60 + 59, "3 min"),
        (3600, "1 h"),
        (2 * 3600 + 5 * 60, "2 h 5 min"),
        (86400, "1 d"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
    ],
)
def test_short_span_reads_at_a_glance(seconds, text):
    assert short_span(timedelta(seconds=seconds)) == text


def test_an_age_under_a_minute_is_one_value_so_a_list_of_ages_changes_once_a_minute():
    assert short_span(timedelta(seconds=5), seconds=False) == short_span(timedelta(seconds=59), seconds=False)
    assert short_span(timedelta(seconds=59), seconds=False) == "<1 min"
    assert short_span(timedelta(minutes=3, seconds=10), seconds=False) == "3 min"


def test_short_id_is_the_first_eight_characters():
    assert short_id("0b4c7f7e-4d4b-4c55-9e0c-5a0c1f6ad2a1") == "0b4c7f7e"


def test_the_chart_has_one_titled_bar_per_nonzero_count_scaled_to_the_peak():
    svg = minute_chart_svg([0, 4, 2], [1, 0, 0], labels=["09:00", "09:01", "09:02"], width=224, height=120)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('class="opened"') == 2 and svg.count('class="ended"') == 1
    heights = [float(h) for h in re.findall(r'class="opened"[^>]*height="([\d.]+)"', svg)]
    assert heights[0] == pytest.approx(2 * heights[1])  # 4 is twice 2
    assert "<title>09:01: 4 opened, 0 ended</title>" in svg
    assert ">09:00<" in svg and ">09:02<" in svg


def test_an_idle_hour_is_an_empty_chart_not_a_division_by_zero():
    svg = minute_chart_svg([0] * 60, [0] * 60, labels=[f"{n:02}" for n in range(60)])
    assert "<rect" not in svg


def test_labels_are_escaped():
    assert "<b>" not in minute_chart_svg([1], [0], labels=["<b>"])
