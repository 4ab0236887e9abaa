"""The web app in real headless Chromium (Selenium) against a server this module starts on tiny models.

Upload a real H&E tile, ask a question and watch the answer stream in; classify with typed labels;
search by text and see the images. Screenshots go to pytest's tmp_path and to test-artifacts/serve/.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from serve_helpers import load_service, make_gallery, real_he_tile

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                 reason="needs Debian's chromium and chromium-driver (make install installs them)")]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "serve"


@pytest.fixture(scope="module")
def he_tile(tmp_path_factory):
    tile = real_he_tile(tmp_path_factory.mktemp("he"))
    if tile is None:  # the tiatoolbox wheel is absent: a synthetic tile keeps the test meaningful for the UI
        from conftest import he_like_tile

        tile = tmp_path_factory.mktemp("he") / "tile.png"
        he_like_tile(7, size=128).save(tile)
    return tile


@pytest.fixture(scope="module")
def server(tiny_clip_dir, tiny_reasoner_dir, tmp_path_factory):
    pytest.importorskip("gradio")
    pytest.importorskip("selenium")
    from serve.server import ServerThread, create_app

    gallery = make_gallery(tmp_path_factory.mktemp("browser") / "gallery", n=8)
    service = load_service(tiny_clip_dir, gallery, tmp_path_factory, {"max_new_tokens": 48},
                           reasoner=str(tiny_reasoner_dir))
    with ServerThread(create_app(service)) as srv:
        srv.service = service
        yield srv


@pytest.fixture(scope="module")
def remote_server(server, tmp_path_factory):
    """The same app with generation forwarded to a fake OpenAI-compatible server that streams slowly."""
    from serve_helpers import FakeOpenAI

    from pathvlm.serving.config import ServeConfig
    from pathvlm.serving.service import PathVLMService
    from serve.server import ServerThread, create_app

    fake = FakeOpenAI()
    with ServerThread(fake.app) as backend:
        base = server.service.config
        cfg = ServeConfig(clip=base.clip, gallery=base.gallery, index=base.index, backend_url=backend.url)
        service = PathVLMService.load(cfg, say=lambda *_: None)
        with ServerThread(create_app(service)) as srv:
            yield srv


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def shot(driver, tmp_path, name):
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def wait_for(driver, predicate, timeout=60, what="condition", tmp_path=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # element not there yet, stale, ...
            pass
        time.sleep(0.1)
    if tmp_path is not None:
        shot(driver, tmp_path, f"timeout-{what.replace(' ', '-')}")
    raise AssertionError(f"timed out waiting for {what}")


def open_tab(driver, server, name):
    from selenium.webdriver.common.by import By

    if not driver.current_url.startswith(server.url):
        driver.get(server.url + "/")
    tab = wait_for(driver, lambda: next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                        if b.text.strip() == name), what=f"tab {name}")
    tab.click()


def upload(driver, elem_id, path):
    from selenium.webdriver.common.by import By

    inp = wait_for(driver, lambda: driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]"),
                   what=f"file input in #{elem_id}")
    inp.send_keys(str(path))
    wait_for(driver, lambda: driver.find_element(By.CSS_SELECTOR, f"#{elem_id} img").get_attribute("src"),
             what=f"preview in #{elem_id}")


def test_chat_answers_about_an_uploaded_tile_with_the_local_reasoner(server, browser, he_tile, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from pathvlm.chat import load_reasoner
    from pathvlm.images import load_image
    from pathvlm.serving.thinking import split_thinking

    d = browser  # the tiny reasoner answers in milliseconds (control characters): streaming is checked below
    d.get(server.url + "/")
    upload(d, "chat-image", he_tile)
    question = "What tissue is shown in this patch?"
    box = d.find_element(By.CSS_SELECTOR, "#chat-input textarea")
    box.send_keys(question + Keys.ENTER)
    expected = split_thinking(load_reasoner(str(server.service.config.reasoner)).chat(
        [load_image(he_tile)], [{"role": "user", "content": question}], max_new_tokens=48).text)[1]
    assert expected
    wait_for(d, lambda: expected[-20:].strip() in d.find_element(By.ID, "chatbot").text, 120, "the whole answer", tmp_path)
    shot(d, tmp_path, "chat-local-reasoner")
    assert question in d.find_element(By.ID, "chatbot").text
    # the gallery evidence beside the answer
    ev = d.find_elements(By.CSS_SELECTOR, "#chat-evidence img")
    assert len(ev) >= 1


def test_classify_with_typed_labels(server, browser, he_tile, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    open_tab(d, server, "Classify")
    upload(d, "cls-image", he_tile)
    labels = d.find_element(By.CSS_SELECTOR, "#cls-labels textarea")
    labels.clear()
    labels.send_keys("tumour epithelium, stroma, adipose tissue")
    d.find_element(By.ID, "cls-run").click()
    wait_for(d, lambda: "Prediction:" in d.find_element(By.ID, "cls-summary").text, 60, "classification", tmp_path)
    table = d.find_element(By.ID, "cls-table").text
    for name in ("tumour epithelium", "stroma", "adipose tissue"):
        assert name in table
    # the same probabilities as the library gives
    from pathvlm.images import load_image

    ref = server.service.classify(load_image(he_tile), labels="tumour epithelium, stroma, adipose tissue")
    assert f"{ref['probabilities'][ref['prediction']]:.4f}" in table
    wait_for(d, lambda: d.find_elements(By.CSS_SELECTOR, "#cls-bars canvas, #cls-bars svg"), 30, "bar chart", tmp_path)
    shot(d, tmp_path, "classify")


def test_search_by_text_shows_images(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    open_tab(d, server, "Retrieval")
    box = d.find_element(By.CSS_SELECTOR, "#search-text textarea")
    box.clear()
    box.send_keys("purple nuclei in a tumour nest")
    d.find_element(By.ID, "search-run").click()

    def loaded():
        imgs = d.find_elements(By.CSS_SELECTOR, "#search-results img")
        ok = [i for i in imgs if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)]
        return len(ok) >= 8 and ok

    wait_for(d, loaded, 60, "result images", tmp_path)
    table = d.find_element(By.ID, "search-table").text
    assert "tile" in table and "CC0-1.0" in table
    shot(d, tmp_path, "search")


def test_chat_streams_reasoning_and_answer_over_several_turns(remote_server, browser, he_tile, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(remote_server.url + "/")
    upload(d, "chat-image", he_tile)
    # record every text the chat shows while the answer streams in
    d.execute_script("""
        window.__states = [];
        const root = document.querySelector('#chatbot');
        new MutationObserver(() => {
          const t = root.innerText;
          if (window.__states[window.__states.length - 1] !== t) window.__states.push(t);
        }).observe(root, {subtree: true, childList: true, characterData: true});
    """)
    d.find_element(By.CSS_SELECTOR, "#chat-input textarea").send_keys("Is this tumour?" + Keys.ENTER)
    chat = lambda: d.find_element(By.ID, "chatbot").text  # noqa: E731
    wait_for(d, lambda: "(turns: 1)" in chat(), 60, "first answer", tmp_path)
    states = [s for s in d.execute_script("return window.__states") if "Eosinophilic" in s]
    answers = {s[s.index("Eosinophilic"):] for s in states}
    assert len(answers) >= 3, f"the answer did not stream: {sorted(answers)}"
    final = "Eosinophilic stroma with scattered nuclei. You asked: Is this tumour? (turns: 1)"
    assert all(final.startswith(a.split("\n")[0]) for a in answers)
    # the reasoning is there, collapsed under its title; the image went to the backend as a data URL
    assert "Reasoning" in chat() and "I see 1 image(s), data URLs valid." not in chat()
    shot(d, tmp_path, "chat-streamed")
    d.find_element(By.XPATH, "//*[@id='chatbot']//*[contains(text(), 'Reasoning')]").click()
    wait_for(d, lambda: "I see 1 image(s), data URLs valid." in chat(), 10, "expanded reasoning", tmp_path)
    # a second turn carries the conversation (user, answer, user: 3 messages; reasoning not fed back)
    d.find_element(By.CSS_SELECTOR, "#chat-input textarea").send_keys("Any mitoses?" + Keys.ENTER)
    wait_for(d, lambda: "(turns: 3)" in chat(), 60, "second answer", tmp_path)
    # regenerate replaces the last answer; clear empties the chat
    d.find_element(By.ID, "chat-regenerate").click()
    wait_for(d, lambda: chat().count("You asked: Any mitoses?") == 1 and "(turns: 3)" in chat(), 60, "regenerated", tmp_path)
    shot(d, tmp_path, "chat-two-turns")
    d.find_element(By.ID, "chat-clear").click()
    wait_for(d, lambda: "Eosinophilic" not in chat(), 10, "cleared chat", tmp_path)
    # an empty message is an error message, not a request
    d.find_element(By.CSS_SELECTOR, "#chat-input textarea").send_keys("   " + Keys.ENTER)
    wait_for(d, lambda: "empty message" in d.find_element(By.TAG_NAME, "body").text, 10, "empty-message error", tmp_path)


def test_report_for_an_uploaded_tile_is_downloadable(server, browser, he_tile, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser
    open_tab(d, server, "Report")
    upload(d, "report-image", he_tile)
    d.find_element(By.ID, "report-run").click()
    wait_for(d, lambda: "Impression" in d.find_element(By.ID, "report-text").text, 120, "report", tmp_path)
    text = d.find_element(By.ID, "report-text").text
    assert "Specimen" in text and "Microscopic findings" in text and "not a diagnosis" in text
    assert text.count("Pathology report") == 1
    link = wait_for(d, lambda: d.find_element(By.CSS_SELECTOR, "#report-file a"), 30, "download link", tmp_path)
    import httpx

    md = httpx.get(link.get_attribute("href"), timeout=30)
    assert md.status_code == 200 and "## Impression" in md.text
    shot(d, tmp_path, "report")
