"""The live page in a real browser: headless Chromium with a fake microphone fed from a WAV
talks to `experiments/serve.py` on a tiny checkpoint (`omniflatten_jax.serving`)."""

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from omniflatten_jax.speech.audio import resample
from tests.test_duplex_cli import stage_dir  # noqa: F401  (the shared fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHUNK_S = 0.4


def needs_chromium():
    """`.ci/run` installs Debian's chromium and chromium-driver: in CI a missing browser is a
    failure, elsewhere the test says what to install."""
    if CHROMIUM and DRIVER:
        return
    if os.environ.get("CI"):
        pytest.fail("chromium and chromedriver are missing: .ci/run installs them")
    pytest.skip("needs Debian's chromium and chromium-driver (apt install chromium "
                "chromium-driver)")


@pytest.fixture
def server(stage_dir):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "experiments/serve.py", f"--checkpoint={stage_dir / 'checkpoints'}",
         f"--port={port}", "--sessions=2"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.3)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=30)


def test_a_browser_talks_to_the_server_and_downloads_both_channels(server, tmp_path):
    needs_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from data_pipelines.synth.espeak import Synthesizer, Voice

    utt = Synthesizer().speak("hello there, how are you today?", Voice("en+m3"))
    wave = np.concatenate([resample(utt.audio, utt.sample_rate, 16_000), np.zeros(8_000)])
    soundfile.write(tmp_path / "mic.wav", wave, 16_000, subtype="PCM_16")
    seconds = len(wave) / 16_000
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                f"--use-file-for-fake-audio-capture={tmp_path / 'mic.wav'}",
                "--window-size=1100,900"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        driver.get(server)
        driver.find_element(By.ID, "start").click()
        wanted = int(np.ceil(seconds / CHUNK_S))
        deadline = time.time() + 60
        while int(driver.find_element(By.ID, "chunks").text) < wanted:
            assert time.time() < deadline, driver.find_element(By.ID, "status").text
            time.sleep(0.1)
        shot = os.environ.get("OMNIFLATTEN_PAGE_SCREENSHOT", str(tmp_path / "page.png"))
        driver.save_screenshot(shot)
        heard = driver.execute_script(
            "return state.received.some((p) => p.some((x) => x !== 0))")
        sent = driver.execute_script(
            "return state.sent.reduce((m, p) => Math.max(m, ...p.map(Math.abs)), 0)")
        text = driver.find_element(By.ID, "transcript").text
        driver.find_element(By.ID, "end").click()
        deadline = time.time() + 20
        while not (downloads / "conversation.wav").exists():
            assert time.time() < deadline, os.listdir(downloads)
            time.sleep(0.1)
        time.sleep(0.5)  # the file is complete once renamed from .crdownload
        recording, rate = soundfile.read(downloads / "conversation.wav")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        status = driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
    assert heard and text.strip(), (heard, text)  # the assistant's audio and its text
    assert sent > 1000  # the fake microphone's speech went out
    assert rate == 16_000 and recording.shape[1] == 2
    assert seconds <= len(recording) / rate <= seconds + 2 * CHUNK_S + 1e-9
    assert np.abs(recording[:, 0]).max() > 0.03 and np.abs(recording[:, 1]).max() > 0.0
    assert status == "Ended." and not errors, errors
