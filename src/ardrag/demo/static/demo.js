// ardrag demo page: draw drags on an image, stream frames over a WebSocket, steer while it plays.
// Plain script, no build step. Everything the tests read lives on window.ardragDemo.
"use strict";

const COLORS = ["#ff4040", "#40a0ff", "#ffdc00", "#00e678", "#ff6ee6", "#00e6e6"]; // ardrag.video.TRACK_COLORS
const DISPLAY = 320; // longest canvas side, CSS pixels
const MIN_STEP = 1.5; // canvas pixels between two recorded points of a drag
const MAX_POINTS = 2000; // points kept per drag (the server takes up to ardrag.demo.paths.MAX_PATH_POINTS)

const $ = (id) => document.getElementById(id);
const drawCanvas = $("draw"), videoCanvas = $("video");
const demo = {
  info: null, imageId: null, image: null,
  paths: [], // drags of the next request / running video, in image pixels
  oldPaths: [], // drags the running video started with, shown faded once new ones are drawn
  drawing: null, playing: false, started: false, steered: false,
  ws: null, t0: 0, paint: Promise.resolve(),
  received: [], // {index, png, painted_ms (since Generate), gen_ms (model time)} per painted frame
  sent: [], log: [], errors: [], stats: {}, clip: null,
};
window.ardragDemo = demo;

function showError(message) {
  demo.errors.push(message);
  $("error").textContent = message;
}
function setStatus(text) { $("status").textContent = text; }
function setPlaying(on) {
  demo.playing = on;
  $("generate").disabled = on;
  $("stop").disabled = !on;
}

// ---------------------------------------------------------------- images
async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  demo.info = info;
  $("model").textContent = `${info.mode} model, ${info.width}x${info.height}, up to ${info.max_tracks} drags ` +
    `and ${info.max_frames} frames`;
  $("frames").value = info.default_frames;
  $("frames").max = info.max_frames;
  for (const id of info.images) addImageOption(id, id);
  if (info.images.length) await selectImage(info.images[0]);
}

function addImageOption(id, label) {
  const opt = document.createElement("option");
  opt.value = id;
  opt.textContent = label;
  $("image-select").appendChild(opt);
}

async function selectImage(id) {
  const img = new Image();
  img.src = `/api/image/${encodeURIComponent(id)}`;
  await img.decode();
  demo.imageId = id;
  demo.image = img;
  $("image-select").value = id;
  const s = DISPLAY / Math.max(img.naturalWidth, img.naturalHeight);
  for (const c of [drawCanvas, videoCanvas]) {
    c.width = Math.round(img.naturalWidth * s);
    c.height = Math.round(img.naturalHeight * s);
  }
  demo.paths = [];
  demo.oldPaths = [];
  redraw();
}

async function upload(file) {
  $("error").textContent = "";
  const res = await fetch("/api/upload", { method: "POST", body: file });
  let body = {};
  try { body = await res.json(); } catch (e) { body = { error: `upload failed (HTTP ${res.status})` }; }
  if (!res.ok) { showError(body.error || `upload failed (HTTP ${res.status})`); return; }
  addImageOption(body.id, `upload: ${file.name}`);
  await selectImage(body.id);
}

// ---------------------------------------------------------------- drawing drags
function toImage(ev) { // pointer event -> image pixels
  const r = drawCanvas.getBoundingClientRect();
  const sx = demo.image.naturalWidth / r.width, sy = demo.image.naturalHeight / r.height;
  return [+((ev.clientX - r.left) * sx).toFixed(2), +((ev.clientY - r.top) * sy).toFixed(2)];
}

function drawPath(ctx, path, color, faded) {
  const k = drawCanvas.width / demo.image.naturalWidth;
  const pts = path.map(([x, y]) => [x * k, y * k]);
  ctx.save();
  ctx.globalAlpha = faded ? 0.35 : 1;
  ctx.strokeStyle = ctx.fillStyle = color;
  ctx.lineWidth = 3;
  ctx.setLineDash(faded ? [6, 5] : []);
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.stroke();
  ctx.beginPath();
  ctx.arc(pts[0][0], pts[0][1], 5, 0, 2 * Math.PI);
  ctx.fill();
  if (pts.length > 1) { // arrow head at the end
    const [x1, y1] = pts[pts.length - 1], [x0, y0] = pts[Math.max(0, pts.length - 4)];
    const a = Math.atan2(y1 - y0, x1 - x0);
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x1 - 12 * Math.cos(a - 0.4), y1 - 12 * Math.sin(a - 0.4));
    ctx.lineTo(x1 - 12 * Math.cos(a + 0.4), y1 - 12 * Math.sin(a + 0.4));
    ctx.closePath();
    ctx.fill();
  }
  ctx.restore();
}

function redraw() {
  const ctx = drawCanvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(demo.image, 0, 0, drawCanvas.width, drawCanvas.height);
  demo.oldPaths.forEach((p, i) => drawPath(ctx, p, COLORS[i % COLORS.length], true));
  demo.paths.forEach((p, i) => drawPath(ctx, p, COLORS[i % COLORS.length], false));
  if (demo.drawing) drawPath(ctx, demo.drawing, COLORS[demo.paths.length % COLORS.length], false);
}

