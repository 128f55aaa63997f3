// Grading on the workbench page: POST /judgments with the API key (kept in localStorage), then mark the
// chosen grade on the document in both columns. Errors are shown in #status; nothing else changes.
(function () {
  "use strict";
  const key = document.getElementById("apikey");
  const status = document.getElementById("status");
  const columns = document.querySelector(".columns");
  if (key) {
    key.value = localStorage.getItem("grouprank-api-key") || "";
    key.addEventListener("change", () => localStorage.setItem("grouprank-api-key", key.value));
  }

  function say(text, kind) {
    status.textContent = text;
    status.className = kind;
  }

  function detail(body) {
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
    return JSON.stringify(body);
  }

  if (!columns) return;
  columns.addEventListener("click", async (event) => {
    const button = event.target.closest("button.grade");
    if (!button) return;
    const doc = button.closest(".hit").dataset.doc;
    const grade = Number(button.dataset.grade);
    const query = columns.dataset.query;
    localStorage.setItem("grouprank-api-key", key.value);
    let response;
    try {
      response = await fetch("/judgments", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-API-Key": key.value },
        body: JSON.stringify({ query: query, doc_id: doc, grade: grade }),
      });
    } catch (err) {
      say("could not reach the server: " + err, "error");
      return;
    }
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      say("grade not saved (" + response.status + "): " + detail(body), "error");
      return;
    }
    for (const hit of columns.querySelectorAll(".hit")) {
      if (hit.dataset.doc !== doc) continue;
      for (const b of hit.querySelectorAll("button.grade")) b.classList.toggle("chosen", Number(b.dataset.grade) === grade);
    }
    say("saved: " + doc + " = " + grade + " (by " + body.who + ")", "saved");
  });
})();
