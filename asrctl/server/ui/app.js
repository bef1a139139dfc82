// asrctl's page: a file goes to POST /v1/audio/transcriptions (verbose_json), the
// microphone streams 16 kHz PCM16 over /ws (FunASR's realtime protocol). Transcript text
// only ever reaches the page through textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), keyPanel: $("key-panel"), keyForm: $("key-form"), key: $("key"),
  info: $("info"), limits: $("limits"), language: $("language"), hotwords: $("hotwords"),
  drop: $("drop"), file: $("file"), player: $("player"), mic: $("mic"), level: $("level"),
  micHint: $("mic-hint"), status: $("status"), result: $("result"),
  resultTitle: $("result-title"), segments: $("segments"), partial: $("partial"),
  wordsBox: $("words-box"), words: $("words"), notes: $("notes"),
};

let apiKey = null; // in memory only
let info = null; // GET /ui/info
let transcript = null; // {name, text, segments: [{start, end, text, speaker}], words, json}
let live = null; // the open microphone session

// ---- server info and the API key -------------------------------------------------------

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

async function loadInfo() {
  let response;
  try {
    response = await fetch("/ui/info", { headers: authHeaders() });
  } catch (e) {
    ui.model.textContent = "server unreachable";
    return setStatus(`Cannot reach the server: ${e.message}`, "error");
  }
  if (response.status === 401) {
    ui.model.textContent = "API key needed";
    ui.keyPanel.hidden = false;
    ui.key.focus();
    if (apiKey) setStatus("That key was not accepted.", "error");
    apiKey = null;
    return;
  }
  if (!response.ok) return setStatus(await errorText(response), "error");
  info = await response.json();
  ui.keyPanel.hidden = true;
  setStatus("");
  showInfo();
}

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = ui.key.value.trim() || null;
  ui.key.value = "";
  loadInfo();
});

function showInfo() {
  ui.model.textContent = `${info.models.join(", ")} · ${info.title}`;
  ui.model.title = `family ${info.family}, ${info.sample_rate} Hz`;
  const rows = [
    ["upload", `up to ${info.max_upload_mb} MiB`],
    ["audio", (info.max_audio_seconds ? `up to ${info.max_audio_seconds} s a file` : "any length")
      + (info.vad ? ", split at pauses" : "")],
    ["languages", info.languages.length ? info.languages.join(", ") : "detected by the model"],
    ["hotwords", info.hotwords ? "yes" : "no"],
    ["word times", info.word_timestamps ? "yes" : "no"],
    ["live", `${info.realtime.path}, ${info.realtime.sample_rate / 1000} kHz PCM16` +
      (info.realtime.max_sessions ? `, up to ${info.realtime.max_sessions} sessions` : "")],
  ];
  ui.limits.replaceChildren();
  for (const [name, value] of rows) {
    const pair = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    pair.append(dt, dd);
    ui.limits.append(pair);
  }
  ui.info.hidden = false;
  ui.language.replaceChildren(option("", "auto"));
  for (const code of info.languages) ui.language.append(option(code, code));
  ui.language.disabled = info.languages.length === 0;
  ui.hotwords.disabled = !info.hotwords;
  if (!info.hotwords) ui.hotwords.placeholder = `${info.title} takes no hotwords`;
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function setStatus(text, kind = "") {
  ui.status.textContent = text;
  ui.status.className = `status ${kind}`;
}

// ---- a file ----------------------------------------------------------------------------

ui.file.addEventListener("change", () => {
  if (ui.file.files.length) transcribeFile(ui.file.files[0]);
  ui.file.value = "";
});
for (const name of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(name, (e) => { e.preventDefault(); ui.drop.classList.add("over"); });
}
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
// a file dropped anywhere on the page is taken (and never opened in place of the page)
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("over");
  if (e.dataTransfer.files.length) transcribeFile(e.dataTransfer.files[0]);
});

let uploads = 0; // the latest upload wins: an earlier one's late answer is dropped

async function transcribeFile(file) {
  if (!info) return setStatus("Not connected to the server yet.", "error");
  if (live) return setStatus("Stop the microphone first.", "error");
  if (file.size > info.max_upload_mb * 1048576) {
    return setStatus(`${file.name} is larger than the upload limit of ${info.max_upload_mb} MiB.`,
      "error");
  }
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", info.models[0]);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "segment");
  if (info.word_timestamps) form.append("timestamp_granularities[]", "word");
  if (ui.language.value) form.append("language", ui.language.value);
  if (ui.hotwords.value.trim() && info.hotwords) form.append("hotwords", ui.hotwords.value);
  const ticket = ++uploads;
  showPlayer(file);
  setStatus(`Transcribing ${file.name}…`, "busy");
  const began = performance.now();
  let response;
  try {
    response = await fetch("/v1/audio/transcriptions", {
      method: "POST", headers: authHeaders(), body: form,
    });
  } catch (e) {
    if (ticket === uploads) setStatus(`Upload failed: ${e.message}`, "error");
    return;
  }
  if (ticket !== uploads) return;
  if (response.status === 401) { loadInfo(); return setStatus(await errorText(response), "error"); }
  if (!response.ok) return setStatus(`${file.name}: ${await errorText(response)}`, "error");
  const body = await response.json();
  if (ticket !== uploads) return;
  const seconds = (performance.now() - began) / 1000;
  setStatus(`${file.name}: ${body.duration.toFixed(1)} s of audio in ${seconds.toFixed(1)} s.`,
    "done");
  transcript = {
    name: baseName(file.name),
    text: body.text,
    segments: body.segments.map((s) => ({
      start: s.start, end: s.end, text: s.text, speaker: s.speaker ?? null,
    })),
    words: body.words || null,
    json: body,
  };
  showTranscript(file.name, (body.notes || []).join(" "));
}

