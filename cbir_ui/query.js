// The page's own script (cbir_ui/page.py puts it in the page's <head>).
//
// The query box: drag on the photo to search one part of it. The photo is uploaded once, when it is
// chosen; a search sends the uploaded file's reference and the box as four numbers in the photo's
// own pixels, so a new box, backbone or k uploads nothing. (An image editor re-sent its whole canvas
// and layers on every search: seconds for a phone photo, see docs/performance.md, "The page".)
(() => {
  const IMAGE = "#query-image .image-frame img";
  let box = "";  // "left,top,right,bottom" in the photo's pixels, "" for the whole photo
  let boxedSource = null;  // the photo the box was drawn on
  let drawn = null;
  let dragging = null;

  // Where the photo's pixels are on screen: the <img> letterboxes it (object-fit: contain).
  const placement = (img) => {
    const r = img.getBoundingClientRect();
    const fit = getComputedStyle(img).objectFit;
    const scale = fit === "contain" || fit === "scale-down"
      ? Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight)
      : r.width / img.naturalWidth;
    const width = img.naturalWidth * scale, height = img.naturalHeight * scale;
    return {left: r.left + (r.width - width) / 2, top: r.top + (r.height - height) / 2, width, height, scale};
  };
  const clamp = (value, low, high) => Math.max(low, Math.min(high, value));
  const inside = (area, event) => ({
    x: clamp(event.clientX, area.left, area.left + area.width),
    y: clamp(event.clientY, area.top, area.top + area.height),
  });

  const clear = () => {
    box = "";
    boxedSource = null;
    if (drawn) drawn.remove();
    drawn = null;
  };

  const draw = (img, from, to) => {
    const frame = img.parentElement;
    if (getComputedStyle(frame).position === "static") frame.style.position = "relative";
    if (!drawn || drawn.parentElement !== frame) {
      if (drawn) drawn.remove();
      drawn = document.createElement("div");
      drawn.id = "query-box";
      frame.appendChild(drawn);
    }
    const origin = frame.getBoundingClientRect();
    Object.assign(drawn.style, {
      position: "absolute",
      left: `${Math.min(from.x, to.x) - origin.left}px`,
      top: `${Math.min(from.y, to.y) - origin.top}px`,
      width: `${Math.abs(to.x - from.x)}px`,
      height: `${Math.abs(to.y - from.y)}px`,
      border: "2px solid #f97316",
      boxShadow: "0 0 0 9999px rgba(0, 0, 0, 0.35)",  // dims what is not searched
      pointerEvents: "none",
    });
  };

  document.addEventListener("pointerdown", (event) => {
    const img = event.target.closest ? event.target.closest(IMAGE) : null;
    if (!img || !img.naturalWidth || event.button !== 0) return;
    event.preventDefault();  // no native drag of the picture, no text selection
    const area = placement(img);
    dragging = {img, area, from: inside(area, event)};
    clear();
  });

  document.addEventListener("pointermove", (event) => {
    if (dragging) draw(dragging.img, dragging.from, inside(dragging.area, event));
  });

  document.addEventListener("pointerup", (event) => {
    if (!dragging) return;
    const {img, area, from} = dragging;
    const to = inside(area, event);
    dragging = null;
    // A click (no drag) clears the box: the whole photo is searched.
    if (Math.abs(to.x - from.x) < 4 || Math.abs(to.y - from.y) < 4) return clear();
    const pixel = (value, origin) => Math.round((value - origin) / area.scale);
    box = [
      pixel(Math.min(from.x, to.x), area.left), pixel(Math.min(from.y, to.y), area.top),
      pixel(Math.max(from.x, to.x), area.left), pixel(Math.max(from.y, to.y), area.top),
    ].join(",");
    boxedSource = img.currentSrc || img.src;
    draw(img, from, to);
  });

  // What a search sends as its box (the event's `js` hook calls this): none once the photo changed.
  window.cbirQueryBox = () => {
    const img = document.querySelector(IMAGE);
    if (!img || !box || (img.currentSrc || img.src) !== boxedSource) {
      clear();
      return "";
    }
    return box;
  };
  // A new photo (the `change` event): a box drawn on another photo goes. Checked against the photo
  // shown, so a change event arriving after the box was drawn on this photo leaves it alone.
  window.cbirClearQueryBox = () => {
    const img = document.querySelector(IMAGE);
    if (!img || (img.currentSrc || img.src) !== boxedSource) clear();
  };

  // A photo chosen for the query is made at most MAX_SIDE pixels a side in the browser, before it
  // is uploaded: a 12 MP phone photo (3-5 MB) becomes about 0.5 MB, and the networks read at most
  // 480 px of it (a box of a third of the photo still has 680 px a side).
  const MAX_SIDE = 2048;
  const FILE_INPUT = "#query-image input[type=file]";
  document.addEventListener("change", async (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || !input.matches(FILE_INPUT) || input.dataset.cbirResized) return;
    const file = input.files && input.files[0];
    if (!file || !/^image\/(jpeg|png|webp)$/.test(file.type)) return;
    event.stopImmediatePropagation();  // Gradio sees the smaller file instead, re-sent below
    let chosen = file;
    try {
      const bitmap = await createImageBitmap(file, {imageOrientation: "from-image"});
      const scale = MAX_SIDE / Math.max(bitmap.width, bitmap.height);
      if (scale < 1) {
        const canvas = document.createElement("canvas");
        canvas.width = Math.round(bitmap.width * scale);
        canvas.height = Math.round(bitmap.height * scale);
        const context = canvas.getContext("2d");
        context.fillStyle = "#fff";  // transparency flattened on white, as the server does
        context.fillRect(0, 0, canvas.width, canvas.height);
        context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
        const blob = await new Promise((done) => canvas.toBlob(done, "image/jpeg", 0.92));
        if (blob) chosen = new File([blob], file.name.replace(/\.\w+$/, "") + ".jpg", {type: "image/jpeg"});
      }
      bitmap.close();
    } catch (error) {
      chosen = file;  // not decodable here: the server says what is wrong with it
    }
    const files = new DataTransfer();
    files.items.add(chosen);
    input.files = files.files;
    input.dataset.cbirResized = "1";
    input.dispatchEvent(new Event("change", {bubbles: true}));
    delete input.dataset.cbirResized;
  }, true);

  // Enter searches, anywhere but in a text field.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.target.closest("textarea, input[type=text], input[type=number]")) return;
    const button = document.querySelector("#search-button");
    if (button) {
      event.preventDefault();
      button.click();
    }
  });
})();
