// Show every <time datetime="..."> in the browser's own time zone (the server writes UTC).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when.getTime())) {
      el.title = el.textContent;
      el.textContent = format.format(when);
    }
  });
});
