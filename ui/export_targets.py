"""The Export page's "Use it elsewhere": one tab per place the user's product runs (Android/iOS, a web page, Python,
ONNX Runtime, TF Serving; TF.js and Core ML made on request), each with one line on when to pick it, a few lines
that work as written with this run's files and labels, and a download of just that target's files, zipped in memory
when the button is clicked. A target whose file this run lacks says why instead of offering a broken download."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from engine.config import runfiles as rf
from engine.config import variants
from engine.core.fileio import read_json
from engine.export import extras
from engine.export.bundle import bundle_sources, shipped_bytes, shipped_name, zip_file, zip_text
from engine.export.savedmodel import BYTES_SIGNATURE, INPUT_NAME, OUTPUT_NAME
from engine.inference.bundle_files import BUNDLE_PAGES, BUNDLE_SOURCES, BUNDLE_WEB
from engine.runs import extras as background
from ui import common

PYTHON_FILES = ("predict.py", "requirements.txt")  # of the bundle's own files (engine/bundle/), what each target takes
WEB_FILES = ("predict.py", "serve.py", "requirements.txt", "requirements-serve.txt", "Dockerfile")
# the bundle's pages, and where serve.py serves them
PAGE_ROUTES = {f"{BUNDLE_PAGES}/app.html": "/app", f"{BUNDLE_PAGES}/index.html": "/",
               f"{BUNDLE_WEB}/index.html": "/web/"}
POLL_S = 1.5  # how often a conversion's status line refreshes while it runs
Entries = list[tuple[str, Path]]  # (name in the zip, file on disk)


def fmt_bytes(total: int | float | None) -> str:
    if total is None:
        return "–"
    if total >= 2**20:
        return f"{total / 2**20:.1f} MB"
    return f"{total / 1024:.0f} KB" if total >= 1024 else f"{int(total)} bytes"


@dataclass
class Run:
    """What the snippets and downloads need to know about the run."""

    dir: Path
    slug: str
    card: dict[str, Any]
    labels: list[str]
    size: int  # the model's input is size x size
    center_crop: bool
    tflite: list[str]  # the variant files present, in the table's order
    exporting: bool

    def file(self, name: str) -> Entries:
        return [(name, self.dir / name)] if (self.dir / name).is_file() else []

    @property
    def model(self) -> str:
        """The .tflite file the snippets load: float32 (every runtime, exact) when present."""
        return self.tflite[0] if self.tflite else variants.TABLE[0].file


def load_run(run_dir: Path, slug: str, exporting: bool) -> Run:
    card = read_json(run_dir / rf.MODEL_CARD)  # {} while the export has not written it
    labels_path = run_dir / rf.LABELS
    labels = (labels_path.read_text(encoding="utf-8").splitlines() if labels_path.is_file()
              else [str(x) for x in card.get("labels") or []])
    size = card.get("image_size") or (card.get("backbone") or {}).get("image_size") or 224
    return Run(run_dir, slug, card, [x for x in labels if x.strip()], int(size),
               bool((card.get("preprocessing") or {}).get("center_crop")),
               [v.file for v in variants.TABLE if (run_dir / v.file).is_file()], exporting)


# --- zips ----------------------------------------------------------------------------------------------------------
def zip_bytes(entries: Entries) -> bytes:
    """The files as a zip, built in memory; weights stored as they are (they barely compress), text deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in entries:
            if path.is_relative_to(BUNDLE_SOURCES):  # the bundle's own files, as the bundle holds them (unpacked)
                zip_text(zf, name, shipped_bytes(path), time.localtime(path.stat().st_mtime)[:6])
            else:
                zip_file(zf, path, name)
    return buf.getvalue()


def _bundle_files(names: tuple[str, ...], pages: bool = False, web: bool = False) -> Entries:
    """The bundle's own files of those names (and its www/ pages, its web/ in-browser page): this installation's
    engine/bundle/, named as every new bundle ships them."""
    shipped = {shipped_name(p): p for p in bundle_sources()}
    return [(n, p) for n, p in shipped.items() if n in names or (pages and n.startswith(f"{BUNDLE_PAGES}/"))
            or (web and n.startswith(f"{BUNDLE_WEB}/"))]


