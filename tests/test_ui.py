"""The web page of ``asrctl serve``: its routes, and the page itself in headless Chromium.

The browser tests drive Debian's ``chromium`` through ``chromium-driver`` (selenium)
against the real app over test_server's stand-in model (the ``fake_server`` fixture), which
transcribes any audio as ``heard N samples``. The microphone is Chromium's fake capture
device playing a wav file. Screenshots are kept under the test's tmp dir (path printed).
Without selenium, chromium or chromedriver the browser tests are skipped, saying which.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from test_server import AUTH, KEY, FakeModel, wav_bytes

from asrctl.results import Segment, Transcript, Word
from asrctl.server.app import create_app
from asrctl.server.engine import Progress
from asrctl.server.metrics import Metrics
from asrctl.server.options import ServerOptions
from asrctl.server.state import ServerState

FAKE_KEY = "sk-x"  # the fake_server fixture's key
WAIT_S = 30


def client_for(model: FakeModel | None = None, **options) -> TestClient:
    opts = ServerOptions(served_model_names=("tiny",), api_keys=(KEY,), **options)
    state = ServerState.create(model or FakeModel(), opts, Path("/m"), Metrics())
    return TestClient(create_app(state))


HOSTILE = '<img src=x onerror="document.title=1">'  # text that must stay text


class DiarizedModel(FakeModel):
    """Answers with two speakers' segments and timed words (as VibeVoice-ASR and
    Fun-ASR-Nano's CTC head give them), one segment's text being markup."""

    def __init__(self) -> None:
        super().__init__()
        self.word_timing = True

    async def stream(self, audio, prompt, decode, request_id=None, *, streaming=True):
        segments = (
            Segment(0.0, 1.2, "hello there", speaker=0),
            Segment(1.3, 2.0, HOSTILE, speaker=1),
        )
        words = (Word("hello", 0.1, 0.5, 0.9), Word("there", 0.6, 1.1, 0.8))
        words = words if decode.word_timestamps else None
        text = f"hello there {HOSTILE}"
        yield Progress(
            text, Transcript("", text, 2.0, (1,), "stop", segments=segments, words=words)
        )


def test_verbose_json_carries_speakers_and_words():
    with client_for(DiarizedModel()) as client:
        form = {"response_format": "verbose_json", "timestamp_granularities[]": ["segment", "word"]}
        files = {"file": ("a.wav", wav_bytes(2.0), "audio/wav")}
        body = client.post("/v1/audio/transcriptions", files=files, data=form, headers=AUTH).json()
    assert [(s["speaker"], s["text"]) for s in body["segments"]] == [
        (0, "hello there"),
        (1, HOSTILE),
    ]
    assert [w["word"] for w in body["words"]] == ["hello", "there"]


# ---- routes ----------------------------------------------------------------------------


def test_page_and_assets_are_served_with_a_strict_policy():
    with client_for() as client:
        for path in ("/", "/ui", "/ui/"):
            page = client.get(path)  # the page itself needs no key: its data does
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert '<script src="/ui/app.js"' in page.text
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp
        for name, media in [
            ("app.js", "text/javascript"),
            ("mic-worklet.js", "text/javascript"),
            ("style.css", "text/css"),
        ]:
            asset = client.get(f"/ui/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
        assert "registerProcessor" in client.get("/ui/mic-worklet.js").text
        # nothing but the page's own files: no other package file, no path tricks
        for path in ("/ui/state.py", "/ui/..%2Fstate.py", "/ui/%2E%2E/app.py", "/ui/x.js"):
            assert client.get(path).status_code == 404, path


def test_page_never_writes_transcript_text_as_html():
    source = (Path(__file__).parents[1] / "asrctl/server/ui/app.js").read_text()
    assert "innerHTML" not in source and "outerHTML" not in source
    assert "insertAdjacentHTML" not in source and "document.write" not in source


def test_info_needs_the_key_and_tells_model_and_limits():
    with client_for(max_upload_mb=3) as client:
        refused = client.get("/ui/info")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/ui/info", headers={"Authorization": "Bearer nope"}).status_code == 401
        info = client.get("/ui/info", headers=AUTH).json()
    assert info["models"] == ["tiny"]
    assert (info["family"], info["title"]) == ("fun-asr-nano", "Fun-ASR-Nano")
    assert {"zh", "en"} <= set(info["languages"]) and info["hotwords"] is True
    assert info["max_upload_mb"] == 3 and info["max_audio_seconds"] == 30
    assert info["word_timestamps"] is False
    assert info["realtime"]["path"] == "/ws" and info["realtime"]["sample_rate"] == 16000


def test_no_ui_turns_the_page_off_and_keeps_the_api():
    with client_for(ui=False) as client:
        for path in ("/", "/ui", "/ui/app.js", "/ui/info"):
            assert client.get(path).status_code == 404, path
        files = {"file": ("a.wav", wav_bytes(1.0), "audio/wav")}
        answer = client.post("/v1/audio/transcriptions", files=files, headers=AUTH)
        assert answer.json()["text"] == "heard 16000 samples"


def test_cli_no_ui_reaches_the_server_options(monkeypatch, fun_asr_tiny):
    from typer.testing import CliRunner

    import asrctl.server.app as server_app
    from asrctl.cli.app import app

    seen: list[ServerOptions] = []
    monkeypatch.setattr(server_app, "serve", lambda model, options, engine: seen.append(options))
    for flags, expected in [((), True), (("--no-ui",), False)]:
        result = CliRunner().invoke(app, ["serve", "--model", str(fun_asr_tiny), *flags])
        assert result.exit_code == 0, result.output
        assert seen[-1].ui is expected


# ---- the page in a browser -------------------------------------------------------------


def _browser_paths() -> tuple[str, str]:
    """Chromium and its driver, or a skip naming what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need selenium: pip install -e '.[test]'")
    browser = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver",) if Path(p).exists()), None
    )
    if browser is None or driver is None:
        missing = " and ".join(
            n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None
        )
        pytest.skip(
            f"browser tests need {missing}: apt-get install chromium chromium-driver "
            "(./install.sh does where apt-get works)"
        )
    return browser, driver