drawCanvas.addEventListener("pointerdown", (ev) => {
  if (!demo.image) return;
  drawCanvas.setPointerCapture(ev.pointerId);
  demo.drawing = [toImage(ev)];
  redraw();
});
drawCanvas.addEventListener("pointermove", (ev) => {
  if (!demo.drawing) return;
  const p = toImage(ev), q = demo.drawing[demo.drawing.length - 1];
  const k = drawCanvas.width / demo.image.naturalWidth;
  if (Math.hypot(p[0] - q[0], p[1] - q[1]) * k < MIN_STEP) return;
  demo.drawing.push(p);
  if (demo.drawing.length > MAX_POINTS) { // keep long scribbles under the server's per-path limit
    demo.drawing = demo.drawing.filter((_, i, a) => i % 2 === 0 || i === a.length - 1);
  }
  redraw();
});
function endDrag(ev) {
  if (!demo.drawing) return;
  const path = demo.drawing;
  if (ev.type === "pointerup") {
    const p = toImage(ev), q = path[path.length - 1];
    if (p[0] !== q[0] || p[1] !== q[1]) path.push(p);
  }
  demo.drawing = null;
  if (demo.playing && !demo.steered) { // the first drag while playing starts a new set of drags
    demo.oldPaths = demo.paths;
    demo.paths = [];
    demo.steered = true;
  }
  demo.paths.push(path);
  redraw();
  if (demo.playing) send({ type: "update", paths: demo.paths });
}
drawCanvas.addEventListener("pointerup", endDrag);
drawCanvas.addEventListener("pointercancel", endDrag);

// ---------------------------------------------------------------- streaming
function connect() {
  return new Promise((resolve, reject) => {
    if (demo.ws && demo.ws.readyState === WebSocket.OPEN) { resolve(demo.ws); return; }
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("cannot reach the demo server"));
    ws.onclose = () => {
      if (demo.playing) showError("connection to the demo server lost; reload the page");
      setPlaying(false);
    };
    ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
    demo.ws = ws;
  });
}

function send(msg) {
  demo.sent.push(msg);
  demo.ws.send(JSON.stringify(msg));
}

function onMessage(msg) {
  if (msg.type !== "frame") demo.log.push(msg);
  switch (msg.type) {
    case "queued": setStatus("queued: another page is generating"); break;
    case "started":
      demo.started = true;
      setStatus(`generating ${msg.frames} frames`);
      break;
    case "frame": demo.paint = demo.paint.then(() => paintFrame(msg)); break;
    case "update_queued": setStatus("new drags received; applied from the next frame"); break;
    case "update_ok": setStatus(`new drags sent after frame ${msg.frames_shown}`); break;
    case "error":
      showError(msg.message);
      if (demo.playing && !demo.started) setPlaying(false); // the request was refused: nothing runs
      break;
    case "done":
      demo.paint = demo.paint.then(() => finish(msg));
      break;
  }
}

async function paintFrame(msg) {
  const img = new Image();
  img.src = `data:image/png;base64,${msg.png}`;
  await img.decode();
  const ctx = videoCanvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, videoCanvas.width, videoCanvas.height);
  await new Promise((r) => requestAnimationFrame(r)); // on screen at the next paint
  const t = performance.now() - demo.t0;
  demo.received.push({ index: msg.index, png: msg.png, painted_ms: t, gen_ms: msg.gen_ms });
  const n = demo.received.length, first = demo.received[0].painted_ms;
  const s = demo.stats;
  s.frames = n;
  s.first_frame_ms = first;
  s.frame_ms = n > 1 ? t - demo.received[n - 2].painted_ms : null;
  s.fps = n > 1 ? (1000 * (n - 1)) / (t - first) : null;
  $("stats").textContent = `frame ${msg.index + 1}/${msg.total} · first frame ${first.toFixed(0)} ms` +
    (n > 1 ? ` · ${s.frame_ms.toFixed(1)} ms/frame · ${s.fps.toFixed(1)} FPS` : "") +
    ` · model ${msg.gen_ms.toFixed(1)} ms`;
}

function finish(msg) {
  setPlaying(false);
  demo.stats.done = true;
  setStatus(msg.stopped ? `stopped after ${msg.frames} frames` : `done: ${msg.frames} frames`);
  if (msg.clip) {
    demo.clip = msg.clip;
    $("download").href = msg.clip;
    $("download").classList.remove("disabled");
  }
}

async function generate() {
  $("error").textContent = "";
  try { await connect(); } catch (e) { showError(e.message); return; }
  demo.received = [];
  demo.stats = {};
  demo.steered = false;
  demo.started = false;
  demo.oldPaths = [];
  demo.clip = null;
  $("download").classList.add("disabled");
  $("stats").textContent = "waiting for the first frame";
  redraw();
  demo.t0 = performance.now();
  setPlaying(true);
  send({
    type: "generate", image: demo.imageId, paths: demo.paths, prompt: $("prompt").value,
    seed: Number($("seed").value), frames: Number($("frames").value),
  });
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => send({ type: "stop" }));
$("clear").addEventListener("click", () => { demo.paths = []; demo.oldPaths = []; redraw(); });
$("image-select").addEventListener("change", (ev) => selectImage(ev.target.value));
$("upload").addEventListener("change", (ev) => { if (ev.target.files.length) upload(ev.target.files[0]); ev.target.value = ""; });
connect().catch(() => {});
loadInfo().catch((e) => showError(`cannot load the demo: ${e.message}`));
