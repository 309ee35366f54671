// The server's page (app.html, at /app): a photo goes to this server's /v1/predict; the top 5 come back as bars.
import {$, result, say, showResults, takePhotos, unsure, webcam} from "./page.js";

const form = $("form"), input = form.elements.upload;
let maxBytes = Infinity, previewUrl = null, busy = 0;

fetch("/v1/model").then((r) => r.json()).then((m) => {
  document.title = m.name + ": classify a photo";
  $("title").textContent = m.name;
  $("model").textContent = m.num_classes + " classes: " + m.labels.join(", ");
  maxBytes = m.limits.max_upload_bytes;
}).catch(() => {});

async function classify(blob, name) {
  if (blob.size > maxBytes) {
    say(name + " is " + (blob.size / 1048576).toFixed(1) + " MB; this server takes at most " +
        (maxBytes / 1048576).toFixed(1) + " MB.", true);
    return;
  }
  const mine = ++busy;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = /^image\//.test(blob.type) ? URL.createObjectURL(blob) : null;
  if (previewUrl) $("preview").src = previewUrl; else $("preview").removeAttribute("src");
  say("Classifying " + name + " ...");
  const data = new FormData();
  data.append("upload", blob, name);
  let response, body;
  try {
    response = await fetch("/v1/predict?top_k=5", {method: "POST", body: data});
    body = await response.json();
  } catch (err) {
    if (mine === busy) say("The server did not answer (" + err.message + ").", true);
    return;
  }
  if (mine !== busy) return;  // a newer photo was sent meanwhile
  if (!response.ok) {
    say(name + ": " + (body.error || "HTTP " + response.status), true);
    $("out").hidden = true;
    return;
  }
  // a zip of photos answers one result each
  showResults(body.results.map((r) => result(r.filename, r.predictions, r.error,
                                             r.unknown ? unsure(body.threshold) : null)));
  say(body.model + " answered in " + Math.round(body.latency_ms) + " ms.");
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  if (input.files.length) classify(input.files[0], input.files[0].name);
});
takePhotos(input, classify);
webcam(classify, "webcam.jpg", "image/jpeg", 0.92);
