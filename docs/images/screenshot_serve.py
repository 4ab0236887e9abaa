"""Screenshots of `pathvlm serve` for the README and docs/serving.md, in headless Debian Chromium.

    python docs/images/screenshot_serve.py            # writes docs/images/serve-*.jpg

Starts the real `pathvlm serve` (bundled pathclip-nano and pathvlm-nano, the demo gallery) on a free port,
uploads a real H&E tile from the tiatoolbox wheel (BSD-3-Clause; the tile the browser tests use), asks the
chat a question, classifies the tile and searches the gallery by text, as tests/test_serve_browser.py does.
Needs `make install` (chromium and chromium-driver) and, on first use, a few minutes to build the gallery,
its index and the converted language model under $PATHVLM_HOME.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
OPTIONS = ["benign colonic tissue", "colon adenocarcinoma", "ovarian stroma", "lymph node"]  # asked as pathvlm-nano was trained
LABELS = "colon adenocarcinoma, benign colonic tissue, stroma, adipose tissue"
QUERY = "nests of tumour cells with large pleomorphic nuclei"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # not there yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def he_tile(folder: Path) -> Path:
    from pathvlm.images import load_image
    from pathvlm.paths import package_file

    img = load_image(package_file("tiatoolbox", "data/target_image.png", "tiatoolbox"))
    w, h = img.size
    path = folder / "tiatoolbox-target-tile.png"
    img.crop((w // 2 - 112, h // 2 - 112, w // 2 + 112, h // 2 + 112)).save(path)
    return path


def save(driver, path: Path) -> None:
    """The page as a JPEG (quality 88): tissue images make PNG screenshots several times larger."""
    import io

    from PIL import Image

    Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB").save(path, quality=88, optimize=True)


def browser(width: int, height: int, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    return driver


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(OUT), help="folder for the PNG files (default: docs/images)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out = Path(args.out)
    port = free_port()
    exe = Path(sys.executable).with_name("pathvlm")
    server = subprocess.Popen([str(exe), "serve", "--port", str(port)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            wait_for(lambda: urllib.request.urlopen(url + "/health", timeout=5).status == 200, 1200, "pathvlm serve")
            tile = he_tile(Path(tmp))
            d = browser(args.width, args.height, str(Path(tmp) / "profile"))
            try:
                d.get(url + "/")
                inp = wait_for(lambda: d.find_element(By.CSS_SELECTOR, "#chat-image input[type=file]"), 60, "upload")
                inp.send_keys(str(tile))
                wait_for(lambda: d.find_element(By.CSS_SELECTOR, "#chat-image img").get_attribute("src"), 60, "preview")
                from pathvlm.data.builders import FORMAT_INSTRUCTION, mcq_text

                question = mcq_text("Which diagnosis best fits this H&E image?", OPTIONS) + "\n" + FORMAT_INSTRUCTION
                box = d.find_element(By.CSS_SELECTOR, "#chat-input textarea")
                for i, line in enumerate(question.split("\n")):  # Shift+Enter: a new line; Enter: send
                    if i:
                        ActionChains(d).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
                    box.send_keys(line)
                wait_for(lambda: box.get_attribute("value") == question, 10, "the typed question")
                box.send_keys(Keys.ENTER)
                chat = lambda: d.find_element(By.ID, "chatbot").text  # noqa: E731
                # the reasoning streams in collapsed under "Reasoning (thinking…)"; the title loses "(thinking…)" when
                # the answer is complete
                wait_for(lambda: "Reasoning" in chat() and "thinking" not in chat(), 900, "the complete answer")
                wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "#chat-evidence img"), 60, "evidence tiles")
                collapsed = len(chat())
                d.find_element(By.XPATH, "//*[@id='chatbot']//*[contains(text(), 'Reasoning')]").click()  # expand it
                wait_for(lambda: len(chat()) > collapsed + 20, 30, "the expanded reasoning")
                time.sleep(1)
                save(d, out / "serve-chat.jpg")

                tab = wait_for(lambda: next(b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                            if b.text.strip() == "Classify"), 30, "Classify tab")
                tab.click()
                d.find_element(By.CSS_SELECTOR, "#cls-image input[type=file]").send_keys(str(tile))
                wait_for(lambda: d.find_element(By.CSS_SELECTOR, "#cls-image img").get_attribute("src"), 60, "preview")
                labels = d.find_element(By.CSS_SELECTOR, "#cls-labels textarea")
                labels.clear()
                labels.send_keys(LABELS)
                d.find_element(By.ID, "cls-run").click()
                wait_for(lambda: "Prediction:" in d.find_element(By.ID, "cls-summary").text, 120, "classification")
                wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "#cls-bars canvas, #cls-bars svg"), 60, "bar chart")
                time.sleep(2)
                save(d, out / "serve-classify.jpg")

                tab = next(b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == "Retrieval")
                tab.click()
                box = d.find_element(By.CSS_SELECTOR, "#search-text textarea")
                box.clear()
                box.send_keys(QUERY)
                d.find_element(By.ID, "search-run").click()
                wait_for(lambda: len([i for i in d.find_elements(By.CSS_SELECTOR, "#search-results img") if d.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0", i)]) >= 8, 120, "result images")
                time.sleep(2)
                save(d, out / "serve-retrieval.jpg")
            except Exception:
                d.save_screenshot(str(Path(tmp).parent / "pathvlm-screenshot-failure.png"))
                print(f"failed; the page is in {Path(tmp).parent / 'pathvlm-screenshot-failure.png'}", file=sys.stderr)
                raise
            finally:
                d.quit()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {out}/serve-chat.jpg, serve-classify.jpg, serve-retrieval.jpg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
