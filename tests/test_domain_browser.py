"""The web app's domain banner in real headless Chromium (the pattern of test_serve_browser.py).

A server on a tiny PathCLIP with a domain description (conftest.describe_clip_folder) and the tiny reasoner:
a flat green square is outside the description, an H&E-like tile inside it. The banner shows for the first
on the classify, image-search and chat tabs, and not for the second.
"""
from __future__ import annotations

import pytest
from PIL import Image

from conftest import he_like_tile
from serve_helpers import load_service, make_gallery
from test_serve_browser import CHROMEDRIVER, CHROMIUM, browser, shot, upload, wait_for  # noqa: F401 (browser: the fixture)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (__import__("os").path.exists(CHROMIUM) and __import__("os").path.exists(CHROMEDRIVER)),
                                 reason="needs Debian's chromium and chromium-driver (make install installs them)")]
BANNER = "Outside the training domain."


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("domain-images")
    Image.new("RGB", (96, 96), (0, 255, 0)).save(folder / "green.png")
    he_like_tile(1, hue="pink").save(folder / "pink.png")  # one of the tiles the description was fitted on
    return folder / "green.png", folder / "pink.png"


@pytest.fixture(scope="module")
def server(described_clip_dir, tiny_reasoner_dir, tmp_path_factory):
    pytest.importorskip("gradio")
    pytest.importorskip("selenium")
    from serve.server import ServerThread, create_app

    gallery = make_gallery(tmp_path_factory.mktemp("domain-browser") / "gallery", n=8)
    service = load_service(described_clip_dir, gallery, tmp_path_factory, {"max_new_tokens": 16},
                           reasoner=str(tiny_reasoner_dir))
    # the tiny reasoner's tower is the tiny PathCLIP (as pathvlm-nano's is pathclip-nano): let its description apply
    service._reasoner_domain = service.domain
    with ServerThread(create_app(service)) as srv:
        srv.service = service
        yield srv


def open_tab(driver, server, name):
    """Click a tab once the page has loaded (the loading overlay takes the first clicks)."""
    from selenium.webdriver.common.by import By

    if not driver.current_url.startswith(server.url):
        driver.get(server.url + "/")

    def click():
        tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == name)
        tab.click()
        return True

    wait_for(driver, click, what=f"tab {name}")


def text_of(driver, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, elem_id).text


def test_classify_banner(server, browser, images, tmp_path):
    from selenium.webdriver.common.by import By

    green, pink = images
    d = browser
    open_tab(d, server, "Classify")
    upload(d, "cls-image", green)
    d.find_element(By.ID, "cls-run").click()
    wait_for(d, lambda: "Prediction:" in text_of(d, "cls-summary"), 60, "classification", tmp_path)
    wait_for(d, lambda: BANNER in text_of(d, "cls-domain"), 30, "the domain banner", tmp_path)
    assert "tiny was trained on fixture tiles; this one looks unlike them" in text_of(d, "cls-domain")
    shot(d, tmp_path, "domain-banner-classify")
    upload(d, "cls-image", pink)
    d.find_element(By.ID, "cls-run").click()
    wait_for(d, lambda: BANNER not in text_of(d, "cls-domain"), 60, "the banner to go", tmp_path)


def test_image_search_banner(server, browser, images, tmp_path):
    from selenium.webdriver.common.by import By

    green, _ = images
    d = browser
    open_tab(d, server, "Retrieval")
    toggle = wait_for(d, lambda: d.find_element(By.XPATH, "//button[contains(., 'Search by image')]"), what="accordion")
    d.execute_script("arguments[0].click()", toggle)
    upload(d, "search-image", green)
    d.find_element(By.ID, "search-image-run").click()
    wait_for(d, lambda: BANNER in text_of(d, "search-domain"), 60, "the search banner", tmp_path)
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#search-results img"), 30, "the results", tmp_path)


def test_chat_banner(server, browser, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    green, _ = images
    d = browser
    open_tab(d, server, "Chat")
    upload(d, "chat-image", green)
    d.find_element(By.CSS_SELECTOR, "#chat-input textarea").send_keys("What tissue is this?" + Keys.ENTER)
    wait_for(d, lambda: BANNER in text_of(d, "chat-domain"), 120, "the chat banner", tmp_path)
    shot(d, tmp_path, "domain-banner-chat")