def _folder(run: Run, rel: str) -> Entries:
    """A file or every file of a folder of the run (a name the engine gave), never anything outside the run."""
    root = run.dir.resolve()
    path = (run.dir / rel).resolve()
    if not path.is_relative_to(root):
        return []
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return [(p.relative_to(root).as_posix(), p) for p in files]


def target_files(run: Run, key: str, extra_files: list[str] | None = None) -> Entries:
    """Exactly the files the target's download holds."""
    models = [e for name in run.tflite for e in run.file(name)]
    labels, card = run.file(rf.LABELS), run.file(rf.MODEL_CARD)
    if key == "mobile":
        return models + labels
    if key == "python":
        return _bundle_files(PYTHON_FILES) + models + labels + card
    if key == "web":  # the in-browser page (web/) runs model.onnx: it comes with it
        onnx = run.file(rf.ONNX)
        return _bundle_files(WEB_FILES, pages=True, web=bool(onnx)) + models + onnx + labels + card
    if key == "onnx":
        return run.file(rf.ONNX) + labels + card
    if key == "tfserving":
        return _folder(run, rf.SAVED_MODEL) + labels
    return [e for rel in extra_files or [] for e in _folder(run, rel)] + labels  # made on request


def onnx_missing(run: Run) -> str | None:
    """Why this run has no usable model.onnx (None when it has one)."""
    if (run.dir / rf.ONNX).is_file():
        return None
    entry = run.card.get("onnx")
    if isinstance(entry, dict) and entry.get("why_not"):
        return f"This run has no {rf.ONNX}: {entry['why_not']}."
    if isinstance(entry, dict) and entry.get("file"):
        return f"The model card names {entry['file']}, but the file is missing from the run folder."
    return (f"This run has no {rf.ONNX}: it was exported before Retrain Studio made ONNX models, or the export "
            "stopped early. Train again to get one.")


def _offer(run: Run, key: str, label: str, entries: Entries, missing: str | None = None) -> None:
    """The target's download, or why there is none."""
    if missing:
        st.info(common.literal(missing), icon=":material/block:")  # may quote a converter's message
        return
    if run.exporting:
        st.caption("Its download appears here when the export has finished.")
        return
    total = sum(p.stat().st_size for _, p in entries)
    st.download_button(f"{label} (zip: {len(entries)} files, {fmt_bytes(total)})", data=lambda: zip_bytes(entries),
                       file_name=f"{run.slug}-{key}.zip", mime="application/zip", icon=":material/download:",
                       on_click="ignore", key=f"dl_target_{key}",
                       help=common.literal(", ".join(name for name, _ in entries)[:2000]))


# --- words ---------------------------------------------------------------------------------------------------------
def _either(labels: list[str]) -> str:
    """'"cats" or "dogs"' for a snippet's comment: what the model answers."""
    said = [f'"{x}"' for x in labels[:3]]
    if len(labels) > 3:
        return f"{', '.join(said)}, ... ({len(labels)} classes)"
    return " or ".join([", ".join(said[:-1]), said[-1]] if len(said) > 1 else said) or "a label"


def _in_order(labels: list[str]) -> str:
    return ", ".join(labels[:4]) + (f", ... ({len(labels)} labels)" if len(labels) > 4 else "")


def _resize(run: Run) -> str:
    resized = f'Image.open("photo.jpg").convert("RGB").resize(({run.size}, {run.size}))'
    return f"np.asarray({resized}, np.float32)[None] / 255"


def _crop_note(run: Run) -> None:
    if run.center_crop:
        st.caption("This model was trained with images over 1.5:1 cropped to a centred square first: crop such "
                   "photos the same way before these lines (predict.py and the server do).")


def _has_metadata(path: Path) -> bool:
    """Whether a .tflite file carries TFLite metadata (labels, normalization): the export writes it in front of the
    model, so the first 64 KiB tell."""
    try:
        with path.open("rb") as f:
            return b"TFLITE_METADATA" in f.read(1 << 16)
    except OSError:
        return False


