// The dubbing page of `lipsync serve`: choose a video (or photo) and a speech file, tune the face with a
// first-frame preview, run a dub job and play or download the result. Uses the REST API only
// (uploads, preview, dubs, jobs); plain JavaScript, no build step, no external resources.
"use strict";

const PREVIEW_DELAY_MS = 250; // a preview is asked for once the controls rest this long
const POLL_MS = 400; // how often a running job is asked about

const els = {
  videoFile: document.getElementById("video-file"),
  videoMedia: document.getElementById("video-media"),
  videoState: document.getElementById("video-state"),
  audioFile: document.getElementById("audio-file"),
  audioMedia: document.getElementById("audio-media"),
  audioState: document.getElementById("audio-state"),
  bboxShift: document.getElementById("bbox-shift"),
  bboxShiftValue: document.getElementById("bbox-shift-value"),
  extraMargin: document.getElementById("extra-margin"),
  extraMarginValue: document.getElementById("extra-margin-value"),
  faceIndex: document.getElementById("face-index"),
  silence: document.getElementById("silence"),
  start: document.getElementById("start"),
  jobStatus: document.getElementById("job-status"),
  progress: document.getElementById("progress"),
  error: document.getElementById("error"),
  preview: document.getElementById("preview"),
  previewInfo: document.getElementById("preview-info"),
  result: document.getElementById("result"),
  download: document.getElementById("download"),
  resultInfo: document.getElementById("result-info"),
  banner: document.getElementById("untrained-banner"),
  liveLink: document.getElementById("live-link"),
};
const token = new URLSearchParams(window.location.search).get("token");

// What the page has done, for people and for tests (tests/test_dub_page.py reads it).
const state = {
  defaults: null,
  previews: 0, // previews shown
  previewBox: null, // [x1, y1, x2, y2] of the last preview
  previewFaces: 0,
  uploads: 0, // files sent to the server
  job: null, // the last job's id
  jobStatus: null, // its last status
  resultName: null,
  resultBytes: 0,
};
window.lipsyncDub = state;

// A chosen input: an upload (id, kept until a job takes it) or a path in the server's media folder.
const inputs = {
  video: { file: null, upload: null, media: null },
  audio: { file: null, upload: null, media: null },
};
let previewTimer = null;
let previewSerial = 0;

