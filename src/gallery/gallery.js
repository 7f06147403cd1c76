// The gallery's one script: a click on a thumbnail shows the full image in a dialog (Escape
// or a click closes it). Without it, the thumbnail links to the full image.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const dialog = document.createElement("dialog");
  dialog.id = "lightbox";
  const full = document.createElement("img");
  full.alt = "";
  dialog.appendChild(full);
  dialog.addEventListener("click", () => dialog.close());
  document.body.appendChild(dialog);
  for (const link of document.querySelectorAll("a.full")) {
    link.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey) return;
      event.preventDefault();
      full.src = link.getAttribute("href");
      const thumb = link.querySelector("img");
      full.alt = thumb ? thumb.alt : "";
      dialog.showModal();
    });
  }
});
