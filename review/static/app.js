// Keyboard shortcuts for the review app. Never builds HTML from data: it only
// clicks, focuses and follows elements the server rendered.
"use strict";

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLElement && target.closest("input, textarea, select")) {
    if (event.key === "Escape") target.blur();
    return;
  }
  const click = (id) => {
    const el = document.getElementById(id);
    if (el) { event.preventDefault(); el.click(); }
  };
  switch (event.key) {
    case "a": click("accept"); break;
    case "r": click("reject"); break;
    case "n": click("next-link"); break;
    case "e": {
      const box = document.getElementById("edit-text");
      if (box) { event.preventDefault(); box.focus(); box.select(); }
      break;
    }
    case "/": {
      const q = document.getElementById("q");
      if (q) { event.preventDefault(); q.focus(); }
      break;
    }
  }
});

// Ctrl/Cmd+Enter in the edit box saves it.
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    const box = event.target;
    if (box instanceof HTMLTextAreaElement && box.form) box.form.requestSubmit();
  }
});

// An intervention runs the model for a few seconds: say so, and keep it from running twice.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || form.id !== "intervene-form") return;
  const button = document.getElementById("run-intervention");
  if (button) { button.disabled = true; button.textContent = "running…"; }
});

// Coming back to the page from the browser's history re-enables it.
window.addEventListener("pageshow", () => {
  const button = document.getElementById("run-intervention");
  if (button) { button.disabled = false; button.textContent = "run"; }
});
