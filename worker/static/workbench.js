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

// Query sets and experiments (/ui/experiments): save a set from the textarea or a file, run one; errors
// are shown in #status and nothing stored changes.
(function () {
  "use strict";
  const form = document.getElementById("set-form");
  if (!form) return;
  const key = document.getElementById("apikey");
  const status = document.getElementById("status");
  key.value = localStorage.getItem("grouprank-api-key") || "";
  key.addEventListener("change", () => localStorage.setItem("grouprank-api-key", key.value));
  const say = (text, kind) => { status.textContent = text; status.className = kind; };
  const detail = (body) => typeof body.detail === "string" ? body.detail : Array.isArray(body.detail)
    ? body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ") : JSON.stringify(body);

  async function post(path, payload) {
    const response = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json", "X-API-Key": key.value },
      body: JSON.stringify(payload),
    });
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) throw new Error(response.status + ": " + detail(body));
    return body;
  }

  document.getElementById("set-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) document.getElementById("set-queries").value = await file.text();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const saved = await post("/query-sets", { name: document.getElementById("set-name").value,
                                                queries: document.getElementById("set-queries").value });
      say("saved " + saved.name + " (" + saved.queries.length + " queries)", "saved");
      location.reload();
    } catch (err) { say("query set not saved (" + err.message + ")", "error"); }
  });
  document.getElementById("sets").addEventListener("click", async (event) => {
    const button = event.target.closest("button.run-set");
    if (!button) return;
    say("running " + button.dataset.set + " …", "");
    try {
      const experiment = await post("/experiments", { query_set: button.dataset.set,
        mode: document.getElementById("exp-mode").value, k: Number(document.getElementById("exp-k").value) });
      location.href = "/ui/experiments/" + experiment.id;
    } catch (err) { say("experiment failed (" + err.message + ")", "error"); }
  });
})();