def speech_bursts_wav(path: Path, sr: int = 48000) -> Path:
    """1.5 s of loud noise, then 1 s of silence: an utterance the endpointer opens, gives
    partials of (after 0.48 s) and locks (after 0.5 s of silence). Chromium loops it."""
    rng = np.random.default_rng(0)
    burst = 0.2 * rng.standard_normal(round(1.5 * sr))
    audio = np.concatenate([burst, np.zeros(sr)]).astype(np.float32)
    sf.write(path, audio, sr, subtype="PCM_16", format="WAV")
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    chromium, chromedriver = _browser_paths()
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("browser")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,1000",
        "--use-fake-ui-for-media-stream",  # grant the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech_bursts_wav(root / 'mic.wav')}",
        f"--user-data-dir={root / 'profile'}",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    except WebDriverException as e:
        pytest.skip(f"headless chromium ({chromium}) did not start: {e.msg}")
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], object], what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def text_of(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def open_page(driver, base_url: str) -> None:
    """Load the page, give it the key when it asks, and wait for the model's name."""
    from selenium.webdriver.common.by import By

    driver.get(base_url.removesuffix("/v1") + "/")
    wait_for(lambda: driver.find_element(By.ID, "key-panel").is_displayed(), "the key prompt")
    driver.find_element(By.ID, "key").send_keys(FAKE_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_for(lambda: "Fun-ASR-Nano" in text_of(driver, "model"), "the model's name")
    assert not driver.find_element(By.ID, "key-panel").is_displayed()


def shown_limits(driver) -> dict[str, str]:
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#limits div')]"
        ".map(d => [d.children[0].textContent, d.children[1].textContent]))"
    )


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def test_browser_uploads_a_file_and_downloads_srt(browser, fake_server, tmp_path):
    from selenium.webdriver.common.by import By

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    open_page(browser, fake_server)
    assert text_of(browser, "model") == "tiny · Fun-ASR-Nano"
    limits = shown_limits(browser)
    assert limits["audio"] == "up to 30 s a file" and limits["upload"] == "up to 25 MiB"
    assert limits["live"] == "/ws, 16 kHz PCM16, up to 100 sessions"
    assert limits["word times"] == "no" and limits["languages"] == "en, ja, ko, zh"
    audio = tmp_path / "talk <i>two.wav"  # markup in the name stays text
    audio.write_bytes(wav_bytes(2.0))
    browser.find_element(By.ID, "file").send_keys(str(audio))
    wait_for(lambda: "heard 32000 samples" in text_of(browser, "segments"), "the transcript")
    assert text_of(browser, "result-title") == audio.name
    assert browser.find_elements(By.CSS_SELECTOR, "#result-title i") == []
    assert "2.0 s of audio" in text_of(browser, "status")
    rows = browser.find_elements(By.CSS_SELECTOR, "#segments li")
    assert [r.text for r in rows] == ["0:00.0–0:02.0\nheard 32000 samples"]
    assert browser.find_element(By.ID, "player").is_displayed()
    screenshot(browser, tmp_path, "ui-file.png")

    browser.find_element(By.CSS_SELECTOR, "[data-format=srt]").click()
    # (the browser may replace < and > in the file's name)
    srt = wait_for(lambda: next(downloads.glob("talk*two.srt"), None), "the srt download")
    assert srt.read_text(encoding="utf-8") == (
        "1\n00:00:00,000 --> 00:00:02,000\nheard 32000 samples\n"
    )
    browser.find_element(By.CSS_SELECTOR, "[data-format=vtt]").click()
    vtt = wait_for(lambda: next(downloads.glob("talk*two.vtt"), None), "the vtt download")
    assert vtt.read_text(encoding="utf-8").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000")

    drop_file(browser, "dropped.wav", wav_bytes(3.0))  # dragged onto the page
    wait_for(lambda: "heard 48000 samples" in text_of(browser, "segments"), "the dropped file")
    assert text_of(browser, "result-title") == "dropped.wav"


DROP = """
const [name, data] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: 'audio/wav'}));
document.getElementById('drop').dispatchEvent(
  new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
"""


def drop_file(driver, name: str, data: bytes) -> None:
    import base64

    driver.execute_script(DROP, name, base64.b64encode(data).decode())


@contextlib.contextmanager
def serving(model: FakeModel, keys: tuple[str, ...] = (FAKE_KEY,)) -> Iterator[str]:
    """The app over ``model`` served by uvicorn in a thread (as conftest's fake_server)."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ServerOptions(served_model_names=("tiny",), api_keys=keys, port=port)
    app = create_app(ServerState.create(model, options, Path("/m"), Metrics()))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


def test_browser_shows_speakers_and_word_times_as_text(browser, tmp_path):
    from selenium.webdriver.common.by import By

    with serving(DiarizedModel()) as url:
        open_page(browser, url)
        assert shown_limits(browser)["word times"] == "yes"
        audio = tmp_path / "dialogue.wav"
        audio.write_bytes(wav_bytes(2.0))
        browser.find_element(By.ID, "file").send_keys(str(audio))
        wait_for(lambda: HOSTILE in text_of(browser, "segments"), "the transcript")
        rows = browser.find_elements(By.CSS_SELECTOR, "#segments li")
        assert [r.text.split("\n") for r in rows] == [
            ["0:00.0–0:01.2", "S0", "hello there"],
            ["0:01.3–0:02.0", "S1", HOSTILE],
        ]
        speakers = browser.find_elements(By.CSS_SELECTOR, "#segments .speaker")
        assert [s.get_attribute("class") for s in speakers] == ["speaker s0", "speaker s1"]
        assert browser.find_elements(By.CSS_SELECTOR, "#result img") == []
        assert browser.title == "asrctl"  # the markup's handler never ran
        browser.find_element(By.CSS_SELECTOR, "#words-box summary").click()
        words = browser.find_elements(By.CSS_SELECTOR, "#words .word")
        assert [w.text.split("\n") for w in words] == [
            ["hello", "0.10–0.50"],
            ["there", "0.60–1.10"],
        ]
        screenshot(browser, tmp_path, "ui-speakers.png")


def test_browser_sends_language_and_hotwords_and_shows_refusals(browser, tmp_path):
    """No key needed here: the page does not ask. Language and hotwords reach the model
    from an upload and from a live session; a refusal is shown, the page goes on."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    model = FakeModel()
    with serving(model, keys=()) as url:
        browser.get(url.removesuffix("/v1") + "/")
        wait_for(lambda: "Fun-ASR-Nano" in text_of(browser, "model"), "the model's name")
        assert not browser.find_element(By.ID, "key-panel").is_displayed()
        Select(browser.find_element(By.ID, "language")).select_by_value("en")
        browser.find_element(By.ID, "hotwords").send_keys("asrctl, vLLM")
        audio = tmp_path / "a.wav"
        audio.write_bytes(wav_bytes(1.0))
        browser.find_element(By.ID, "file").send_keys(str(audio))
        wait_for(lambda: "heard 16000 samples" in text_of(browser, "segments"), "the transcript")
        prompt = model.calls[-1][1]
        assert (prompt.language, prompt.hotwords) == ("en", ("asrctl", "vLLM"))

        browser.find_element(By.ID, "mic").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#segments li"), "live text")
        browser.find_element(By.ID, "mic").click()
        wait_for(lambda: text_of(browser, "mic") == "Start microphone", "the session to close")
        prompt = model.calls[-1][1]
        assert (prompt.language, prompt.hotwords) == ("en", ("asrctl", "vLLM"))

        hotwords = browser.find_element(By.ID, "hotwords")
        hotwords.clear()
        hotwords.send_keys("boom")  # the stand-in refuses it as too long a prompt
        browser.find_element(By.ID, "file").send_keys(str(audio))
        wait_for(lambda: "prompt too long" in text_of(browser, "status"), "the refusal")
        assert "error" in browser.find_element(By.ID, "status").get_attribute("class")


def test_browser_says_when_the_key_is_wrong(browser, fake_server):
    from selenium.webdriver.common.by import By

    browser.get(fake_server.removesuffix("/v1") + "/")
    wait_for(lambda: browser.find_element(By.ID, "key-panel").is_displayed(), "the key prompt")
    browser.find_element(By.ID, "key").send_keys("sk-wrong")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_for(lambda: "not accepted" in text_of(browser, "status"), "the refusal")
    assert browser.find_element(By.ID, "key").get_attribute("value") == ""  # not kept there
    assert text_of(browser, "model") == "API key needed"


def test_browser_rejects_a_file_over_the_limit_without_sending_it(browser, fake_server, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, fake_server)
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (26 << 20))  # the fixture's limit is 25 MiB
    browser.find_element(By.ID, "file").send_keys(str(big))
    wait_for(lambda: "upload limit of 25 MiB" in text_of(browser, "status"), "the refusal")
    assert not browser.find_element(By.ID, "result").is_displayed()


