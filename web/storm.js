// ComfyUI-STORM frontend extension: shows the text a STORM node reports after it runs
// (the tokenisation of STORM Subject Tokens, the guidance log of STORM Attention Heatmap)
// in a read-only box inside the node, and gives node search the nodes' aliases on hosts that do
// not send them. Callbacks are chained, never replaced.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TEXT_OUTPUTS = {
  STORM_SubjectTokens: "storm_text",
  STORM_PromptAnalysis: "storm_text",
  STORM_AttentionInterpolation: "storm_text",
  STORM_SelectFrame: "storm_text",
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
const CHIP_NODES = new Set(["STORM_SubjectTokens", "STORM_PromptAnalysis"]);
const CHIPS = "storm_chips";

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
  box.replaceChildren(
    ...(node.stormWords ?? []).map((word) => {
      const chip = document.createElement("button");
      const chosen = isChosen(word, items);
      chip.className = "storm-chip" + (chosen ? " storm-chip-chosen" : "");
      chip.dataset.ref = word.ref;
      chip.type = "button";
      chip.title = `${word.ref}: column${word.positions.length > 1 ? "s" : ""} ${word.positions.join(", ")}` +
        (chosen ? " (a subject: click to remove)" : " (click to make it a subject)");
      chip.textContent = `${word.text} ${word.positions.join("+")}`;
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
  const text = node.widgets?.find((w) => w.name === "text")?.value ?? "";
  if (node.stormChipText === text) return renderChips(node);
  node.stormChipText = text;
  try {
    const response = await api.fetchApi(`/storm/tokens?text=${encodeURIComponent(text)}`);
    const reply = await response.json();
    if (node.stormChipText !== text) return; // typed on meanwhile
    node.stormWords = reply.words ?? [];
  } catch (error) {
    node.stormWords = [];
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
  later();
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
      return result;
    };
  },
});