# --- the targets ---------------------------------------------------------------------------------------------------
def _mobile(run: Run) -> None:
    st.markdown("Pick this for an **app on a phone or tablet** (or a Raspberry Pi): MediaPipe Tasks' "
                "ImageClassifier loads the .tflite file as it is, with the labels and the input scaling inside it, "
                "and answers with the class names.")
    model, stem = run.model, Path(run.model).stem
    st.caption("Android (Kotlin); the file goes in `app/src/main/assets/`")
    st.code(f"""// build.gradle: implementation("com.google.mediapipe:tasks-vision:latest.release")
import com.google.mediapipe.framework.image.BitmapImageBuilder
import com.google.mediapipe.tasks.vision.imageclassifier.ImageClassifier
val classifier = ImageClassifier.createFromFile(context, "{model}")
val result = classifier.classify(BitmapImageBuilder(bitmap).build())
val top = result.classificationResult().classifications()[0].categories()[0]
println("${{top.categoryName()}} ${{top.score()}}")   // {_either(run.labels)}, and how sure (0 to 1)""",
            language="kotlin")
    st.caption("iOS (Swift, CocoaPods `MediaPipeTasksVision`); add the file to the app target")
    st.code(f"""import MediaPipeTasksVision
let classifier = try ImageClassifier(modelPath: Bundle.main.path(forResource: "{stem}", ofType: "tflite")!)
let top = try classifier.classify(image: MPImage(uiImage: photo)).classificationResult.classifications[0].categories[0]
print(top.categoryName ?? "", top.score)   // {_either(run.labels)}, and how sure (0 to 1)""", language="swift")
    st.caption("The same in Python, e.g. on a Raspberry Pi (`pip install mediapipe`)")
    st.code(f"""import mediapipe as mp
from mediapipe.tasks.python import vision
classifier = vision.ImageClassifier.create_from_model_path("{model}")
top = classifier.classify(mp.Image.create_from_file("photo.jpg")).classifications[0].categories[0]
print(top.category_name, top.score)   # {_either(run.labels)}, and how sure (0 to 1)""", language="python")
    if run.tflite and not _has_metadata(run.dir / run.model):
        st.warning(f"This run's {run.model} has no TFLite metadata (it was exported before the files carried their "
                   "labels and input scaling): MediaPipe refuses it. Train again to get files it loads, or use "
                   "LiteRT with labels.txt (the Python tab).")
    st.caption("The dynamic-range file is about 4x smaller with nearly the same answers; the int8 file suits "
               "microcontrollers and the Edge TPU (the table above compares them).")
    _offer(run, "mobile", "Download the .tflite models and labels", target_files(run, "mobile"),
           None if run.tflite else "This run has no .tflite model.")


def _routes() -> list[str]:
    names = {n for n, _ in _bundle_files((), pages=True, web=True)}
    return [route for page, route in PAGE_ROUTES.items() if page in names]


def _web(run: Run, bundle: Path) -> None:
    st.markdown("Pick this for **a page people open in a browser**, on a computer or a phone: the bundle's server "
                "comes with the pages, one of them running the model in the browser itself; or run it inside your "
                "own page with ONNX Runtime Web.")
    routes, missing = _routes(), onnx_missing(run)
    opened = {"/app": "then open http://127.0.0.1:8080/app: drop a photo or use the webcam, the top 5 as bars",
              "/": "http://127.0.0.1:8080/ is a plain upload form",
              "/web/": "http://127.0.0.1:8080/web/ runs the model in the browser itself: nothing is uploaded"}
    st.code("\n".join([f"unzip {run.slug}-web.zip -d {run.slug}-web && cd {run.slug}-web",
                       "pip install -r requirements-serve.txt    # FastAPI, uvicorn, NumPy, Pillow, LiteRT",
                       "python serve.py --port 8080              # --host 0.0.0.0 lets other machines in",
                       *(f"# {text}" for route, text in opened.items()
                         if route in routes and not (route == "/web/" and missing))]), language="bash")
    st.caption(f"In a container instead: `docker build -t {run.slug}-classifier . && docker run --rm -p 8080:8080 "
               f"{run.slug}-classifier` (the zip has the Dockerfile)."
               + (" The page at /web/ needs no Python at all: any web server at the unzipped folder serves it "
                  "(`python3 -m http.server`, then /web/)." if "/web/" in routes and not missing else ""))
    _offer(run, "web", "Download the server, its pages and the models", target_files(run, "web"),
           None if run.tflite else "This run has no .tflite model for the server.")
    if missing:
        st.caption(("The in-browser page (/web/) and " if "/web/" in routes else "")
                   + f"ONNX Runtime Web in your own page need {rf.ONNX}, which this run lacks; the ONNX Runtime tab "
                   "says why.")
    else:
        s = run.size
        st.caption(f"The model inside your own page: ONNX Runtime Web with {rf.ONNX} (the bundle's web/ folder, with "
                   "the www/ it shares a script and style with, is a complete page that does this, with the runtime "
                   "vendored)")
        st.code(f"""import * as ort from "onnxruntime-web";   // npm install onnxruntime-web
const session = await ort.InferenceSession.create("{rf.ONNX}");
const ctx = new OffscreenCanvas({s}, {s}).getContext("2d");
ctx.drawImage(img, 0, 0, {s}, {s});   // img: a loaded <img>, stretched to {s}x{s} as in training
const rgba = ctx.getImageData(0, 0, {s}, {s}).data, x = new Float32Array({s} * {s} * 3);
for (let i = 0; i < x.length; i++) x[i] = rgba[Math.floor(i / 3) * 4 + (i % 3)] / 255;
const out = await session.run({{{INPUT_NAME}: new ort.Tensor("float32", x, [1, {s}, {s}, 3])}});
const probs = out.{OUTPUT_NAME}.data;   // one per line of labels.txt: {_in_order(run.labels)}""",
                language="javascript")
    st.caption("Or serve the bundle from this Retrain Studio installation (the same pages and API):")
    st.code(f"python -m engine serve --bundle {bundle}", language="bash")


