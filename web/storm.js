// ComfyUI-STORM frontend extension, the in-node UI of the pack's nodes (callbacks are chained, never replaced):
// - the text a STORM node reports after it runs (tokenisation, analysis, coefficients, the guidance log) in a
//   read-only box inside the node;
// - subject chips on STORM Subject Tokens / Prompt Analysis: the prompt's words, clicked to choose subjects;
// - loss charts on STORM Attention Heatmap: each term's loss per guided step, refinement marked;
// - the heatmap view on STORM Attention Heatmap: per-step maps per token, a step scrubber, the colour scale of
//   the node's colormap, the maps over the decoded image;
// - node search aliases on hosts that do not send them.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TEXT_OUTPUTS = {
  STORM_SubjectTokens: "storm_text",
  STORM_PromptAnalysis: "storm_text",
  STORM_AttentionInterpolation: "storm_text",
  STORM_DynamicInterpolation: "storm_text",
  STORM_SelectFrame: "storm_text",
  STORM_ImageMorph: "storm_text",
  STORM_SaveAttention: "storm_text",
  STORM_AttentionHeatmap: "storm_log",
};
const DISPLAY = "storm_display";

// height reserved for the text box: the node has its final size from the start, so a run never makes
// it grow over its neighbours; longer text scrolls, and the node can be resized to show more
const TEXT_BOX_HEIGHT = 120;

function textWidget(node) {
  let widget = node.widgets?.find((w) => w.name === DISPLAY);
  if (widget) return widget;
  const area = document.createElement("textarea");
  area.readOnly = true;
  area.spellcheck = false;
  area.placeholder = "(shown after a run)";
  Object.assign(area.style, {
    fontFamily: "monospace",
    fontSize: "11px",
    width: "100%",
    height: "100%",
    resize: "none",
    opacity: "0.85",
    overflow: "auto",
    whiteSpace: "pre",
  });
  widget = node.addDOMWidget(DISPLAY, "storm_text", area, {
    serialize: false,
    getValue: () => area.value,
    setValue: (v) => {
      area.value = v;
    },
    getMinHeight: () => TEXT_BOX_HEIGHT,
  });
  widget.serialize = false;
  return widget;
}

function showText(node, text) {
  const widget = textWidget(node);
  widget.element.value = text;
  node.setDirtyCanvas?.(true, true);
}

// Token chips: the prompt's words as the model's CLIP tokenizer splits them (the pack's route
// /storm/tokens), shown while the user types; a click adds the word to `subjects` or removes it.
// For SD3, Flux and Chroma the chips show the rows of that family's conditioning (CLIP then T5 rows; T5 rows),
// the family read off the loader that feeds the node's `clip` input.
const CHIP_NODES = new Set(["STORM_SubjectTokens", "STORM_PromptAnalysis"]);
const CHIPS = "storm_chips";
const FAMILY_NAMES = { sd3: "SD3", flux: "Flux", chroma: "Chroma", qwen_image: "Qwen-Image", z_image: "Z-Image",
  flux2: "Flux.2", krea2: "Krea 2" };

// The DiT family of the CLIP a node reads ("sd3", "flux", "chroma"), or "" for SD1.x/SDXL's CLIP columns: the
// loader at the other end of its `clip` input (through reroutes). Triple CLIP Loader is SD3 with T5; a
// Dual CLIP Loader says its type (SD3 only when one of its files is a T5), and so does a CLIP Loader of type
// "chroma" (Chroma's T5), "qwen_image" (Qwen2.5-VL), "krea2" (Qwen3-VL), "lumina2" with a Qwen3 file (Z-Image)
// or "flux2" with a Qwen3 file (Flux.2 klein; dev's Mistral tokenizer is inside its file: no chips); a checkpoint
// says it in its file name
// ("sd3.5_large_fp8_scaled", "flux1-dev"). Anything else (a single CLIP Loader could be CLIP or T5) keeps
// the CLIP columns; the node's tokenization output after a run always lists the real ones.
function clipFamily(node) {
  let source = node;
  let slot = source.findInputSlot?.("clip") ?? -1;
  for (let hop = 0; hop < 16; hop++) {
    if (slot < 0) return "";
    source = source.getInputNode?.(slot);
    if (!source) return "";
    if (source.type !== "Reroute") break;
    slot = 0;
  }
  const value = (name) => String(source.widgets?.find((w) => w.name === name)?.value ?? "").toLowerCase();
  if (source.type === "TripleCLIPLoader") return "sd3";
  if (source.type === "CLIPLoader") {
    const type = value("type");
    if (["chroma", "qwen_image", "krea2"].includes(type)) return type;
    if (type === "lumina2" && value("clip_name").includes("qwen")) return "z_image";
    if (type === "flux2" && value("clip_name").includes("qwen")) return "flux2";
  }
  if (source.type === "DualCLIPLoader") {
    const type = value("type");
    if (type === "flux") return "flux";
    return type === "sd3" && [value("clip_name1"), value("clip_name2")].some((n) => n.includes("t5")) ? "sd3" : "";
  }
  const checkpoint = value("ckpt_name");
  if (/flux/.test(checkpoint)) return "flux";
  if (/chroma/.test(checkpoint)) return "chroma";
  if (/sd3|sd_3|stable-diffusion-3/.test(checkpoint)) {
    // "sd3_medium_incl_clips": CLIP-L and CLIP-G without T5, so only the CLIP columns
    return checkpoint.includes("incl_clips") && !checkpoint.includes("t5") ? "" : "sd3";
  }
  return "";
}

