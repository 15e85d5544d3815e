/**
 * Views linked in one page, with no kernel round trip: a scatter whose points are tiles hands the boxes of
 * the points a lasso selected straight to the viewer showing their slide (wsi_lab/ui/explorer.py gives both
 * models the same `link` token). The kernel still gets both sides' new state (the scatter's selection,
 * the viewer's highlight) and fills the gallery; the slide does not wait for it.
 */

const EVENT = "wsi-lab-linked-boxes";

interface LinkedBoxes { link: string; boxes: Float32Array }

/** Hand `boxes` (float32 level-0 [x, y, w, h] * N) to the views of `link` in this page (synchronously). */
export function publishBoxes(link: string, boxes: Float32Array): void {
  if (link) window.dispatchEvent(new CustomEvent<LinkedBoxes>(EVENT, { detail: { link, boxes } }));
}

/** Call `take(boxes)` for every publish to the link `getLink()` names (read at each event); returns the
 * unsubscribe function. */
export function onLinkedBoxes(getLink: () => string, take: (boxes: Float32Array) => void): () => void {
  const listener = (e: Event) => {
    const d = (e as CustomEvent<LinkedBoxes>).detail;
    const link = getLink();
    if (link && d && d.link === link) take(d.boxes);
  };
  window.addEventListener(EVENT, listener);
  return () => window.removeEventListener(EVENT, listener);
}
