// The keys page (templates/keys.html): while a checkbox with `data-hides` (Encrypt) is ticked, the field it
// names (the value) is a password field, so a secret being typed is not shown on screen; unticked, text.
// A file of Squall's own: the Content-Security-Policy allows no inline script.
"use strict";
document.querySelectorAll("input[type=checkbox][data-hides]").forEach((box) => {
  const field = document.getElementById(box.dataset.hides);
  if (!field) {
    return;
  }
  const follow = () => {
    field.type = box.checked ? "password" : "text";
  };
  box.addEventListener("change", follow);
  follow();
});
