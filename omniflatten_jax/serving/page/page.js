// The page of the live server: microphone in, the assistant's audio and text out (protocol 1,
// README "Talking to a model"). Plain JavaScript, no build step.
"use strict";

const RATE = 16000;
const SEND_SAMPLES = 640;       // 40 ms of microphone per message
const JITTER_S = 0.12;          // playback starts this far ahead of the clock
const TIMELINE_FRAMES = 400;    // 16 s of 40 ms frames across the canvas

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, ctx: null, stream: null, node: null, pending: null,
  sent: [], received: [], playing: [], nextTime: 0,
  user: [], assistant: [], chunks: 0, late: 0,
};

// The recorder runs in the audio thread: it posts each block of the microphone, as captured.
const CAPTURE = `
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("capture", Capture);`;

function status(text) { $("status").textContent = text; }

async function start() {
  $("start").disabled = true;
  $("download").hidden = true;
  Object.assign(state, { sent: [], received: [], user: [], assistant: [], chunks: 0, late: 0 });
  state.ctx = new AudioContext({ sampleRate: RATE });
  state.stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true,
             channelCount: 1 } });
  const url = URL.createObjectURL(new Blob([CAPTURE], { type: "text/javascript" }));
  await state.ctx.audioWorklet.addModule(url);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  state.ws = new WebSocket(`${proto}//${location.host}/ws${location.search}`);
  state.ws.binaryType = "arraybuffer";
  state.ws.onopen = () => state.ws.send(JSON.stringify(
    { type: "hello", protocol: 1, sample_rate: RATE }));
  state.ws.onmessage = (event) => receive(event.data);
  state.ws.onclose = (event) => finish(event.reason || "the server closed the conversation");
  status("Connecting...");
}

function capture() {
  const source = state.ctx.createMediaStreamSource(state.stream);
  state.node = new AudioWorkletNode(state.ctx, "capture");
  let block = new Float32Array(0);
  state.node.port.onmessage = (event) => {
    const joined = new Float32Array(block.length + event.data.length);
    joined.set(block); joined.set(event.data, block.length);
    block = joined;
    while (block.length >= SEND_SAMPLES) {
      const piece = block.slice(0, SEND_SAMPLES);
      block = block.slice(SEND_SAMPLES);
      const pcm = new Int16Array(SEND_SAMPLES);
      for (let i = 0; i < SEND_SAMPLES; i++) {
        pcm[i] = Math.max(-32768, Math.min(32767, Math.round(piece[i] * 32767)));
      }
      state.sent.push(pcm);
      if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(pcm.buffer);
    }
  };
  source.connect(state.node);
}

function receive(data) {
  if (data instanceof ArrayBuffer) return play(new Int16Array(data));
  const m = JSON.parse(data);
  if (m.type === "ready") {
    status(`Talking to ${m.stage} (slot ${m.slot}, chunks of ${m.chunk_samples / RATE * 1000} ms).`);
    $("transcript").textContent = m.text ? "" : `${m.stage} has no text stream: it only speaks.`;
    $("end").disabled = false;
    capture();
  } else if (m.type === "chunk") {
    state.pending = m;
    state.chunks += 1;
    $("chunks").textContent = state.chunks;
    $("step").textContent = `${m.step_ms} ms`;
    for (const c of m.user) state.user.push(c === "1");
    for (const c of m.assistant) state.assistant.push(c === "1");
    if (m.text) $("transcript").textContent += m.text;
    draw();
  } else if (m.type === "late") {
    state.late = m.chunks;
    $("late").textContent = state.late;
  } else if (m.type === "barge_in") {
    flush();
  } else if (m.type === "latency") {
    $("latency").textContent = `${m.turn_ms} ms (server: ${m.first_audio_ms} ms after its turn)`;
  } else if (m.type === "refused" || m.type === "end") {
    if (state.ctx) finish(m.reason);  // not after the user's own "end"
  }
}

function play(pcm) {
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  state.received.push(pcm);
  let silent = true;
  for (let i = 0; i < pcm.length && silent; i++) silent = pcm[i] === 0;
  if (silent) return;
  const buffer = state.ctx.createBuffer(1, samples.length, RATE);
  buffer.copyToChannel(samples, 0);
  const source = state.ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(state.ctx.destination);
  const now = state.ctx.currentTime;
  if (state.nextTime < now + JITTER_S) state.nextTime = now + JITTER_S;
  source.start(state.nextTime);
  state.nextTime += buffer.duration;
  state.playing.push(source);
  source.onended = () => { state.playing = state.playing.filter((s) => s !== source); };
}

// Barge-in: the model stopped because the user cut in; what is queued is no longer wanted.
function flush() {
  for (const source of state.playing) source.stop();
  state.playing = [];
  state.nextTime = 0;
}

function draw() {
  const canvas = $("timeline"), g = canvas.getContext("2d");
  const w = canvas.width / TIMELINE_FRAMES, first = Math.max(0, state.user.length - TIMELINE_FRAMES);
  g.clearRect(0, 0, canvas.width, canvas.height);
  for (let i = first; i < state.user.length; i++) {
    const x = (i - first) * w;
    if (state.user[i]) { g.fillStyle = "#3b7dd8"; g.fillRect(x, 8, Math.ceil(w), 24); }
    if (state.assistant[i]) { g.fillStyle = "#e0792b"; g.fillRect(x, 40, Math.ceil(w), 24); }
  }
}

function end() {
  $("end").disabled = true;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ type: "end" }));
  }
  finish("Ended.");
}

function finish(reason) {
  if (!state.ctx) return;
  if (state.node) state.node.port.onmessage = null;
  if (state.stream) for (const t of state.stream.getTracks()) t.stop();
  flush();
  state.ctx.close();
  state.ctx = null;
  status(reason);
  offerRecording();
  $("start").disabled = false;
  $("end").disabled = true;
}

// Both channels as the server saw them, chunk for chunk: left the user, right the assistant.
function offerRecording() {
  const chunkSamples = state.received.length ? state.received[0].length : 0;
  const length = state.received.length * chunkSamples;
  if (!length) return;
  const user = concat(state.sent, length), assistant = concat(state.received, length);
  const bytes = new DataView(new ArrayBuffer(44 + 4 * length));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) bytes.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); bytes.setUint32(4, 36 + 4 * length, true); text(8, "WAVE");
  text(12, "fmt "); bytes.setUint32(16, 16, true); bytes.setUint16(20, 1, true);
  bytes.setUint16(22, 2, true); bytes.setUint32(24, RATE, true); bytes.setUint32(28, RATE * 4, true);
  bytes.setUint16(32, 4, true); bytes.setUint16(34, 16, true);
  text(36, "data"); bytes.setUint32(40, 4 * length, true);
  for (let i = 0; i < length; i++) {
    bytes.setInt16(44 + 4 * i, user[i], true);
    bytes.setInt16(46 + 4 * i, assistant[i], true);
  }
  const link = $("download");
  link.href = URL.createObjectURL(new Blob([bytes], { type: "audio/wav" }));
  link.hidden = false;
  link.click();
}

function concat(pieces, length) {
  const out = new Int16Array(length);
  let at = 0;
  for (const p of pieces) {
    if (at >= length) break;
    out.set(p.subarray(0, Math.min(p.length, length - at)), at);
    at += p.length;
  }
  return out;
}

$("start").onclick = () => start().catch((e) => { status(`Could not start: ${e.message}`); $("start").disabled = false; });
$("end").onclick = end;