# record every partial and every locked sentence as the page shows them
OBSERVE = """
window.seen = [];
const note = () => {
  const partial = document.getElementById('partial').textContent;
  const locked = document.querySelectorAll('#segments li').length;
  const last = window.seen[window.seen.length - 1];
  if (!last || last.partial !== partial || last.locked !== locked) {
    window.seen.push({partial, locked});
  }
};
new MutationObserver(note).observe(
  document.getElementById('result'), {subtree: true, childList: true, characterData: true});
"""


def test_browser_microphone_shows_partial_then_locked_text(browser, fake_server, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, fake_server)
    browser.execute_script(OBSERVE)
    browser.find_element(By.ID, "mic").click()
    wait_for(lambda: text_of(browser, "mic") == "Stop", "the live session to start")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#segments li"), "a locked sentence")
    screenshot(browser, tmp_path, "ui-live.png")
    seen = browser.execute_script("return window.seen")
    partials = [s for s in seen if s["partial"]]
    assert partials, f"no partial text was shown: {seen}"
    assert partials[0]["locked"] == 0  # the partial came before the sentence locked
    assert re.fullmatch(r"heard \d+ samples", partials[0]["partial"])
    sentence = browser.find_element(By.CSS_SELECTOR, "#segments li .text").text
    # the utterance is 1.5 s of noise at 16 kHz plus padding: about 24000 samples
    samples = int(re.fullmatch(r"heard (\d+) samples", sentence).group(1))
    assert 16000 < samples < 48000, sentence

    browser.find_element(By.ID, "mic").click()  # stop: the final result, then closed
    wait_for(lambda: text_of(browser, "status").startswith("Done:"), "the final result")
    wait_for(lambda: text_of(browser, "mic") == "Start microphone", "the session to close")
    assert text_of(browser, "partial") == ""


