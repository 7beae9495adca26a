// Browser client of `lipsync serve`: the wire protocol is docs/streaming-protocol.md.
// Plain JavaScript, no build step, no external resources.
"use strict";

const SAMPLE_RATE = 16000; // the protocol's PCM: 16 kHz mono s16le
const SEND_CHUNK_SECONDS = 0.1; // audio per WebSocket message
const SEND_AHEAD_SECONDS = 0.5; // a file's audio is sent at most this far ahead of real time
const PLAYBACK_LEAD_SECONDS = 0.15; // jitter buffer before the first frame of a speech run plays
const LATE_MARGIN_SECONDS = 0.01; // audio scheduled closer to "now" than this restarts the run
const FPS_WINDOW_MS = 1000;
const HEADER_LENGTH_BYTES = 4; // u32 LE length of the frame header JSON
const SAFETY_TICK_MS = 250; // keeps the draw queue moving when animation frames are throttled
const S16_MAX = 32767;
const CAPTURE_PROCESSOR = "lipsync-capture";

const els = {
  avatarSelect: document.getElementById("avatar-select"),
  connect: document.getElementById("connect"),
  audioFile: document.getElementById("audio-file"),
  send: document.getElementById("send"),
  mic: document.getElementById("mic"),
  status: document.getElementById("status"),
  error: document.getElementById("error"),
  canvas: document.getElementById("canvas"),
  banner: document.getElementById("untrained-banner"),
  avatarInfo: document.getElementById("avatar-info"),
  framesReceived: document.getElementById("frames-received"),
  frameKinds: document.getElementById("frame-kinds"),
  fps: document.getElementById("fps"),
  dropped: document.getElementById("dropped"),
  audioSent: document.getElementById("audio-sent"),
};
const canvasContext = els.canvas.getContext("2d");
const token = new URLSearchParams(window.location.search).get("token");
if (token) document.getElementById("dub-link").href = `dub?token=${encodeURIComponent(token)}`;
const textDecoder = new TextDecoder();

// Counters for people and for tests (tests/test_browser.py reads them).
function freshStats() {
  return {
    connected: false,
    ready: null, // the server's "ready" message
    framesReceived: 0,
    speechFrames: 0,
    idleFrames: 0,
    idleFramesBeforeSpeech: 0, // idle frames received before the first speech frame
    framesDrawn: 0,
    speechFramesShown: 0, // speech frames whose audio started (drawn, or passed over by a newer due frame)
    audioSamplesScheduled: 0,
    audioSamplesSent: 0,
    lastIndex: -1,
    lastSpeechIndex: -1,
    dropped: 0,
    fps: 0,
    sendsCompleted: 0, // speech turns ended with {"type": "end"}
  };
}
const stats = freshStats();
window.lipsyncStats = stats;

const session = {
  socket: null,
  audio: null, // AudioContext: the clock that speech frames are drawn on
  playhead: 0, // audio-clock time where the next speech frame's sound starts
  drawQueue: [], // {when, bitmap, speech}, in order of `when`
  frameChain: Promise.resolve(), // frames are decoded and scheduled strictly in order
  receiveTimes: [],
  sending: false,
  mic: null, // {stream, source, node} while the microphone is on
  captureLoaded: false, // the capture worklet module is registered with `audio`
};

// ---------------------------------------------------------------------------------------------
// REST and connection

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadAvatars() {
  try {
    const response = await fetch("api/avatars", { headers: authHeaders() });
    const body = await response.json();
    if (!response.ok) throw new Error(describeError(body, response.status));
    els.avatarSelect.replaceChildren();
    for (const avatar of body.avatars) {
      const option = document.createElement("option");
      option.value = avatar.name;
      option.textContent = `${avatar.name} (${avatar.width}×${avatar.height}, ${avatar.fps} fps)`;
      els.avatarSelect.append(option);
    }
    if (body.avatars.length === 0) {
      els.avatarSelect.append(new Option("no avatars prepared yet", ""));
      showError("No avatars on the server: prepare one with POST /api/avatars.");
    }
    els.avatarSelect.disabled = body.avatars.length === 0;
    els.connect.disabled = body.avatars.length === 0;
  } catch (error) {
    showError(`Could not list avatars: ${error.message}`);
  }
}

function describeError(body, status) {
  if (body && body.error) return body.fix ? `${body.error} (fix: ${body.fix})` : body.error;
  return `HTTP ${status}`;
}

function socketUrl(avatar) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const base = new URL(`ws/${encodeURIComponent(avatar)}`, window.location.href);
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  return `${scheme}//${base.host}${base.pathname}${query}`;
}