function subjectItems(value) {
  return String(value ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

function isChosen(word, items) {
  const lower = items.map((i) => i.toLowerCase());
  return (
    lower.includes(word.ref.toLowerCase()) ||
    (!word.ref.includes("#") && lower.includes(`${word.text.toLowerCase()}#1`)) ||
    word.positions.some((p) => lower.includes(String(p)))
  );
}

function toggleSubject(node, word) {
  const subjects = node.widgets?.find((w) => w.name === "subjects");
  if (!subjects) return;
  const items = subjectItems(subjects.value);
  const kept = items.filter((i) => !isChosen(word, [i]));
  const next = kept.length === items.length ? [...items, word.ref] : kept;
  subjects.value = next.join(", ");
  subjects.callback?.(subjects.value);
  renderChips(node);
  node.setDirtyCanvas?.(true, true);
}

function renderChips(node) {
  const widget = node.widgets?.find((w) => w.name === CHIPS);
  if (!widget) return;
  const items = subjectItems(node.widgets?.find((w) => w.name === "subjects")?.value);
  const box = widget.element;
  // which streams a chip's columns are (inline, so the chips keep their two lines): "SD3 (CLIP · T5)"
  const caption = document.createElement("span");
  caption.className = "storm-chip-columns";
  caption.textContent = node.stormFamily ? `${FAMILY_NAMES[node.stormFamily]} (${node.stormStreams.join(" · ")})` : "";
  caption.title = `the rows of this model family's conditioning: ${node.stormColumns ?? ""}`;
  Object.assign(caption.style, { font: "10px monospace", color: "#999", margin: "3px 4px 1px 2px" });
  box.replaceChildren(
    ...(node.stormFamily ? [caption] : []),
    ...(node.stormWords ?? []).map((word) => {
      const chip = document.createElement("button");
      const chosen = isChosen(word, items);
      chip.className = "storm-chip" + (chosen ? " storm-chip-chosen" : "");
      chip.dataset.ref = word.ref;
      chip.type = "button";
      const streams = node.stormFamily && word.streams?.length ? word.streams : null;
      const columns = streams
        ? streams.map(([name, cols]) => `${cols.join(", ")} (${name})`).join(", ")
        : word.positions.join(", ");
      chip.title = `${word.ref}: column${word.positions.length > 1 ? "s" : ""} ${columns}` +
        (chosen ? " (a subject: click to remove)" : " (click to make it a subject)");
      const label = streams ? streams.map(([, cols]) => cols.join("+")).join(" · ") : word.positions.join("+");
      chip.textContent = `${word.text} ${label}`;
      Object.assign(chip.style, {
        font: "11px monospace",
        padding: "1px 5px",
        margin: "1px",
        borderRadius: "8px",
        cursor: "pointer",
        border: chosen ? "1px solid #6cf" : "1px solid #555",
        background: chosen ? "#246" : "#2a2a2a",
        color: chosen ? "#fff" : "#bbb",
      });
      chip.addEventListener("click", (event) => {
        event.stopPropagation();
        toggleSubject(node, word);
      });
      return chip;
    }),
  );
}

async function refreshChips(node) {
  // the timer may fire after the node left its graph (another workflow loaded, the node deleted): nothing to show,
  // and the loader lookup would throw (litegraph's getInputNode needs the graph)
  if (!node.graph) return;
  const text = node.widgets?.find((w) => w.name === "text")?.value ?? "";
  const family = clipFamily(node);
  const key = `${family}\n${text}`;
  if (node.stormChipKey === key) return renderChips(node);
  node.stormChipKey = key;
  try {
    const query = `text=${encodeURIComponent(text)}` + (family ? `&family=${family}` : "");
    const response = await api.fetchApi(`/storm/tokens?${query}`);
    const reply = await response.json();
    if (node.stormChipKey !== key) return; // typed on meanwhile
    node.stormWords = reply.words ?? [];
    node.stormFamily = family && reply.family === family ? family : "";
    node.stormColumns = reply.columns;
    node.stormStreams = reply.streams ?? [];
  } catch (error) {
    node.stormWords = [];
    node.stormFamily = "";
  }
  renderChips(node);
}

function addChips(node) {
  const box = document.createElement("div");
  Object.assign(box.style, { display: "flex", flexWrap: "wrap", alignContent: "flex-start", overflow: "auto" });
  node.addDOMWidget(CHIPS, "storm_chips", box, { serialize: false, getMinHeight: () => 48 });
  let timer;
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(() => refreshChips(node), 250);
  };
  for (const name of ["text", "subjects"]) {
    const widget = node.widgets?.find((w) => w.name === name);
    if (!widget) continue;
    const previous = widget.callback;
    widget.callback = function () {
      later();
      return previous?.apply(this, arguments);
    };
    widget.element?.addEventListener?.("input", later);
  }
  const configure = node.onConfigure;
  node.onConfigure = function () {
    const result = configure?.apply(this, arguments);
    later();
    return result;
  };
  const connections = node.onConnectionsChange;
  node.onConnectionsChange = function () {
    const result = connections?.apply(this, arguments);
    later(); // another loader on `clip` may be another family
    return result;
  };
  later();
}

// Loss curves: one small SVG chart per loss term in STORM Attention Heatmap, from the run's guidance
// log (output.storm_steps): the loss before each guided step's update (line), and where refinement ran,
// a dot at the value it reached (the legend of the text log says the same in words).
const CHART = "storm_chart";
const SVG = "http://www.w3.org/2000/svg";

function mean(values) {
  const finite = (values ?? []).map(Number).filter(Number.isFinite);
  return finite.length ? finite.reduce((a, b) => a + b, 0) / finite.length : NaN;
}

function svgElement(tag, attributes, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function drawCharts(node, steps) {
  const widget = node.widgets?.find((w) => w.name === CHART);
  if (!widget) return;
  const box = widget.element;
  const terms = [...new Set((steps ?? []).flatMap((e) => Object.keys(e.terms_before ?? {})))];
  box.replaceChildren();
  if (!terms.length) {
    box.textContent = steps?.length === 0 ? "no guided steps in this run" : "";
    return;
  }
  const width = 300;
  const height = 70;
  const pad = 4;
  for (const term of terms) {
    const points = steps.map((e) => ({
      step: e.step,
      before: mean(e.terms_before?.[term]),
      after: e.refine_iters ? mean(e.terms_after?.[term]) : NaN,
      refined: e.refine_iters,
    }));
    const values = points.flatMap((p) => [p.before, p.after]).filter(Number.isFinite);
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const first = points[0].step;
    const last = Math.max(points[points.length - 1].step, first + 1);
    const x = (step) => pad + ((step - first) / (last - first)) * (width - 2 * pad);
    const y = (v) => height - pad - ((v - lo) / (hi - lo || 1)) * (height - 2 * pad - 12);
    const svg = svgElement("svg", { class: "storm-loss-chart", "data-term": term, viewBox: `0 0 ${width} ${height}`,
                                     width: "100%", height });
    svg.append(svgElement("text", { x: pad, y: 10, fill: "#bbb", "font-size": 10, "font-family": "monospace" },
      `${term}: ${lo.toFixed(3)}..${hi.toFixed(3)} over steps ${first}-${points[points.length - 1].step}`));
    const line = points.filter((p) => Number.isFinite(p.before)).map((p) => `${x(p.step)},${y(p.before)}`);
    svg.append(svgElement("polyline", { points: line.join(" "), fill: "none", stroke: "#6cf", "stroke-width": 1.5,
                                        class: "storm-loss-before" }));
    for (const p of points.filter((p) => p.refined && Number.isFinite(p.after))) {
      svg.append(svgElement("line", { x1: x(p.step), y1: y(p.before), x2: x(p.step), y2: y(p.after),
                                      stroke: "#fa4", "stroke-width": 1 }));
      const dot = svgElement("circle", { cx: x(p.step), cy: y(p.after), r: 2.5, fill: "#fa4",
                                         class: "storm-loss-refined" });
      dot.append(svgElement("title", {}, `step ${p.step}: refined x${p.refined} -> ${p.after.toFixed(4)}`));
      svg.append(dot);
    }
    box.append(svg);
  }
}

function addChart(node) {
  const box = document.createElement("div");
  Object.assign(box.style, { overflow: "auto", font: "11px monospace", color: "#999" });
  node.addDOMWidget(CHART, "storm_chart", box, { serialize: false, getMinHeight: () => 80 });
}

// Heatmap view: STORM Attention Heatmap's per-step maps (output.storm_maps: uint8, each map scaled to
// its own maximum), one tab per token with its word as a large label, a step scrubber ("mean" = the
// average the node's images show), a colour scale, a click on the map to enlarge it, and (when the node
// has an image) the map drawn over the decoded image at the node's opacity.
const VIEW = "storm_view";

// the colour of v in [0, 1] on the node's colormap: payload.colormap holds the stops (RGB in [0, 1]) of the
// colormap the node's grid images are drawn with, interpolated linearly between them exactly as there
function colorOf(stops, v) {
  const x = Math.min(1, Math.max(0, v)) * (stops.length - 1);
  const lo = Math.min(Math.floor(x), stops.length - 2);
  const t = x - lo;
  return stops[lo].map((c, i) => 255 * (c * (1 - t) + stops[lo + 1][i] * t));
}

function decodeMaps(payload) {
  const bytes = Uint8Array.from(atob(payload.data), (c) => c.charCodeAt(0));
  return { ...payload, bytes, steps: payload.sigmas.length };
}

function drawMap(view) {
  const { maps, token, step, canvas } = view;
  const { height: h, width: w, steps, bytes } = maps;
  const image = canvas.getContext("2d").createImageData(w, h);
  const values = new Float32Array(h * w);
  if (step < 0) {
    for (let s = 0; s < steps; s++) {
      const base = (token * steps + s) * h * w;
      for (let i = 0; i < h * w; i++) values[i] += bytes[base + i] / steps;
    }
  } else {
    const base = (token * steps + step) * h * w;
    for (let i = 0; i < h * w; i++) values[i] = bytes[base + i];
  }
  const peak = Math.max(...values) || 1;
  for (let i = 0; i < h * w; i++) {
    const [r, g, b] = colorOf(maps.colormap, values[i] / peak);
    image.data.set([r, g, b, 255], i * 4);
  }
  const photo = view.overlay && view.photo?.complete && view.photo.naturalWidth ? view.photo : null;
  if (photo) {
    // the decoded image with the map drawn over it at the node's opacity, smoothly scaled to its size
    const heat = document.createElement("canvas");
    heat.width = w;
    heat.height = h;
    heat.getContext("2d").putImageData(image, 0, 0);
    canvas.width = photo.naturalWidth;
    canvas.height = photo.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(photo, 0, 0);
    ctx.globalAlpha = maps.opacity ?? 0.6;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(heat, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
    canvas.style.imageRendering = "auto";
  } else {
    canvas.width = w;
    canvas.height = h;
    canvas.getContext("2d").putImageData(image, 0, 0);
    canvas.style.imageRendering = "pixelated";
  }
  view.caption.textContent = step < 0 ? `mean of ${steps} evaluations` :
    `evaluation ${step + 1} of ${steps} (sigma ${maps.sigmas[step]})`;
  view.tabs.forEach((tab, i) => {
    tab.style.background = i === token ? "#246" : "#2a2a2a";
    tab.style.color = i === token ? "#fff" : "#bbb";
  });
}

function showMaps(node, payload) {
  const widget = node.widgets?.find((w) => w.name === VIEW);
  if (!widget || !payload) return;
  const box = widget.element;
  const maps = decodeMaps(payload);
  const view = { maps, token: 0, step: -1 };
  const tabs = document.createElement("div");
  view.tabs = maps.labels.map((label, i) => {
    const tab = document.createElement("button");
    tab.type = "button";
    tab.className = "storm-view-token";
    tab.textContent = label;
    Object.assign(tab.style, { font: "bold 14px sans-serif", margin: "1px", padding: "2px 8px", border: "1px solid #555",
                               borderRadius: "6px", cursor: "pointer" });
    tab.addEventListener("click", () => {
      view.token = i;
      drawMap(view);
    });
    tabs.append(tab);
    return tab;
  });
  const row = document.createElement("div");
  Object.assign(row.style, { display: "flex", alignItems: "stretch", gap: "4px", height: "110px" });
  view.canvas = document.createElement("canvas");
  view.canvas.className = "storm-view-map";
  view.canvas.title = "click to enlarge";
  Object.assign(view.canvas.style, { height: "100%", cursor: "zoom-in" });
  view.canvas.addEventListener("click", () => {
    const big = row.style.height !== "110px";
    row.style.height = big ? "110px" : "300px";
    view.canvas.style.cursor = big ? "zoom-in" : "zoom-out";
  });
  const scale = document.createElement("div");
  scale.title = "colour scale: 0 (dark blue) to the map's maximum (red)";
  const gradient = maps.colormap.map((stop) => `rgb(${stop.map((c) => Math.round(255 * c)).join(", ")})`);
  Object.assign(scale.style, { width: "10px", background: `linear-gradient(to top, ${gradient.join(", ")})` });
  const ends = document.createElement("div");
  Object.assign(ends.style, { display: "flex", flexDirection: "column", justifyContent: "space-between",
                              font: "10px monospace", color: "#999" });
  ends.append(Object.assign(document.createElement("span"), { textContent: "max" }),
              Object.assign(document.createElement("span"), { textContent: "0" }));
  row.append(view.canvas, scale, ends);
  if (maps.image) {
    // overlay on the decoded image (on by default); the photo loads asynchronously, then redraws
    view.overlay = true;
    view.photo = new Image();
    view.photo.addEventListener("load", () => drawMap(view));
    view.photo.src = maps.image;
    const label = document.createElement("label");
    Object.assign(label.style, { font: "11px sans-serif", color: "#bbb", marginLeft: "8px", whiteSpace: "nowrap" });
    const toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.className = "storm-view-overlay";
    toggle.checked = true;
    toggle.addEventListener("change", () => {
      view.overlay = toggle.checked;
      drawMap(view);
    });
    label.append(toggle, " on image");
    label.title = "draw the map over the decoded image (the node's image input) at the node's opacity";
    tabs.append(label);
  }
  const slider = document.createElement("input");
  slider.type = "range";
  slider.className = "storm-view-step";
  slider.min = -1;
  slider.max = maps.steps - 1;
  slider.value = -1;
  slider.title = "step (leftmost: the mean over the run)";
  slider.style.width = "100%";
  slider.addEventListener("input", () => {
    view.step = Number(slider.value);
    drawMap(view);
  });
  view.caption = document.createElement("div");
  Object.assign(view.caption.style, { font: "10px monospace", color: "#999" });
  box.replaceChildren(tabs, row, slider, view.caption);
  node.stormView = view;
  drawMap(view);
}

function addView(node) {
  const box = document.createElement("div");
  Object.assign(box.style, { overflow: "hidden" });
  node.addDOMWidget(VIEW, "storm_view", box, { serialize: false, getMinHeight: () => 170 });
}

// Hosts that read a node's SEARCH_ALIASES send them in /object_info; for the others the pack's
// route (nodes/web_routes.py) has them. Filled in before the frontend indexes the definitions.
async function addSearchAliases(defs) {
  const missing = Object.values(defs).filter((d) => d?.name?.startsWith("STORM_") && !d.search_aliases?.length);
  if (!missing.length) return;
  try {
    const response = await api.fetchApi("/storm/node_info");
    if (!response.ok) return;
    const info = await response.json();
    for (const def of missing) {
      const aliases = info[def.name]?.search_aliases;
      if (aliases?.length) def.search_aliases = aliases;
    }
  } catch (error) {
    console.debug("STORM: no search aliases", error);
  }
}

app.registerExtension({
  name: "STORM.ui",
  async addCustomNodeDefs(defs) {
    await addSearchAliases(defs);
  },
  nodeCreated(node) {
    if (CHIP_NODES.has(node.comfyClass)) addChips(node);
    if (node.comfyClass === "STORM_AttentionHeatmap") {
      addView(node);
      addChart(node);
    }
    const key = TEXT_OUTPUTS[node.comfyClass];
    if (!key) return;
    textWidget(node);
    const size = node.computeSize?.();
    if (size) node.setSize?.([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
    const previous = node.onExecuted;
    node.onExecuted = function (output) {
      const result = previous?.apply(this, arguments);
      const text = output?.[key];
      if (text !== undefined) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
      if (output?.storm_steps !== undefined) drawCharts(this, output.storm_steps);
      if (output?.storm_maps !== undefined) showMaps(this, output.storm_maps[0]);
      return result;
    };
  },
});