def _python(run: Run) -> None:
    st.markdown("Pick this for **a script, a batch job or your own Python service**: the bundle's predict.py needs "
                "only NumPy, Pillow and LiteRT (no TensorFlow) and prepares images exactly as training did.")
    st.code(f"""unzip {run.slug}-python.zip -d {run.slug}-python && cd {run.slug}-python
pip install ai-edge-litert numpy pillow     # requirements.txt has the version ranges
python predict.py photo.jpg some_folder/    # top 5 per image, e.g. "0.912345: {(run.labels or ['label'])[0]}"
python predict.py --model {run.tflite[-1] if run.tflite else run.model} --json photo.jpg""", language="bash")
    st.caption("In your own code, beside predict.py (LiteRT, and training's decoding, crop and resizing):")
    st.code(f"""import predict
model = predict.make_interpreter("{run.model}")
probs = predict.classify(model, predict.prepare("photo.jpg", {run.size}, center_crop={run.center_crop}))
for p in predict.top_predictions(probs, predict.read_labels(), k=3):
    print(p["label"], p["probability"])   # {_either(run.labels)}, most probable first""",
            language="python")
    _offer(run, "python", "Download predict.py and the models", target_files(run, "python"),
           None if run.tflite else "This run has no .tflite model.")


def _onnx(run: Run) -> None:
    opset = (run.card.get("onnx") or {}).get("opset") or 15
    st.markdown("Pick this when your stack already runs **ONNX models** (C#, C++, Java, JavaScript, Python; CPU or "
                f"GPU): {rf.ONNX} is the same classifier (opset {opset}: ONNX Runtime 1.10 or newer runs opset 15).")
    missing = onnx_missing(run)
    if missing:
        _offer(run, "onnx", "", [], missing)
        return
    st.code(f"""import numpy as np, onnxruntime as ort   # pip install onnxruntime pillow
from PIL import Image
session = ort.InferenceSession("{rf.ONNX}")
x = {_resize(run)}   # [N,{run.size},{run.size},3] float32 in [0,1]
probs = session.run(None, {{"{INPUT_NAME}": x}})[0][0]   # "{OUTPUT_NAME}": one per line of labels.txt
labels = open("labels.txt", encoding="utf-8").read().splitlines()
print(labels[probs.argmax()], probs.max())   # {_either(run.labels)}, and how sure (0 to 1)""",
            language="python")
    _crop_note(run)
    _offer(run, "onnx", f"Download {rf.ONNX}, labels and model card", target_files(run, "onnx"))


