function setOpen(selector, open) {
  document.querySelectorAll(selector).forEach(function (d) { d.open = open; });
}
function bestOnly() {
  setOpen("details.node", false);
  setOpen("details.node.best", true);
}
