// The threshold slider's live preview: the body of `js_on_load` of app.py's gr.HTML "live-threshold"
// (Gradio supplies `element`, `trigger`, `props` and `watch`).
//
// Once per segmentation the server sends `props.value` (app.SliceHandlers.live_view):
//   width, height   the slice's size
//   image           PNG data URL of the RGB slice
//   levels          PNG data URL (gray): per pixel, how many of `thresholds` its probability reaches,
//                   so `levels > k` is exactly the server's `proba >= thresholds[k]`
//   thresholds      the slider's steps
//   min_component_px  8-connected components smaller than this are dropped (brainseg.inference.postprocess)
//   colour, tint    the contour colour and the 3 x 256 fill table (brainseg.views.overlay.tint_table)
//   contour         [dy, dx] offsets painted around each boundary pixel (brainseg.views.overlay.contour_offsets)
// On each `brainseg-threshold` document event (the slider's `input`, see app.py) this draws the prediction on
// a canvas laid over the overlay image: the same mask as the server's at every slider step (threshold, then
// small-component removal) and the same pixels at a 1-px contour. The server's image replaces it when the
// overlay changes (the `/threshold` call on release, a new slice).
// For tests and benchmarks: `data-ready="true"` on `element` once a payload is decoded; after each draw the canvas
// carries `data-threshold` and `data-area-px` and dispatches a bubbling `brainseg-drawn` event.
const overlaySelector = `#${props.overlay_id}`;
const sliderSelector = `#${props.slider_id} input[type=range]`;
const readout = element.querySelector(".brainseg-live-readout");
const KEYS = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "PageUp", "PageDown", "Home", "End"]);
let data = null; // the decoded payload
let generation = 0; // bumps with every payload, so a slow decode cannot install an old one
let wanted = null; // a threshold asked for while decoding
let canvas = null;
let observed = null;

async function pixels(url) {
  const blob = await (await fetch(url)).blob();
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const scratch = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = scratch.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, bitmap.width, bitmap.height).data;
}

async function load(payload) {
  const mine = ++generation;
  data = null;
  element.dataset.ready = "false";
  hide();
  if (!payload) return;
  const [rgba, gray] = await Promise.all([pixels(payload.image), pixels(payload.levels)]);
  if (mine !== generation) return;
  const count = payload.width * payload.height;
  const levels = new Uint8Array(count);
  for (let i = 0; i < count; i++) levels[i] = gray[4 * i];
  data = {
    ...payload,
    base: rgba,
    levels,
    tint: payload.tint.map((row) => Uint8Array.from(row)),
    mask: new Uint8Array(count),
    queue: new Int32Array(count),
    frame: new ImageData(payload.width, payload.height),
  };
  element.dataset.ready = "true";
  if (wanted !== null) draw(wanted);
}

// Index of the slider step for `threshold`; `exact` when it is one (a value typed between steps is previewed at
// the step above until the server's redraw).
function step(threshold) {
  const steps = data.thresholds;
  let k = steps.findIndex((t) => t >= threshold - 1e-9);
  if (k < 0) k = steps.length - 1;
  return { k, exact: Math.abs(steps[k] - threshold) < 1e-9 };
}

// mask = levels > k, then drop 8-connected components under min_component_px (like cv2.connectedComponents).
function computeMask(k) {
  const { width: W, height: H, levels, mask, queue, min_component_px: minPx } = data;
  const count = W * H;
  for (let i = 0; i < count; i++) mask[i] = levels[i] > k ? 1 : 0;
  let area = 0;
  for (let seed = 0; seed < count; seed++) {
    if (mask[seed] !== 1) continue;
    let head = 0;
    let tail = 0;
    queue[tail++] = seed;
    mask[seed] = 2;
    while (head < tail) {
      const i = queue[head++];
      const x = i % W;
      const y = (i - x) / W;
      for (let yy = Math.max(0, y - 1); yy <= Math.min(H - 1, y + 1); yy++) {
        for (let xx = Math.max(0, x - 1); xx <= Math.min(W - 1, x + 1); xx++) {
          const j = yy * W + xx;
          if (mask[j] === 1) {
            mask[j] = 2;
            queue[tail++] = j;
          }
        }
      }
    }
    const keep = tail >= minPx ? 3 : 0;
    for (let q = 0; q < tail; q++) mask[queue[q]] = keep;
    if (keep) area += tail;
  }
  for (let i = 0; i < count; i++) mask[i] = mask[i] === 3 ? 1 : 0;
  return area;
}

