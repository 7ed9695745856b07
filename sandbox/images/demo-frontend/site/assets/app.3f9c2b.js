(function () {
  "use strict";
  fetch("/api/version", { headers: { Accept: "application/json" } })
    .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
    .then(function (v) { document.getElementById("version").textContent = v.version; })
    .catch(function () { document.getElementById("version").textContent = "unavailable"; });
  if (window.EventSource) {
    var list = document.getElementById("events");
    var es = new EventSource("/sse?events=5&interval=0.5");
    es.onmessage = function (e) {
      var li = document.createElement("li");
      li.textContent = e.data;
      list.appendChild(li);
    };
    es.addEventListener("end", function () { es.close(); });
    es.onerror = function () { es.close(); };
  }
})();
