"""The HTML report parses, holds every chart and the numbers, and the JSON carries the same data."""

import json
import shutil
import subprocess
from datetime import date, timedelta
from html.parser import HTMLParser

import numpy as np
import pytest

from services.campaign import evaluation as ev
from services.campaign.evaluation import ArmCounts, GroupCounts, Plan
from services.campaign.report import DailyPoint, ReportData, render_html, to_json

CHARTS = ["chart-funnel", "chart-forest", "chart-gain", "chart-lift", "chart-qini", "chart-trend"]


def sample(*, planned: int = 6000, srm_skew: bool = False) -> ReportData:
    arms = [
        ArmCounts("a", assigned=4500, sent=4480, delivered=4390, opened=1980, clicked=410, converted=189,
                  revenue=18900.0, cost=896.0, planned_share=0.45, revenue_sq=18900.0 * 120),
        ArmCounts("b", assigned=5200 if srm_skew else 4460, sent=4440, delivered=4350, opened=1700, clicked=300,
                  converted=140, revenue=14000.0, cost=888.0, planned_share=0.45, revenue_sq=14000.0 * 120),
        ArmCounts("control", assigned=1040, converted=26, revenue=2600.0, is_control=True, planned_share=0.1,
                  revenue_sq=2600.0 * 120),
    ]
    evaluation = ev.evaluate_campaign(
        "campaigns/spring-card", arms,
        plan=Plan({"a": planned, "b": planned, "control": planned // 4}, baseline_rate=0.025, target_uplift=0.01))
    rng = np.random.default_rng(5)
    scores = rng.random(2000)
    outcomes = (rng.random(2000) < 0.02 + 0.1 * scores).astype(int)
    treated = (rng.random(2000) < 0.8).astype(int)
    uplift_outcomes = (rng.random(2000) < 0.02 + 0.08 * scores * treated).astype(int)
    start = date(2024, 3, 1)
    daily = [DailyPoint(start + timedelta(days=d), arm, sent=600, delivered=590, converted=c + d % 3,
                        revenue=100.0 * (c + d % 3))
             for d in range(10) for arm, c in (("a", 18), ("b", 13), ("control", 2))]
    fairness = [ev.fairness("age_band", [
        GroupCounts("18-24", 1000, 300, 250, 25, 50, 3), GroupCounts("25-34", 2000, 800, 700, 84, 100, 8),
        GroupCounts("65+", 500, 50)])]
    return ReportData(
        campaign_id="campaigns/spring-card", title="Spring credit-card campaign <results>",
        generated_at="2024-03-12T08:00:00Z", evaluation=evaluation,
        deciles=ev.gain_lift_by_decile(scores, outcomes), qini=ev.qini_curve(scores, treated, uplift_outcomes),
        daily=daily, fairness=fairness)


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.svg_ids: list[str] = []
        self.titles: dict[str, str] = {}
        self.tags: list[str] = []
        self.text: list[str] = []
        self.urls: list[str] = []
        self._title_of: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "svg":
            self.svg_ids.append(a["id"])
        if tag == "title" and self.stack and self.stack[-1] == "svg":
            self._title_of = self.svg_ids[-1]
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag != "meta":  # the one void element the report writes without "/>"
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        for key in ("src", "href"):
            if key in dict(attrs):
                self.urls.append(dict(attrs)[key])

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()
        if tag == "title":
            self._title_of = None

    def handle_data(self, data):
        self.text.append(data)
        if self._title_of:
            self.titles[self._title_of] = self.titles.get(self._title_of, "") + data


def parse(html: str) -> Collector:
    c = Collector()
    c.feed(html)
    c.close()
    assert c.stack == [], f"unclosed tags: {c.stack}"
    return c


def test_html_is_well_formed_self_contained_and_holds_every_chart():
    html = render_html(sample())
    doc = parse(html)
    assert doc.svg_ids == CHARTS
    assert doc.titles["chart-forest"] == "Conversion uplift vs control (95% CI)"
    assert doc.titles["chart-qini"] == "Qini curve (incremental responders)"
    assert "script" not in doc.tags
    assert doc.urls == []  # no external resources at all
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "@import" not in html and "url(" not in html


def test_html_shows_the_numbers_beside_the_charts():
    data = sample()
    text = " ".join(parse(render_html(data)).text)
    a = data.evaluation.comparisons[0].conversion
    # arm a: 189/4500 = 4.20 %, control 26/1040 = 2.50 %, uplift +1.70 pp
    assert "4.20%" in text and "2.50%" in text
    assert f"{a.difference * 100:+.2f} pp" == "+1.70 pp"
    assert "+1.70 pp" in text
    assert f"{a.ci_low * 100:+.2f} pp … {a.ci_high * 100:+.2f} pp" in text
    assert "4,500" in text and "18,900.00 CNY" in text
    # CPA of arm a = 896 / 189 = 4.74
    assert "4.74 CNY" in text
    # fairness: 65+ has allocation ratio 0.25 and is flagged
    assert "0.25" in text and "disparate" in text
    # decile 1 of the gain table and the Qini coefficient
    assert f"{data.qini.coefficient:,.2f}" in text
    assert data.deciles[0].responders > 0


def test_title_and_text_are_escaped():
    html = render_html(sample())
    assert "Spring credit-card campaign &lt;results&gt;" in html
    assert "<results>" not in html


def test_peeking_and_srm_warnings_are_shown_up_front():
    text = " ".join(parse(render_html(sample(srm_skew=True))).text)
    assert "Read with care" in text
    assert "sample ratio mismatch" in text
    assert "planned sample size not reached" in text
    assert "too early to call" in text
    done = render_html(sample(planned=1000))
    done_text = " ".join(parse(done).text)
    assert "planned sample size not reached" not in done_text
    assert "a significant increase" in done_text  # arm a: z ~ 2.7 once the horizon is reached


def test_json_round_trips_the_same_numbers():
    data = sample()
    doc = json.loads(to_json(data))
    assert doc["campaign_id"] == "campaigns/spring-card"
    comp = doc["evaluation"]["comparisons"][0]
    assert comp["arm_id"] == "a"
    assert comp["conversion"]["difference"] == pytest.approx(189 / 4500 - 26 / 1040)
    assert doc["evaluation"]["arms"][2]["open_rate"] is None
    assert doc["daily"][0]["day"] == "2024-03-01"
    assert len(doc["deciles"]) == 10
    assert doc["fairness"][0]["groups"][2]["disparate"] is True


def test_report_without_optional_sections_still_renders():
    data = sample()
    bare = ReportData(campaign_id="c", title="t", generated_at="now", evaluation=data.evaluation)
    doc = parse(render_html(bare))
    assert doc.svg_ids == ["chart-funnel", "chart-forest"]


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="headless Chromium is not installed")
def test_renders_in_headless_chromium(tmp_path):
    browser = next(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b))
    page = tmp_path / "report.html"
    page.write_text(render_html(sample()), encoding="utf-8")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,4000", page.as_uri()], check=True, timeout=60, capture_output=True)
    assert shot.stat().st_size > 10_000