function authHeaders(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

function showError(message) {
  els.error.textContent = message || "";
}

async function request(method, path, body) {
  const options = { method, headers: authHeaders() };
  if (body instanceof Blob) {
    // Always typed: the server refuses untyped uploads, which any web page could send it.
    options.headers = authHeaders({ "Content-Type": "application/octet-stream" });
    options.body = body;
  } else if (body !== undefined) {
    options.headers = authHeaders({ "Content-Type": "application/json" });
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (!response.ok) {
    let text = `HTTP ${response.status}`;
    try {
      const answer = await response.json();
      text = `${answer.error}\n${answer.fix}`;
    } catch (ignored) {
      // not JSON: keep the status line
    }
    throw new Error(text);
  }
  return response;
}

async function requestJson(method, path, body) {
  return (await request(method, path, body)).json();
}

// ---------------------------------------------------------------------------------------------
// Inputs

async function upload(role) {
  const input = inputs[role];
  const answer = await requestJson(
    "POST", `api/uploads?name=${encodeURIComponent(input.file.name)}`, input.file);
  input.upload = answer.upload;
  state.uploads += 1;
}

// The request fields naming an input, uploading it first when it has no unused upload.
async function inputFields(role, pathField, uploadField) {
  const input = inputs[role];
  if (input.media) return { [pathField]: input.media };
  if (!input.upload) await upload(role);
  return { [uploadField]: input.upload };
}

function chosen(role) {
  return Boolean(inputs[role].media || inputs[role].file);
}

function describeInputs() {
  for (const role of ["video", "audio"]) {
    const input = inputs[role];
    const label = role === "video" ? els.videoState : els.audioState;
    label.textContent = input.media ? `server file ${input.media}` : "";
  }
  els.start.disabled = !(chosen("video") && chosen("audio")) || isRunning();
  if (state.jobStatus === null && chosen("video") && chosen("audio")) els.jobStatus.textContent = "ready";
}

function onFileChosen(role, fileInput, mediaSelect) {
  const file = fileInput.files[0] || null;
  inputs[role] = { file, upload: null, media: null };
  mediaSelect.value = "";
  describeInputs();
  if (role === "video") schedulePreview(0);
}

function onMediaChosen(role, fileInput, mediaSelect) {
  inputs[role] = { file: null, upload: null, media: mediaSelect.value || null };
  fileInput.value = "";
  describeInputs();
  if (role === "video") schedulePreview(0);
}

// ---------------------------------------------------------------------------------------------
// Controls and preview

function faceOptions() {
  return {
    bbox_shift: Number(els.bboxShift.value),
    extra_margin: Number(els.extraMargin.value),
    face_index: Number(els.faceIndex.value),
  };
}

function schedulePreview(delay = PREVIEW_DELAY_MS) {
  els.bboxShiftValue.textContent = els.bboxShift.value;
  els.extraMarginValue.textContent = els.extraMargin.value;
  if (!chosen("video")) return;
  clearTimeout(previewTimer);
  previewTimer = setTimeout(updatePreview, delay);
}

async function updatePreview() {
  const serial = ++previewSerial;
  els.previewInfo.textContent = "finding the face in the first frame…";
  try {
    const fields = await inputFields("video", "source", "upload");
    const answer = await requestJson("POST", "api/preview", { ...fields, ...faceOptions() });
    if (serial !== previewSerial) return; // a newer preview is on its way
    els.preview.src = answer.image;
    els.preview.hidden = false;
    const [x1, y1, x2, y2] = answer.box;
    const faces = answer.faces === 1 ? "1 face" : `${answer.faces} faces`;
    els.previewInfo.textContent =
      `${faces} found; crop box (${x1}, ${y1})–(${x2}, ${y2}), ${x2 - x1}×${y2 - y1} px ` +
      `of ${answer.width}×${answer.height}; ${answer.frames} frame(s) at ${answer.fps.toFixed(2)} fps`;
    state.previews += 1;
    state.previewBox = answer.box;
    state.previewFaces = answer.faces;
    showError("");
  } catch (error) {
    if (serial !== previewSerial) return;
    els.preview.hidden = true;
    els.previewInfo.textContent = "no preview";
    showError(error.message);
  }
}

// ---------------------------------------------------------------------------------------------
// The dub job

function isRunning() {
  return state.jobStatus === "queued" || state.jobStatus === "running";
}

async function startDub() {
  showError("");
  els.start.disabled = true;
  els.progress.value = 0;
  els.result.hidden = true;
  els.download.hidden = true;
  els.jobStatus.textContent = "sending…";
  state.jobStatus = "queued";
  try {
    const body = {
      ...(await inputFields("video", "video", "video_upload")),
      ...(await inputFields("audio", "audio", "audio_upload")),
      ...faceOptions(),
      silence: els.silence.value,
    };
    const answer = await requestJson("POST", "api/dubs", body);
    // The job owns the uploads now; another run uploads the files again.
    inputs.video.upload = null;
    inputs.audio.upload = null;
    state.job = answer.job;
    await followJob(answer.job);
  } catch (error) {
    state.jobStatus = "failed";
    els.jobStatus.textContent = "failed";
    showError(error.message);
  } finally {
    describeInputs();
  }
}

async function followJob(jobId) {
  for (;;) {
    const status = await requestJson("GET", `api/jobs/${jobId}`);
    state.jobStatus = status.status;
    els.progress.value = status.progress;
    els.jobStatus.textContent = `${status.status} – ${Math.round(status.progress * 100)} %`;
    if (status.status === "done") {
      await showResult(jobId, status.result);
      return;
    }
    if (status.status === "failed") {
      showError(status.error);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function showResult(jobId, name) {
  const response = await request("GET", `api/jobs/${jobId}/result`);
  const blob = await response.blob();
  if (els.result.src) URL.revokeObjectURL(els.result.src);
  const url = URL.createObjectURL(blob);
  els.result.src = url;
  els.result.hidden = false;
  els.download.href = url;
  els.download.download = name;
  els.download.hidden = false;
  els.resultInfo.textContent = `${name}, ${(blob.size / 1e6).toFixed(2)} MB`;
  state.resultName = name;
  state.resultBytes = blob.size;
}

// ---------------------------------------------------------------------------------------------
// Start-up

function fillMediaSelect(select, files) {
  for (const file of files) {
    const option = document.createElement("option");
    option.value = file;
    option.textContent = file;
    select.appendChild(option);
  }
  select.hidden = files.length === 0;
}

async function init() {
  if (token) els.liveLink.href = `./?token=${encodeURIComponent(token)}`;
  try {
    const defaults = await requestJson("GET", "api/dub-defaults");
    state.defaults = defaults;
    els.bboxShift.value = defaults.bbox_shift;
    els.extraMargin.value = defaults.extra_margin;
    els.faceIndex.value = defaults.face_index;
    els.faceIndex.max = Math.max(0, defaults.max_faces - 1);
    els.silence.value = defaults.silence;
    els.banner.hidden = !defaults.untrained;
    schedulePreview(0);
    if (defaults.media_folder) {
      const media = await requestJson("GET", "api/media");
      fillMediaSelect(els.videoMedia, media.files);
      fillMediaSelect(els.audioMedia, media.files);
    }
  } catch (error) {
    showError(error.message);
  }
}

els.videoFile.addEventListener("change", () => onFileChosen("video", els.videoFile, els.videoMedia));
els.audioFile.addEventListener("change", () => onFileChosen("audio", els.audioFile, els.audioMedia));
els.videoMedia.addEventListener("change", () => onMediaChosen("video", els.videoFile, els.videoMedia));
els.audioMedia.addEventListener("change", () => onMediaChosen("audio", els.audioFile, els.audioMedia));
for (const control of [els.bboxShift, els.extraMargin, els.faceIndex]) {
  control.addEventListener("input", () => schedulePreview());
}
els.start.addEventListener("click", startDub);
describeInputs();
init();
