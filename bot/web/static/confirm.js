// Buttons that send what cannot be undone (an execution's Cancel, a key's Delete) carry `data-confirm`, the
// question to ask first: their form is sent only once it is answered OK. A file of Squall's own, loaded on every
// page: the Content-Security-Policy allows no inline script or `onsubmit`. Their forms are plain posts, not htmx
// requests, so htmx's `hx-confirm` would not ask; and without scripts the form is sent as before, at once.
"use strict";
document.addEventListener("submit", (event) => {
  const question = event.submitter instanceof HTMLElement ? event.submitter.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