// The slice, the mask filled through the tint table, its boundary (a 4-neighbour outside the mask or the
// image) painted in the colour and widened by the contour offsets: brainseg.views.overlay.fill_and_contour.
function paint() {
  const { width: W, height: H, mask, base, frame, contour } = data;
  const [red, green, blue] = data.tint;
  const [r, g, b] = data.colour;
  const out = frame.data;
  out.set(base);
  for (let i = 0, p = 0; i < mask.length; i++, p += 4) {
    if (!mask[i]) continue;
    out[p] = red[base[p]];
    out[p + 1] = green[base[p + 1]];
    out[p + 2] = blue[base[p + 2]];
  }
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = y * W + x;
      if (!mask[i]) continue;
      if (x > 0 && y > 0 && x < W - 1 && y < H - 1 && mask[i - 1] && mask[i + 1] && mask[i - W] && mask[i + W]) {
        continue;
      }
      for (const [dy, dx] of contour) {
        const yy = y + dy;
        const xx = x + dx;
        if (yy < 0 || xx < 0 || yy >= H || xx >= W) continue;
        const p = 4 * (yy * W + xx);
        out[p] = r;
        out[p + 1] = g;
        out[p + 2] = b;
      }
    }
  }
}

function hide() {
  if (canvas) canvas.hidden = true;
  readout.textContent = "";
}

// The server's overlay changed (a new slice, the redraw on release): show it instead of the canvas.
function watchOverlay(block) {
  if (observed === block) return;
  observed = block;
  new MutationObserver((mutations) => {
    const ours = (node) => node === canvas;
    const foreign = mutations.some((m) =>
      m.type === "attributes"
        ? m.target.tagName === "IMG"
        : ![...m.addedNodes, ...m.removedNodes].every(ours));
    if (foreign) hide();
  }).observe(block, { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
}

// The canvas, sized and placed exactly over the overlay's <img> (same box, same object-fit).
function place(img) {
  if (!canvas) {
    canvas = document.createElement("canvas");
    canvas.className = "brainseg-live-canvas";
    canvas.setAttribute("aria-hidden", "true");
    // out of the flow before it is inserted, so it never moves the image it measures
    Object.assign(canvas.style, { position: "absolute", pointerEvents: "none" });
  }
  const frame = img.parentElement;
  if (canvas.parentElement !== frame) img.after(canvas);
  if (getComputedStyle(frame).position === "static") frame.style.position = "relative";
  if (canvas.width !== data.width || canvas.height !== data.height) {
    canvas.width = data.width;
    canvas.height = data.height;
  }
  const box = img.getBoundingClientRect();
  const origin = frame.getBoundingClientRect();
  Object.assign(canvas.style, {
    left: `${box.left - origin.left - frame.clientLeft}px`,
    top: `${box.top - origin.top - frame.clientTop}px`,
    width: `${box.width}px`,
    height: `${box.height}px`,
    objectFit: getComputedStyle(img).objectFit,
  });
  return canvas;
}

function draw(threshold) {
  if (!data) {
    wanted = threshold;
    return;
  }
  wanted = null;
  const block = document.querySelector(overlaySelector);
  const img = block && block.querySelector("img");
  if (!img) return;
  watchOverlay(block);
  const { k, exact } = step(threshold);
  const area = computeMask(k);
  paint();
  const target = place(img);
  target.getContext("2d").putImageData(data.frame, 0, 0);
  target.hidden = false;
  const percent = (100 * area) / (data.width * data.height);
  readout.textContent =
    `Live preview at ${data.thresholds[k]}${exact ? "" : " (the slider step above)"}: ` +
    `${area.toLocaleString("en-US")} px (${percent.toFixed(2)} % of the slice). ` +
    "Dice, the agreement map and the mask PNG follow on release.";
  target.dataset.threshold = String(data.thresholds[k]);
  target.dataset.areaPx = String(area);
  target.dispatchEvent(new CustomEvent("brainseg-drawn", { bubbles: true, detail: { threshold, area, exact } }));
}

document.addEventListener("brainseg-threshold", (event) => draw(Number(event.detail)));
// Arrow keys move the range without a pointer `release`: ask for the server's redraw on key up.
document.addEventListener("keyup", (event) => {
  if (KEYS.has(event.key) && event.target.matches && event.target.matches(sliderSelector)) trigger("submit");
});
watch("value", () => load(props.value));
load(props.value);
