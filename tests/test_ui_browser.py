"""The try-it-and-correct-it page in a real headless browser (Debian's chromium via selenium):
load the page, type a text, get a prediction, mark it wrong with the right label, export the
feedback, and fine-tune on the exported file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import free_port, wait_ready

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no chromium + chromedriver here (Debian: apt-get install chromium chromium-driver; .ci/run installs them)",
)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-quic --no-first-run"
    flags += " --disable-background-networking --disable-component-update --disable-sync --window-size=1200,1400"
    for flag in flags.split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_try_correct_export_and_finetune_again(tiny_classifier, tiny_bert, sentiment, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from lmforge import cli

    db = tmp_path / "feedback.sqlite"
    port = free_port()
    command = [sys.executable, "-m", "lmforge", "serve", "--model", str(tiny_classifier), "--port", str(port), "--ui", "true", "--feedback", str(db)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    try:
        wait_ready(port, server)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "classification" in d.find_element(By.TAG_NAME, "body").text)
        text = "the ending was boring and the plot too"
        browser.find_element(By.ID, "text").send_keys(text)
        browser.find_element(By.ID, "predict").click()
        wait.until(seen.element_to_be_clickable((By.ID, "wrong")))
        result = browser.find_element(By.ID, "result").text
        predicted = result.split()[0]  # the page lists the predicted label first
        assert "0" in result and "1" in result  # both labels with their scores
        browser.save_screenshot(str(tmp_path / "prediction.png"))
        browser.find_element(By.ID, "wrong").click()
        correct = "0" if predicted == "1" else "1"
        Select(wait.until(seen.visibility_of_element_located((By.ID, "correct-label")))).select_by_value(correct)
        browser.find_element(By.ID, "send-correction").click()
        wait.until(seen.text_to_be_present_in_element((By.ID, "status"), "saved"))
        wait.until(lambda d: "1" in d.find_element(By.ID, "counts").text)
    finally:
        server.terminate()
        server.wait(30)
    exported = tmp_path / "corrections.csv"
    assert cli.main(["feedback", "export", "--db", str(db), "--out", str(exported)]) == 0
    rows = exported.read_text().splitlines()
    assert rows[0].startswith("text,label") and rows[1] == f"{text},{correct}"
    train, dev = sentiment  # the next fine-tune: the corrections beside the original train rows
    combined = tmp_path / "train_plus_feedback.csv"
    original = [line.split("\t") for line in train.read_text().splitlines()[1:]]
    combined.write_text("\n".join(rows + [f"{t},{label}" for t, label in original]) + "\n")
    again = tmp_path / "again"
    flags = ["--train.max_steps", "2", "--train.precision", "fp32"]
    assert cli.main(["finetune", "--task", "classification", "--model", str(tiny_bert), "--train_file", str(combined), "--valid_file", str(dev), "--out", str(again), *flags]) == 0  # fmt: skip
    assert (again / "final" / "config.json").is_file()
    assert Path(tmp_path / "prediction.png").stat().st_size > 1000