function connect() {
  const avatar = els.avatarSelect.value;
  if (!avatar) return;
  // Created on a click, so the browser lets it play sound.
  if (!session.audio) session.audio = new AudioContext();
  session.audio.resume();
  resetSession();
  showError("");
  setStatus(`connecting to ${avatar}…`);
  const socket = new WebSocket(socketUrl(avatar));
  socket.binaryType = "arraybuffer";
  // Events of an older socket that is still closing are ignored.
  socket.onmessage = (event) => session.socket === socket && onMessage(event.data);
  socket.onclose = (event) => session.socket === socket && onClose(event);
  socket.onerror = () => session.socket === socket && setStatus("connection error");
  session.socket = socket;
  els.connect.textContent = "Disconnect";
  els.avatarSelect.disabled = true;
}

function disconnect() {
  stopMic(false);
  if (session.socket) session.socket.close(1000, "client disconnect");
}

function onClose(event) {
  stopMic(false);
  session.socket = null;
  session.sending = false;
  stats.connected = false;
  const reason = event.reason ? `: ${event.reason}` : "";
  setStatus(`disconnected (code ${event.code}${reason})`);
  els.connect.textContent = "Connect";
  els.avatarSelect.disabled = false;
  updateControls();
}

function resetSession() {
  for (const item of session.drawQueue) item.bitmap.close();
  session.drawQueue = [];
  session.playhead = 0;
  session.receiveTimes = [];
  session.frameChain = Promise.resolve();
  Object.assign(stats, freshStats());
  els.banner.hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Messages from the server

function onMessage(data) {
  if (typeof data === "string") {
    onTextMessage(JSON.parse(data));
    return;
  }
  const frame = parseFrame(data);
  countFrame(frame.header);
  session.frameChain = session.frameChain.then(() => presentFrame(frame)).catch((error) => {
    showError(`Could not show a frame: ${error.message}`);
  });
}

function onTextMessage(message) {
  if (message.type === "ready") {
    stats.ready = message;
    stats.connected = true;
    els.canvas.width = message.width;
    els.canvas.height = message.height;
    els.canvas.style.aspectRatio = `${message.width} / ${message.height}`;
    els.banner.hidden = !message.untrained;
    els.avatarInfo.textContent =
      `${message.avatar}: ${message.width}×${message.height}, ${message.fps} fps` +
      (message.untrained ? ", UNTRAINED weights" : "");
    setStatus("connected");
    updateControls();
  } else if (message.type === "error") {
    showError(describeError(message, "?"));
  }
}

// [u32 LE header length][header JSON][JPEG bytes][PCM s16le bytes]
function parseFrame(buffer) {
  const view = new DataView(buffer);
  const headerLength = view.getUint32(0, true);
  const header = JSON.parse(textDecoder.decode(new Uint8Array(buffer, HEADER_LENGTH_BYTES, headerLength)));
  const jpegStart = HEADER_LENGTH_BYTES + headerLength;
  const jpeg = new Blob([new Uint8Array(buffer, jpegStart, header.jpeg_bytes)], { type: "image/jpeg" });
  const pcmStart = jpegStart + header.jpeg_bytes;
  const samples = new Float32Array(header.audio_bytes / 2);
  for (let i = 0; i < samples.length; i++) {
    samples[i] = view.getInt16(pcmStart + 2 * i, true) / (S16_MAX + 1);
  }
  return { header, jpeg, samples };
}

function countFrame(header) {
  stats.framesReceived += 1;
  stats.lastIndex = header.index;
  stats.dropped = header.dropped;
  if (header.speech) {
    stats.speechFrames += 1;
    stats.lastSpeechIndex = header.index;
  } else {
    stats.idleFrames += 1;
    if (stats.speechFrames === 0) stats.idleFramesBeforeSpeech += 1;
  }
  const now = performance.now();
  session.receiveTimes.push(now);
  while (session.receiveTimes[0] < now - FPS_WINDOW_MS) session.receiveTimes.shift();
  stats.fps = (session.receiveTimes.length * 1000) / FPS_WINDOW_MS;
  updateCounters();
}

// Speech frames: their sound is scheduled back to back on the audio clock and the picture is drawn
// when its sound starts. Idle frames: drawn as they come, or after the speech already scheduled.
async function presentFrame(frame) {
  const bitmap = await createImageBitmap(frame.jpeg);
  if (!session.socket) {
    bitmap.close();
    return;
  }
  const audio = session.audio;
  const now = audio.currentTime;
  if (frame.header.speech) {
    if (session.playhead < now + LATE_MARGIN_SECONDS) session.playhead = now + PLAYBACK_LEAD_SECONDS;
    const when = session.playhead;
    const duration = frame.samples.length
      ? playSamples(frame.samples, when)
      : 1 / (stats.ready ? stats.ready.fps : 25);
    session.playhead += duration;
    enqueueDraw({ when, bitmap, speech: true });
  } else if (session.drawQueue.length === 0 && session.playhead <= now) {
    drawBitmap(bitmap);
  } else {
    enqueueDraw({ when: Math.max(session.playhead, now), bitmap, speech: false });
  }
}

function playSamples(samples, when) {
  const audio = session.audio;
  const buffer = audio.createBuffer(1, samples.length, SAMPLE_RATE);
  buffer.copyToChannel(samples, 0);
  const source = audio.createBufferSource();
  source.buffer = buffer;
  source.connect(audio.destination);
  source.start(when);
  stats.audioSamplesScheduled += samples.length;
  return buffer.duration;
}

function enqueueDraw(item) {
  const last = session.drawQueue[session.drawQueue.length - 1];
  // Only the newest idle frame waiting behind the speech matters.
  if (last && !last.speech && !item.speech) {
    last.bitmap.close();
    session.drawQueue[session.drawQueue.length - 1] = item;
  } else {
    session.drawQueue.push(item);
  }
}

function drawDueFrames() {
  if (session.audio) {
    const now = session.audio.currentTime;
    let due = null;
    while (session.drawQueue.length && session.drawQueue[0].when <= now) {
      const item = session.drawQueue.shift();
      if (item.speech) stats.speechFramesShown += 1;
      if (due) due.bitmap.close();
      due = item;
    }
    if (due) drawBitmap(due.bitmap);
  }
}

function drawBitmap(bitmap) {
  canvasContext.drawImage(bitmap, 0, 0, els.canvas.width, els.canvas.height);
  bitmap.close();
  stats.framesDrawn += 1;
}

function animationLoop() {
  drawDueFrames();
  window.requestAnimationFrame(animationLoop);
}

// ---------------------------------------------------------------------------------------------
// Speech from a file

async function sendFile() {
  const file = els.audioFile.files[0];
  if (!file || !isOpen()) return;
  session.sending = true;
  updateControls();
  showError("");
  try {
    setStatus(`decoding ${file.name}…`);
    const samples = await decodeToMono16k(await file.arrayBuffer());
    setStatus(`sending ${file.name} (${(samples.length / SAMPLE_RATE).toFixed(2)} s)`);
    await sendPaced(floatToS16le(samples));
    if (isOpen()) {
      session.socket.send(JSON.stringify({ type: "end" }));
      stats.sendsCompleted += 1;
      setStatus("connected");
    }
  } catch (error) {
    showError(`Could not send ${file.name}: ${error.message}`);
  } finally {
    session.sending = false;
    updateControls();
  }
}

// Decodes any format the browser knows, at 16 kHz (decodeAudioData resamples to its context's
// rate), then mixes the channels down to mono by rendering them into a one-channel context.
async function decodeToMono16k(encoded) {
  const decoded = await new OfflineAudioContext(1, 1, SAMPLE_RATE).decodeAudioData(encoded);
  const mixer = new OfflineAudioContext(1, decoded.length, SAMPLE_RATE);
  const source = mixer.createBufferSource();
  source.buffer = decoded;
  source.connect(mixer.destination);
  source.start();
  const rendered = await mixer.startRendering();
  return rendered.getChannelData(0);
}

function floatToS16le(samples) {
  const buffer = new ArrayBuffer(samples.length * 2);
  const view = new DataView(buffer);
  for (let i = 0; i < samples.length; i++) {
    const clamped = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(2 * i, Math.round(clamped * S16_MAX), true);
  }
  return buffer;
}

// Sends the PCM in SEND_CHUNK_SECONDS messages, no faster than real time plus SEND_AHEAD_SECONDS,
// the way a live source would (and so the server never holds much unprocessed audio).
async function sendPaced(pcm) {
  const chunkBytes = Math.round(SEND_CHUNK_SECONDS * SAMPLE_RATE) * 2;
  const start = performance.now();
  for (let offset = 0; offset < pcm.byteLength; offset += chunkBytes) {
    const sentSeconds = offset / 2 / SAMPLE_RATE;
    const waitMs = (sentSeconds - SEND_AHEAD_SECONDS) * 1000 - (performance.now() - start);
    if (waitMs > 0) await sleep(waitMs);
    if (!isOpen()) throw new Error("the connection closed while sending");
    const chunk = pcm.slice(offset, Math.min(offset + chunkBytes, pcm.byteLength));
    session.socket.send(chunk);
    countSent(chunk.byteLength / 2);
  }
}

function countSent(samples) {
  stats.audioSamplesSent += samples;
  els.audioSent.textContent = `${(stats.audioSamplesSent / SAMPLE_RATE).toFixed(1)} s`;
}

// ---------------------------------------------------------------------------------------------
// Speech from the microphone (browsers allow it on localhost and https only)

// Runs on the audio thread: hands every 128-sample block of the first input channel to the page.
const CAPTURE_WORKLET = `
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice());
    return true;
  }
}
registerProcessor("${CAPTURE_PROCESSOR}", CaptureProcessor);
`;

// Streaming resampler to 16 kHz: averages the input over each output sample's span (a box
// low-pass against aliasing) with linear weights at the span edges.
class Resampler {
  constructor(inputRate) {
    this.step = inputRate / SAMPLE_RATE; // input samples per output sample
    this.pending = new Float32Array(0);
    this.position = 0; // start of the next output span, in input samples from pending[0]
  }

  push(input) {
    const joined = new Float32Array(this.pending.length + input.length);
    joined.set(this.pending);
    joined.set(input, this.pending.length);
    const out = [];
    while (this.position + this.step <= joined.length) {
      out.push(averageOver(joined, this.position, this.position + this.step));
      this.position += this.step;
    }
    const keep = Math.floor(this.position);
    this.pending = joined.slice(keep);
    this.position -= keep;
    return Float32Array.from(out);
  }
}

// Mean of the piecewise-constant signal `x` over [from, to).
function averageOver(x, from, to) {
  let total = 0;
  let i = Math.floor(from);
  while (i < to) {
    const overlap = Math.min(i + 1, to) - Math.max(i, from);
    total += x[i] * overlap;
    i += 1;
  }
  return total / (to - from);
}

async function startMic() {
  const audio = session.audio;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  if (!session.captureLoaded) {
    const moduleUrl = URL.createObjectURL(new Blob([CAPTURE_WORKLET], { type: "text/javascript" }));
    try {
      await audio.audioWorklet.addModule(moduleUrl);
      session.captureLoaded = true;
    } finally {
      URL.revokeObjectURL(moduleUrl);
    }
  }
  const source = audio.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(audio, CAPTURE_PROCESSOR, { numberOfOutputs: 1 });
  const resampler = new Resampler(audio.sampleRate);
  const chunkSamples = Math.round(SEND_CHUNK_SECONDS * SAMPLE_RATE);
  let collected = [];
  let collectedLength = 0;
  node.port.onmessage = (event) => {
    const samples = resampler.push(event.data);
    collected.push(samples);
    collectedLength += samples.length;
    if (collectedLength < chunkSamples || !isOpen()) return;
    const all = new Float32Array(collectedLength);
    let offset = 0;
    for (const piece of collected) {
      all.set(piece, offset);
      offset += piece.length;
    }
    collected = [];
    collectedLength = 0;
    session.socket.send(floatToS16le(all));
    countSent(all.length);
  };
  source.connect(node);
  node.connect(audio.destination); // the node outputs silence; connected so that it is processed
  session.mic = { stream, source, node };
  setStatus("microphone on");
  updateControls();
}

function stopMic(sendEnd) {
  const mic = session.mic;
  if (!mic) return;
  session.mic = null;
  mic.node.port.onmessage = null;
  mic.source.disconnect();
  mic.node.disconnect();
  for (const track of mic.stream.getTracks()) track.stop();
  if (sendEnd && isOpen()) {
    session.socket.send(JSON.stringify({ type: "end" }));
    stats.sendsCompleted += 1;
    setStatus("connected");
  }
  updateControls();
}

async function toggleMic() {
  if (session.mic) {
    stopMic(true);
    return;
  }
  try {
    await startMic();
  } catch (error) {
    showError(`Could not use the microphone: ${error.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Page state

function isOpen() {
  return session.socket !== null && session.socket.readyState === WebSocket.OPEN;
}

function micAllowed() {
  const host = window.location.hostname;
  const local = host === "localhost" || host === "127.0.0.1" || host === "[::1]" || host === "::1";
  return local && window.isSecureContext && Boolean(navigator.mediaDevices);
}

function updateControls() {
  const ready = isOpen() && stats.connected;
  const busy = session.sending || session.mic !== null;
  els.send.disabled = !ready || busy || els.audioFile.files.length === 0;
  els.mic.hidden = !micAllowed();
  els.mic.disabled = !ready || session.sending;
  els.mic.textContent = session.mic ? "Stop microphone" : "Start microphone";
}

function updateCounters() {
  els.framesReceived.textContent = String(stats.framesReceived);
  els.frameKinds.textContent = `${stats.speechFrames} / ${stats.idleFrames}`;
  els.fps.textContent = stats.fps.toFixed(1);
  els.dropped.textContent = String(stats.dropped);
}

function setStatus(text) {
  els.status.textContent = text;
}

function showError(text) {
  els.error.textContent = text;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

els.connect.addEventListener("click", () => (session.socket ? disconnect() : connect()));
els.send.addEventListener("click", sendFile);
els.mic.addEventListener("click", toggleMic);
els.audioFile.addEventListener("change", updateControls);
window.setInterval(drawDueFrames, SAFETY_TICK_MS);
window.requestAnimationFrame(animationLoop);
updateControls();
loadAvatars();
