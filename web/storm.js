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