@pytest.mark.vllm
def test_browser_through_asrctl_serve_shows_the_models_text(browser, fun_asr_tiny, tmp_path):
    """The page on ``python -m asrctl serve`` (real vLLM, tiny fixture): an upload shows
    the text the API gives for the same file, and the microphone shows partial, then
    locked text."""
    import httpx
    from liveserver import live_server
    from selenium.webdriver.common.by import By

    args = ["--model", str(fun_asr_tiny), "--served-model-name", "tiny", "--api-key", FAKE_KEY]
    args += ["--max-tokens", "8", "--dtype", "float32", "--enforce-eager"]
    args += ["--max-model-len", "1024"]
    with live_server(args, tmp_path / "server.log") as server:
        audio = tmp_path / "clip.wav"
        audio.write_bytes(wav_bytes(2.0))
        expected = httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("clip.wav", audio.read_bytes())},
            headers={"Authorization": f"Bearer {FAKE_KEY}"},
            timeout=120,
        ).json()["text"]
        assert expected.strip()
        open_page(browser, f"{server.url}/v1")
        browser.find_element(By.ID, "file").send_keys(str(audio))
        wait_for(lambda: text_of(browser, "status").startswith("clip.wav:"), "the transcript", 120)
        texts = browser.find_elements(By.CSS_SELECTOR, "#segments li .text")
        assert [t.get_attribute("textContent") for t in texts] == [expected]
        screenshot(browser, tmp_path, "ui-serve-file.png")

        browser.execute_script(OBSERVE)
        browser.find_element(By.ID, "mic").click()
        wait_for(lambda: text_of(browser, "result-title") == "Live", "the live session")
        locked = "#segments li .text"
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, locked), "a locked sentence", 120)
        seen = browser.execute_script("return window.seen")
        partials = [s for s in seen if s["partial"]]
        assert partials and partials[0]["locked"] == 0, seen
        assert browser.find_element(By.CSS_SELECTOR, locked).get_attribute("textContent")
        screenshot(browser, tmp_path, "ui-serve-live.png")
        browser.find_element(By.ID, "mic").click()
        wait_for(lambda: text_of(browser, "status").startswith("Done:"), "the final result", 120)
