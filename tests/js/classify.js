// node tests/js/classify.js MODEL_DIR PIXELS.f32 N S
// Loads a TensorFlow.js graph model from its folder (model.json + weight shards) with @tensorflow/tfjs-converter on
// the CPU backend, runs it on N float32 SxSx3 images read from PIXELS.f32, and prints
// {"probabilities": [[...]], "inputs": [...], "outputs": [...]} as JSON.
"use strict";
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const { loadGraphModel } = require("@tensorflow/tfjs-converter");

function fromFolder(dir) {  // tf.io's file:// handler is tfjs-node's; this is what it does, in plain Node
  const model = JSON.parse(fs.readFileSync(path.join(dir, "model.json"), "utf8"));
  const specs = [], buffers = [];
  for (const group of model.weightsManifest) {
    specs.push(...group.weights);
    buffers.push(...group.paths.map((p) => fs.readFileSync(path.join(dir, p))));
  }
  const data = Buffer.concat(buffers);
  return { load: async () => ({
    modelTopology: model.modelTopology, format: model.format, generatedBy: model.generatedBy,
    convertedBy: model.convertedBy, signature: model.signature, userDefinedMetadata: model.userDefinedMetadata,
    weightSpecs: specs, weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) }) };
}

async function main() {
  const [dir, pixels, n, s] = process.argv.slice(2);
  await tf.setBackend("cpu");
  const model = await loadGraphModel(fromFolder(dir));
  const raw = fs.readFileSync(pixels);
  const x = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), [+n, +s, +s, 3]);
  const y = model.predict(x);
  process.stdout.write(JSON.stringify({ probabilities: await y.array(), inputs: model.inputs.map((i) => i.name),
                                        outputs: model.outputs.map((o) => o.name) }));
}

main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