function showPlayer(file) {
  if (ui.player.src) URL.revokeObjectURL(ui.player.src);
  ui.player.src = URL.createObjectURL(file);
  ui.player.hidden = false;
}

function baseName(name) {
  return name.replace(/\.[^.]*$/, "") || "transcript";
}

// ---- showing a transcript --------------------------------------------------------------

function showTranscript(title, notes) {
  ui.result.hidden = false;
  ui.resultTitle.textContent = title;
  ui.segments.replaceChildren(...transcript.segments.map(segmentRow));
  ui.partial.textContent = "";
  ui.notes.textContent = notes || "";
  ui.words.replaceChildren();
  ui.wordsBox.hidden = !transcript.words;
  if (transcript.words) {
    for (const w of transcript.words) {
      const span = document.createElement("span");
      span.className = "word";
      span.textContent = w.word;
      const time = document.createElement("small");
      time.textContent = `${w.start.toFixed(2)}–${w.end.toFixed(2)}`;
      span.append(time);
      span.addEventListener("click", () => seek(w.start));
      ui.words.append(span);
    }
  }
}

function segmentRow(segment) {
  const li = document.createElement("li");
  const time = document.createElement("button");
  time.type = "button";
  time.className = "time";
  time.textContent = `${shortClock(segment.start)}–${shortClock(segment.end)}`;
  time.addEventListener("click", () => seek(segment.start));
  li.append(time);
  if (segment.speaker !== null && segment.speaker !== undefined) {
    const speaker = document.createElement("span");
    speaker.className = `speaker s${speakerIndex(segment.speaker) % 6}`;
    const label = `${segment.speaker}`;
    speaker.textContent = /^\d+$/.test(label) ? `S${label}` : label;
    speaker.title = `speaker ${label}`;
    li.append(speaker);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = segment.text;
  li.append(text);
  return li;
}

const speakers = new Map();
function speakerIndex(speaker) {
  if (!speakers.has(speaker)) speakers.set(speaker, speakers.size);
  return speakers.get(speaker);
}

function seek(seconds) {
  if (ui.player.hidden || !ui.player.src) return;
  ui.player.currentTime = seconds;
  ui.player.play().catch(() => {});
}

function shortClock(seconds) {
  const m = Math.floor(seconds / 60);
  const s = (seconds - m * 60).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

// ---- downloads: built here from the transcript (as the server's writers build them) ----

for (const button of document.querySelectorAll("[data-format]")) {
  button.addEventListener("click", () => download(button.dataset.format));
}

function download(format) {
  if (!transcript) return;
  const files = {
    txt: () => [transcript.text + "\n", "text/plain"],
    srt: () => [srt(transcript.segments), "application/x-subrip"],
    vtt: () => [vtt(transcript.segments), "text/vtt"],
    json: () => [JSON.stringify(transcript.json, null, 2) + "\n", "application/json"],
  };
  const [body, type] = files[format]();
  const url = URL.createObjectURL(new Blob([body], { type: `${type};charset=utf-8` }));
  const a = document.createElement("a");
  a.href = url;
  a.download = `${transcript.name}.${format}`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function clock(seconds, mark) {
  let ms = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(ms / 3600000); ms -= h * 3600000;
  const m = Math.floor(ms / 60000); ms -= m * 60000;
  const s = Math.floor(ms / 1000); ms -= s * 1000;
  const two = (n) => String(n).padStart(2, "0");
  return `${two(h)}:${two(m)}:${two(s)}${mark}${String(ms).padStart(3, "0")}`;
}

function cueText(text) {
  // a cue cannot hold a blank line or the --> arrow
  return text.replaceAll("-->", "->").split(/\r?\n/).map((l) => l.trim()).filter(Boolean)
    .join("\n");
}

function cues(segments) {
  return segments.filter((s) => s.text.trim());
}

function srt(segments) {
  return cues(segments).map((s, i) =>
    `${i + 1}\n${clock(s.start, ",")} --> ${clock(s.end, ",")}\n${cueText(s.text)}\n`,
  ).join("\n");
}

function vtt(segments) {
  return "WEBVTT\n\n" + cues(segments).map((s) =>
    `${clock(s.start, ".")} --> ${clock(s.end, ".")}\n${cueText(s.text)}\n`,
  ).join("\n");
}

// ---- the microphone over /ws -----------------------------------------------------------

ui.mic.addEventListener("click", () => (live ? stopLive() : startLive()));

async function startLive() {
  if (!info) return setStatus("Not connected to the server yet.", "error");
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    return setStatus("The microphone needs a secure page: open it as https:// or on " +
      "localhost / 127.0.0.1.", "error");
  }
  ui.mic.disabled = true;
  setStatus("Asking for the microphone…", "busy");
  const session = { ws: null, stream: null, context: null, started: false, sentences: 0 };
  live = session;
  try {
    // made within the click, so that autoplay rules let it run
    session.context = new AudioContext();
    session.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false },
    });
    await session.context.audioWorklet.addModule("/ui/mic-worklet.js");
    if (session.context.state === "suspended") await session.context.resume();
    const node = new AudioWorkletNode(session.context, "pcm16-resampler", {
      processorOptions: { targetRate: info.realtime.sample_rate },
    });
    node.port.onmessage = (e) => onAudio(session, e.data);
    session.context.createMediaStreamSource(session.stream).connect(node);
    node.connect(session.context.destination); // silent: keeps the node pulled
  } catch (e) {
    closeLive(session);
    return setStatus(`No microphone: ${e.message}`, "error");
  }
  openSocket(session);
}

