// The bundle's model in the browser: ../model.onnx run by the vendored ONNX Runtime Web (WebAssembly, one thread),
// with ../labels.txt and ../model_card.json. Nothing is loaded from anywhere but this page's own server, and the
// photo never leaves the browser.
import * as ort from "./vendor/onnxruntime-web-1.31.1/ort.wasm.min.mjs";
import {$, result, say, showResults, takePhotos, unsure, webcam} from "../www/page.js";

const RUNTIME = new URL("./vendor/onnxruntime-web-1.31.1/", import.meta.url).href;
const MODEL = "../model.onnx", LABELS = "../labels.txt", CARD = "../model_card.json";
const CENTER_CROP_ASPECT = 1.5;  // engine/config/training.py's rule, restated: this page ships without the engine
const TOP_K = 5;

// ort-wasm-simd-threaded.{mjs,wasm} from the vendored folder; one thread needs no cross-origin isolation.
ort.env.wasm.wasmPaths = RUNTIME;
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;

const input = $("file");
let model = null, previewUrl = null, queue = Promise.resolve();

async function fetched(url, as) {
  const response = await fetch(url, {cache: "no-cache"});
  if (!response.ok) throw new Error(url.replace("../", "") + " could not be loaded (HTTP " + response.status + ")");
  return response[as]();
}

// The centre-crop rule from the model card ("... more than 1.5x the short side ..."), else the engine's.
function cropAspect(rule) {
  const m = /more than ([0-9.]+)x/.exec(rule || "");
  return m ? Number(m[1]) : CENTER_CROP_ASPECT;
}

async function load() {
  const [card, labelText] = await Promise.all([fetched(CARD, "json"), fetched(LABELS, "text")]);
  const labels = labelText.split(/\r?\n/).map((l) => l.trim()).filter((l) => l);  // as predict.py reads them
  const pre = card.preprocessing || {}, onnx = card.onnx || {};
  const name = card.name || "Image classifier";
  document.title = name + ": classify a photo in your browser";
  $("title").textContent = name;
  $("model").textContent = labels.length + " classes: " + labels.join(", ");
  if (!onnx.file) {
    throw new Error("this bundle has no model.onnx" + (onnx.why_not ? " (" + onnx.why_not + ")" : "") +
                    "; use the server's page instead");
  }
  say("Loading the model (" + (onnx.bytes ? (onnx.bytes / 1048576).toFixed(1) + " MB" : "model.onnx") + ") ...");
  const bytes = new Uint8Array(await fetched(MODEL, "arrayBuffer"));
  const session = await ort.InferenceSession.create(bytes, {executionProviders: ["wasm"],
                                                            graphOptimizationLevel: "all"});
  const threshold = card.threshold && typeof card.threshold.value === "number" ? card.threshold.value : 0;
  model = {session, labels, threshold, size: Number(card.image_size), crop: !!pre.center_crop,
           aspect: cropAspect(pre.center_crop_rule)};
  document.body.dataset.state = "ready";
  say("Ready: pick, drop or paste a photo. The model runs here, in your browser.");
}

// What training does to a photo, with the browser's tools: decoded with its EXIF orientation, transparency on
// white, a centred square when the model was trained with the centre crop and the photo is long, then stretched
// to S x S. The resizing filter is the browser's high-quality one, not OpenCV's INTER_AREA/INTER_LINEAR.
function tensor(image, width, height) {
  const {size, crop, aspect} = model;
  let sx = 0, sy = 0, sw = width, sh = height;
  if (crop && Math.max(width, height) > aspect * Math.min(width, height)) {
    const side = Math.min(width, height);
    sx = Math.floor((width - side) / 2);
    sy = Math.floor((height - side) / 2);
    sw = sh = side;
  }
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, size, size);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(image, sx, sy, sw, sh, 0, 0, size, size);
  const rgba = ctx.getImageData(0, 0, size, size).data;
  const data = new Float32Array(size * size * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    data[j] = rgba[i] / 255;
    data[j + 1] = rgba[i + 1] / 255;
    data[j + 2] = rgba[i + 2] / 255;
  }
  return new ort.Tensor("float32", data, [1, size, size, 3]);
}

async function classify(blob, name) {
  if (!model) return;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(blob);
  $("preview").src = previewUrl;
  say("Classifying " + name + " ...");
  document.body.dataset.state = "busy";
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {imageOrientation: "from-image", colorSpaceConversion: "none"});
  } catch (err) {
    done(name + ": not an image this browser can decode.", true);
    return;
  }
  const t0 = performance.now();
  let probs;
  try {
    const x = tensor(bitmap, bitmap.width, bitmap.height);
    const {session} = model;
    const out = await session.run({[session.inputNames[0]]: x});
    probs = out[session.outputNames[0]].data;
  } catch (err) {
    done(name + ": " + err.message, true);
    return;
  } finally {
    bitmap.close();
  }
  show(name, probs);
  done("Classified in your browser in " + Math.round(performance.now() - t0) + " ms.");
}

function done(text, isError) {
  say(text, isError);
  document.body.dataset.state = "ready";
  if (isError) $("out").hidden = true;
}

function show(name, probs) {
  const order = [...probs.keys()].sort((a, b) => probs[b] - probs[a] || a - b);  // ties: label order
  const rows = order.slice(0, TOP_K).map((i) => ({label: model.labels[i] ?? "class " + i, probability: probs[i]}));
  const low = model.threshold > 0 && probs[order[0]] < model.threshold;
  showResults([result(name, rows, null, low ? unsure(model.threshold) : null)]);
}

// One photo at a time through the session, in the order given.
function enqueue(blob, name) {
  queue = queue.then(() => classify(blob, name)).catch((err) => done(String(err), true));
}

takePhotos(input, enqueue);
webcam(enqueue, "webcam.png", "image/png");

load().catch((err) => {
  document.body.dataset.state = "error";
  say("The model could not be loaded: " + err.message, true);
});
