// Shows the pack's warnings (nodes/notify.py sends them as the "comfyui-inversion.warning" event) as toasts on the
// page, naming the node that warned: most users never see the server console they are also logged to.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "comfyui-inversion.warning";
const SHOWN_MS = 20000;

function nodeLabel(id) {
  if (id === null || id === undefined) return "";
  // a node inside a group node / subgraph has a path id ("12:3"); the top-level part is what the canvas shows
  const top = String(id).split(":")[0];
  const node = app.graph?.getNodeById?.(Number(top)) ?? app.graph?.getNodeById?.(top);
  return node ? `${node.title} (#${id})` : `node #${id}`;
}

app.registerExtension({
  name: "comfyui-inversion.warnings",
  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const message = String(detail?.message ?? "");
      const where = nodeLabel(detail?.node);
      const summary = where ? `Inversion warning: ${where}` : "Inversion warning";
      const toast = app.extensionManager?.toast;
      if (toast?.add) {
        toast.add({ severity: "warn", summary, detail: message, life: SHOWN_MS });
      } else {
        console.warn(`[comfyui-inversion] ${summary}: ${message}`);   // a frontend without the toast API
      }
    });
  },
});