function openSocket(session) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = apiKey ? `?api_key=${encodeURIComponent(apiKey)}` : "";
  const ws = new WebSocket(`${scheme}://${location.host}${info.realtime.path}${query}`);
  session.ws = ws;
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    if (ui.language.value) ws.send(`LANGUAGE:${ui.language.value}`);
    if (info.hotwords && ui.hotwords.value.trim()) {
      ws.send(`HOTWORDS:${ui.hotwords.value.split(/[,，、;；\n]+/).map((w) => w.trim())
        .filter(Boolean).join(",")}`);
    }
    ws.send("START");
  };
  ws.onmessage = (e) => onMessage(session, JSON.parse(e.data));
  ws.onclose = (e) => {
    if (live === session && !session.stopping && session.error) {
      setStatus(`${session.error} (the live session was closed)`, "error");
    } else if (live === session && !session.stopping) {
      setStatus(session.started ? `The live session ended (${e.code}${e.reason ? ": " +
        e.reason : ""}).` : "Could not open the live session (wrong API key, or the " +
        "server is at its session limit).", "error");
    }
    closeLive(session);
  };
}

function onAudio(session, message) {
  if (message.level !== undefined) {
    ui.level.style.width = `${Math.min(100, Math.round(message.level * 100))}%`;
  }
  if (message.pcm && session.started && session.ws.readyState === WebSocket.OPEN) {
    session.ws.send(message.pcm);
  }
}

function onMessage(session, message) {
  if (message.event === "started") {
    session.started = true;
    ui.mic.disabled = false;
    ui.mic.textContent = "Stop";
    ui.mic.classList.add("on");
    setStatus("Listening…", "live");
    ui.player.hidden = true; // live times are not the file's
    transcript = { name: "live", text: "", segments: [], words: null, json: null };
    showTranscript("Live", "");
  } else if (message.event === "error") {
    session.error = message.error;
    setStatus(message.error, "error");
  } else if (message.event === "stopped") {
    session.stopping = true;
    session.ws.close();
  } else if (message.sentences) {
    showLive(session, message);
  }
}

function showLive(session, message) {
  for (const s of message.sentences.slice(session.sentences)) {
    ui.segments.append(segmentRow({ start: s.start / 1000, end: s.end / 1000, text: s.text }));
  }
  session.sentences = message.sentences.length;
  ui.partial.textContent = message.partial;
  const segments = message.sentences.map((s) => ({
    start: s.start / 1000, end: s.end / 1000, text: s.text, speaker: null,
  }));
  transcript.segments = segments;
  transcript.text = segments.map((s) => s.text).join("\n");
  transcript.json = {
    text: transcript.text, duration: message.duration_ms / 1000,
    segments: segments.map(({ start, end, text }) => ({ start, end, text })),
  };
  if (message.is_final) setStatus(`Done: ${(message.duration_ms / 1000).toFixed(1)} s.`, "done");
}

function stopLive() {
  const session = live;
  if (!session) return;
  ui.mic.disabled = true;
  setStatus("Finishing…", "busy");
  stopCapture(session);
  if (session.ws && session.ws.readyState === WebSocket.OPEN && session.started) {
    session.ws.send("STOP"); // the final result, then {"event": "stopped"}
    setTimeout(() => { session.stopping = true; closeLive(session); }, 30000);
  } else {
    session.stopping = true;
    closeLive(session);
  }
}

function stopCapture(session) {
  if (session.stream) session.stream.getTracks().forEach((t) => t.stop());
  if (session.context) session.context.close().catch(() => {});
  session.stream = null;
  session.context = null;
  ui.level.style.width = "0";
}

function closeLive(session) {
  stopCapture(session);
  if (session.ws && session.ws.readyState <= WebSocket.OPEN) session.ws.close();
  if (live !== session) return;
  live = null;
  ui.mic.disabled = false;
  ui.mic.textContent = "Start microphone";
  ui.mic.classList.remove("on");
}

loadInfo();