def _tfserving(run: Run) -> None:
    st.markdown("Pick this when your servers already run **TensorFlow Serving** (REST or gRPC, batching, "
                "versions): it loads the SavedModel; the request sends the encoded photo and the model prepares it.")
    bytes_sig = ((run.card.get("saved_model") or {}).get("bytes_signature") or {}).get("name")
    lines = [f"unzip {run.slug}-tfserving.zip -d {run.slug}-tfserving && cd {run.slug}-tfserving",
             'docker run -p 8501:8501 -v "$PWD/saved_model:/models/classifier/1" -e MODEL_NAME=classifier '
             "tensorflow/serving"]
    if bytes_sig:
        probs = ", ".join(f"p({x})" for x in run.labels[:3]) + (", ..." if len(run.labels) > 3 else "")
        lines += ["# in a second terminal; the photo goes in base64 through a file (too long for an argument)",
                  f"""printf '{{"signature_name": "{bytes_sig}", "instances": [{{"b64": "%s"}}]}}' """
                  """"$(base64 < photo.jpg | tr -d '\\n')" > request.json""",
                  "curl -s -d @request.json http://127.0.0.1:8501/v1/models/classifier:predict"
                  f"   # {{\"predictions\": [[{probs}]]}}"]
    st.code("\n".join(lines), language="bash")
    if bytes_sig:
        st.caption("TF Serving loads numbered version folders, hence `/1`. Send photos upright (it does not apply "
                   "the EXIF rotation); several per request are fine.")
    else:
        st.caption(f"This run's SavedModel has no `{BYTES_SIGNATURE}` signature for encoded photos (it was exported "
                   f"before it was added): its `serving_default` takes the pixels, float32 [N,{run.size},{run.size},3] "
                   "in [0,1]. Train again to send photos as they are.")
    _offer(run, "tfserving", "Download the SavedModel and labels", target_files(run, "tfserving"),
           None if (run.dir / rf.SAVED_MODEL).is_dir() else f"This run has no {rf.SAVED_MODEL}/ folder.")


