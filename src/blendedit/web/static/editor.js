// Checks a photo in the browser before it is sent (blendedit serve's page head).
//
// Gradio's upload hangs silently when the server refuses a file as too large, so the caps are
// told here, in one line, first. The server still enforces them all (max_file_size, and
// check_photo_file in the upload handler). The caps come from the server, in
// window.blendeditUploadLimits (blendedit.web.app.page_head writes them before this script).
(() => {
  const limits = window.blendeditUploadLimits || {};  // set by the page's head, from the server
  const MAX_BYTES = limits.maxBytes, MAX_SIDE = limits.maxSide, MIN_SIDE = limits.minSide;
  const MAX_PIXELS = limits.maxPixels;
  const say = (text) => {
    const el = document.getElementById("upload-check-msg");
    if (el) { el.textContent = text; el.style.display = text ? "block" : "none"; }
    else if (text) { window.alert(text); }
  };
  const problem = async (file) => {
    if (!file) return "";
    if (file.size > MAX_BYTES) {
      return `image: ${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; this editor ` +
        `accepts files up to ${(MAX_BYTES / 1048576).toFixed(1)} MiB (server option --max-upload-mb)`;
    }
    let w = 0, h = 0;
    try {
      const bmp = await createImageBitmap(file);
      w = bmp.width; h = bmp.height;
      bmp.close();
    } catch (err) {
      return "";  // a format this browser cannot decode (HEIC, TIFF): the server checks it
    }
    if (Math.max(w, h) > MAX_SIDE || Math.min(w, h) < MIN_SIDE) {
      return `image: ${file.name} is ${w}x${h} px; this editor accepts ${MIN_SIDE} to ` +
        `${MAX_SIDE} px a side (server option --max-side); resize it first`;
    }
    if (w * h > MAX_PIXELS) {
      return `image: ${file.name} is ${w}x${h} px (${(w * h / 1e6).toFixed(1)} MP); this ` +
        `editor accepts up to ${MAX_PIXELS / 1e6} MP (server option --max-megapixels)`;
    }
    return "";
  };
  const inEditor = (el) => el instanceof Element && el.closest("#photo-file");
  document.addEventListener("change", async (e) => {
    const input = e.target;
    if (!(input instanceof HTMLInputElement) || input.type !== "file" || !inEditor(input)) return;
    if (input.dataset.checked === "1") { delete input.dataset.checked; return; }
    e.stopImmediatePropagation();
    const msg = await problem(input.files && input.files[0]);
    say(msg);
    if (msg) { input.value = ""; return; }
    input.dataset.checked = "1";
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }, true);
  document.addEventListener("drop", async (e) => {
    if (!inEditor(e.target) || !e.dataTransfer || e.dataTransfer.files.length === 0) return;
    if (e.target.dataset && e.target.dataset.checked === "1") {
      delete e.target.dataset.checked; return;
    }
    e.preventDefault();
    e.stopImmediatePropagation();
    const target = e.target, file = e.dataTransfer.files[0];
    const msg = await problem(file);
    say(msg);
    if (msg) return;
    const dt = new DataTransfer();
    dt.items.add(file);
    target.dataset.checked = "1";
    target.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, true);
})();

// The selection view (blendedit.web.selecting): a drag draws a box, a shift- or alt-click is a
// negative click. Gradio's image reports plain clicks only, so these two gestures are sent by
// this script, in the photo preview's pixels, through the panel's hidden #select-gesture box and
// #select-send button; a plain click stays Gradio's own (the panel's "A click" mode).
(() => {
  let start = null, dragged = false;
  const onView = (el) => el instanceof HTMLImageElement && el.closest("#select-view");
  const at = (img, e) => {  // client px -> px of the image shown (object-fit: contain)
    const r = img.getBoundingClientRect(), w = img.naturalWidth, h = img.naturalHeight;
    const s = Math.min(r.width / w, r.height / h);
    const x = (e.clientX - r.left - (r.width - w * s) / 2) / s;
    const y = (e.clientY - r.top - (r.height - h * s) / 2) / s;
    return [Math.max(0, Math.min(w, x)).toFixed(1), Math.max(0, Math.min(h, y)).toFixed(1)];
  };
  const send = (text) => {
    const box = document.querySelector("#select-gesture textarea, #select-gesture input");
    const button = document.querySelector("#select-send");
    if (!box || !button) return;
    box.value = text;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    setTimeout(() => button.click(), 50);
  };
  document.addEventListener("pointerdown", (e) => {
    if (!onView(e.target) || e.button !== 0) return;
    start = { clientX: e.clientX, clientY: e.clientY, img: e.target };
    dragged = false;
    e.preventDefault();  // no native image drag
  }, true);
  document.addEventListener("pointerup", (e) => {
    if (!start) return;
    const s = start;
    start = null;
    if (Math.hypot(e.clientX - s.clientX, e.clientY - s.clientY) < 6) return;  // a click
    dragged = true;
    send(`box ${at(s.img, s).join(" ")} ${at(s.img, e).join(" ")}`);
  }, true);
  document.addEventListener("click", (e) => {
    if (!onView(e.target)) return;
    if (dragged || e.shiftKey || e.altKey) {
      e.stopImmediatePropagation();  // not a plain click for Gradio
      e.preventDefault();
      if (!dragged) send(`remove ${at(e.target, e).join(" ")}`);
      dragged = false;
    }
  }, true);
})();
