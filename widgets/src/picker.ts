/**
 * The channel picker alone (the slide browser's, wsi_lab/ui/channel_picker.py): the same panel as the
 * viewer's (./display.ts, kernel side wsi_lab/ui/display_controls.py) outside a viewer. The root carries
 * `data-token` (the settings shown) and `data-sent` (how many changes it sent) for tests.
 */
import { displayPanel } from "./display";
import type { AnyModel } from "./sources";

function render({ model, el }: { model: AnyModel; el: HTMLElement }) {
  const root = document.createElement("div");
  root.className = "wsi-lab-picker";
  const panel = document.createElement("div");
  root.append(panel);
  el.append(root);
  const update = displayPanel(model, panel);
  const onChange = () => update();
  model.on("change:display_state", onChange);
  return () => model.off("change:display_state", onChange);
}

export default { render };