# --- made on request: TF.js, Core ML (engine.export.extras, made by engine.runs.extras) -------------------------------
def _status(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        return background.extra_status(run_dir, name)
    except Exception as exc:  # noqa: BLE001 - a damaged status file must not take the page down
        common.log.exception("extra_status(%s) failed", name)
        return {"state": extras.FAILED, "message": f"Its status could not be read: {type(exc).__name__}: {exc}",
                "files": [], "progress": None}


def _start(run_dir: Path, name: str, label: str) -> None:
    def tell(_kind: str, message: str) -> None:
        st.session_state[f"extra_error_{name}"] = message

    common.guarded(f"Making the {label} model", background.start_extra, run_dir, name, on_error=tell)


def _extra_file(run: Run, status: dict[str, Any], suffixes: tuple[str, ...], default: str) -> str:
    """The made file the snippet loads (a folder's name, or a file in one), once it is made."""
    if status["state"] != extras.DONE:
        return default
    given = [str(f).rstrip("/") for f in status.get("files") or []]
    inside = [name for rel in given for name, _ in _folder(run, rel)]
    return next((f for f in [*given, *inside] if f.endswith(suffixes)), default)


def _show_status(run: Run, name: str, label: str, status: dict[str, Any]) -> None:
    state, message = status["state"], common.literal(status.get("message") or "")  # may quote paths and errors
    if state == extras.RUNNING:
        progress = status.get("progress")
        if isinstance(progress, int | float) and not isinstance(progress, bool):
            st.progress(min(max(float(progress), 0.0), 1.0), text=message or f"Making the {label} model…")
        else:
            st.info(message or f"Making the {label} model…", icon=":material/hourglass_top:")
    elif state == extras.DONE:
        st.success(message or f"The {label} model is ready.", icon=":material/check_circle:")
        files = [str(f) for f in status.get("files") or []]
        entries = target_files(run, name, files)
        missing = None if len(entries) > len(run.file(rf.LABELS)) else "Its files are missing from the run folder."
        _offer(run, name, f"Download the {label} model and labels", entries, missing)
    elif state == extras.FAILED:
        st.error(message or f"Making the {label} model failed.")
    elif state == extras.CONVERTER_MISSING:
        st.warning(message or f"The {label} converter is not installed here.")
    elif message:
        st.caption(message)


def _extra(run: Run, name: str, when: str, snippet: Callable[[Run, dict[str, Any]], None]) -> None:
    """A format made on request: when to pick it, "Make it", its status (refreshed while it runs), its download."""
    st.markdown(when)
    label = extras.get(name).label
    status = _status(run.dir, name)
    snippet(run, status)
    if run.exporting:
        st.caption("It can be made when the export has finished.")
        return
    if status["state"] in (extras.NOT_MADE, extras.FAILED, extras.CONVERTER_MISSING):
        st.button("Make it", key=f"make_{name}", icon=":material/build:", on_click=_start,
                  args=(run.dir, name, label), disabled=status["state"] == extras.CONVERTER_MISSING,
                  help=f"Converts this run's SavedModel to {label} in the background (under a minute); the page "
                       "shows its progress.")
    if error := st.session_state.pop(f"extra_error_{name}", None):
        st.error(common.literal(error))
    running = status["state"] == extras.RUNNING

    @st.fragment(run_every=POLL_S if running else None)
    def live() -> None:
        now = _status(run.dir, name)
        if running and now["state"] != extras.RUNNING:
            st.rerun(scope="app")  # finished: redraw the tab (its button, the snippet with the real file names)
        _show_status(run, name, label, now)

    live()


TFJS_WHEN = ("Pick this for **a web page that runs the model itself with TensorFlow.js** (no server, works offline "
             "once loaded). Made on request from the SavedModel.")
COREML_WHEN = ("Pick this for **an iPhone, iPad or Mac app that uses Core ML** (Apple's Neural Engine). Made on "
               "request from the SavedModel. In Xcode, drag the model into the project: Xcode shows its input and "
               "output and writes a Swift class for it.")


def _tfjs_snippet(run: Run, status: dict[str, Any]) -> None:
    model = _extra_file(run, status, ("model.json",), "model.json")
    st.code(f"""import * as tf from "@tensorflow/tfjs";   // npm install @tensorflow/tfjs
const model = await tf.loadGraphModel("{model}");   // with the weight files beside it
const x = tf.browser.fromPixels(img).resizeBilinear([{run.size}, {run.size}]).div(255).expandDims(0);
const probs = await model.predict(x).data();   // one per line of labels.txt: {_in_order(run.labels)}""",
            language="javascript")


def _coreml_snippet(run: Run, status: dict[str, Any]) -> None:
    model = _extra_file(run, status, (".mlpackage", ".mlmodel"), rf.COREML)
    st.code(f"""import coremltools as ct   # on a Mac: pip install coremltools pillow
from PIL import Image
model = ct.models.MLModel("{model}")
photo = Image.open("photo.jpg").convert("RGB").resize(({run.size}, {run.size}))   # the model scales the pixels
answer = model.predict({{"{INPUT_NAME}": photo}})
print(answer["classLabel"], answer["classLabel_probs"])   # {_either(run.labels)}, and each class's probability""",
            language="python")


# --- the section ---------------------------------------------------------------------------------------------------
TABS = ("Android / iOS", "Web page", "Python", "ONNX Runtime", "TF Serving", "TF.js", "Core ML")


def show(run: Run, bundle: Path, bundle_name: str) -> None:
    """The whole bundle's quick start, then one tab per target."""
    st.subheader("Use it elsewhere")
    st.markdown("The bundle runs on its own — no Retrain Studio, no TensorFlow. Unzip it and use its scripts:")
    st.code(f"""unzip {bundle_name} -d {run.slug}-model && cd {run.slug}-model
pip install -r requirements.txt
python predict.py photo.jpg some_folder/    # class subfolders: also prints the accuracy per class

pip install -r requirements-serve.txt       # an HTTP server
python serve.py --port 8080
curl -F upload=@photo.jpg http://127.0.0.1:8080/classify""", language="bash")
    st.caption("The bundle's README explains the server's endpoints, Docker and TF Serving, and how to run the "
               ".tflite models on phones and microcontrollers.")
    st.markdown("**Or take only what your product needs.** Where does it run?")
    threshold = (run.card.get("threshold") or {}).get("value")
    if isinstance(threshold, int | float) and threshold > 0:
        st.caption(f"predict.py and the server answer \"unknown\" below {threshold:.0%} confidence (the model card's "
                   "threshold); in the other runtimes, compare the top probability with it yourself.")
    tabs = st.tabs(list(TABS))
    with tabs[0]:
        _mobile(run)
    with tabs[1]:
        _web(run, bundle)
    with tabs[2]:
        _python(run)
    with tabs[3]:
        _onnx(run)
    with tabs[4]:
        _tfserving(run)
    with tabs[5]:
        _extra(run, "tfjs", TFJS_WHEN, _tfjs_snippet)
    with tabs[6]:
        _extra(run, "coreml", COREML_WHEN, _coreml_snippet)
