// Sundial console: progressive enhancement only (every page works without it).
// Shows each server-rendered UTC <time datetime> in the viewer's zone, with the
// UTC text kept on hover (except <time class="keep">, e.g. a UTC column).
// Loaded as a file: the CSP allows no inline script.
(function () {
  "use strict";
  function localize(root) {
    var nodes = root.querySelectorAll("time[datetime]:not([data-local]):not(.keep)");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      el.title = el.textContent.trim();
      el.textContent = d.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
      });
      el.setAttribute("data-local", "1");
    }
  }
  document.addEventListener("DOMContentLoaded", function () { localize(document); });
  document.addEventListener("htmx:afterSettle", function (e) { localize(e.target || document); });
})();
