// What the pack shows on the page (nodes/page.py):
// * its warnings, sent as the "comfyui-inversion.warning" event, as toasts naming the node that warned (most users
//   never see the server console they are also logged to);
// * the Inversion Report's table in a read-only text box on the node (its plot is shown as the host shows previews).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const EVENT = "comfyui-inversion.warning";
const SHOWN_MS = 20000;
const REPORT_NODE = "InversionReport";
const REPORT_WIDGET = "report";

function nodeLabel(id) {
  if (id === null || id === undefined) return "";
  // a node inside a group node / subgraph has a path id ("12:3"); the top-level part is what the canvas shows
  const top = String(id).split(":")[0];
  const node = app.graph?.getNodeById?.(Number(top)) ?? app.graph?.getNodeById?.(top);
  return node ? `${node.title} (#${id})` : `node #${id}`;
}

function showWarning({ detail }) {
  const message = String(detail?.message ?? "");
  const where = nodeLabel(detail?.node);
  const summary = where ? `Inversion warning: ${where}` : "Inversion warning";
  const toast = app.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity: "warn", summary, detail: message, life: SHOWN_MS });
  } else {
    console.warn(`[comfyui-inversion] ${summary}: ${message}`);   // a frontend without the toast API
  }
}

app.registerExtension({
  name: "comfyui-inversion.page",
  setup() {
    api.addEventListener(EVENT, showWarning);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== REPORT_NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, [message]);
      const text = message?.text?.[0];
      if (text === undefined) return;
      let box = this.widgets?.find((w) => w.name === REPORT_WIDGET);
      if (!box) {
        box = ComfyWidgets.STRING(this, REPORT_WIDGET, ["STRING", { multiline: true }], app).widget;
        if (box.element) box.element.readOnly = true;
        box.serialize = false;   // shown, never saved into the workflow's widget values
      }
      box.value = String(text);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
