// What the server's page (www/app.html, at /app) and the in-browser demo (web/, at /web/) share: the status line,
// the result with its top-k bars, and the ways a photo comes in (a file, a drop, a paste, the webcam). Both pages
// have the same elements (the ids below); each page decides where a photo goes.
document.documentElement.classList.add("js");

export const $ = (id) => document.getElementById(id);

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;  // labels and file names are data: never parsed as HTML
  return e;
}

export function say(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

export function unsure(threshold) {
  return "Unsure: the top class is below the model's threshold of " + (100 * threshold).toFixed(0) +
         "%, so this may be none of them.";
}

// One photo's answer: its name, an error or the bars of its [{label, probability}] (in order), and a note.
export function result(name, rows, error, note) {
  const section = el("section", "result"), bars = el("div", "bars");
  section.append(el("p", "file", name));
  if (error) section.append(el("p", "error", error));
  for (const {label, probability} of rows) {
    const pct = (100 * probability).toFixed(1) + "%";
    const row = el("div", "bar"), track = el("div", "track"), fill = el("div", "fill");
    row.dataset.probability = String(probability);
    fill.style.width = pct;
    track.append(fill);
    row.append(el("span", "label", label), track, el("span", "pct", pct));
    bars.append(row);
  }
  section.append(bars);
  if (note) section.append(el("p", "note", note));
  return section;
}

export function showResults(sections) {
  $("results").replaceChildren(...sections);
  $("out").hidden = false;
}

// A file picked in `input`, dropped on #drop or pasted anywhere: onPhoto(blob, name).
export function takePhotos(input, onPhoto) {
  const drop = $("drop");
  input.addEventListener("change", () => { if (input.files.length) onPhoto(input.files[0], input.files[0].name); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) onPhoto(file, file.name);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData ? e.clipboardData.files : [])][0];
    if (file) onPhoto(file, file.name || "pasted.png");
  });
}

// The webcam's frames as photos named `name`, encoded as `type`. Browsers allow the webcam on https and on
// http://127.0.0.1 or localhost only.
export function webcam(onPhoto, name, type, quality) {
  const start = $("camera-start"), snap = $("camera-snap"), video = $("video");
  let stream = null;
  start.hidden = false;
  start.addEventListener("click", async () => {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say("The browser offers the webcam only on https pages or on http://127.0.0.1 and http://localhost.", true);
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({video: {facingMode: "environment"}, audio: false});
    } catch (err) {
      say("No webcam: " + err.message, true);
      return;
    }
    video.srcObject = stream;
    $("camera").classList.add("on");
    start.hidden = true;
  });
  video.addEventListener("loadeddata", () => { snap.disabled = false; });  // a frame to take
  snap.addEventListener("click", () => {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => onPhoto(blob, name), type, quality);
  });
  $("camera-stop").addEventListener("click", () => {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
    snap.disabled = true;
    $("camera").classList.remove("on");
    start.hidden = false;
  });
}
