// Grading on the workbench page: POST /judgments with the API key (kept in localStorage), then mark the
// chosen grade on the document in both columns (click a grade, or select a document and press 0-3).
// Errors are shown in #status; nothing else changes. While a search runs (retrieval, then the LLM
// rerank) the button is disabled and the page says so.
(function () {
  "use strict";
  const key = document.getElementById("apikey");
  const status = document.getElementById("status");
  const columns = document.querySelector(".columns");
  const search = document.getElementById("search");
  if (key) {
    key.value = localStorage.getItem("grouprank-api-key") || "";
    key.addEventListener("change", () => localStorage.setItem("grouprank-api-key", key.value));
  }

  function say(text, kind) {
    status.textContent = text;
    status.className = kind;
  }

  if (search) {
    search.addEventListener("submit", (event) => {
      if (!document.getElementById("q").value.trim()) {
        event.preventDefault();
        say("type a query first", "error");
        return;
      }
      document.getElementById("go").disabled = true;
      say("searching and reranking … (the LLM stage takes up to the deadline)", "busy");
    });
  }

  function detail(body) {
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
    return JSON.stringify(body);
  }

  if (!columns) return;
  let selected = null;
  columns.addEventListener("click", (event) => {
    const hit = event.target.closest(".hit");
    if (!hit) return;
    if (selected) selected.classList.remove("selected");
    selected = hit;
    hit.classList.add("selected");
    const button = event.target.closest("button.grade");
    if (button) grade(hit.dataset.doc, Number(button.dataset.grade));
  });
  document.addEventListener("keydown", (event) => {
    if (!selected || event.target.closest("input, textarea, select") || !/^[0-3]$/.test(event.key)) return;
    grade(selected.dataset.doc, Number(event.key));
  });

  async function grade(doc, value) {
    const query = columns.dataset.query;
    localStorage.setItem("grouprank-api-key", key.value);
    let response;
    try {
      response = await fetch("/judgments", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-API-Key": key.value },
        body: JSON.stringify({ query: query, doc_id: doc, grade: value }),
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
      hit.classList.remove("unjudged");
      for (const b of hit.querySelectorAll("button.grade")) b.classList.toggle("chosen", Number(b.dataset.grade) === value);
    }
    say("saved: " + doc + " = " + value + " (by " + body.who + ")", "saved");
  }
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
    for (const b of document.querySelectorAll("button.run-set")) b.disabled = true;
    say("running " + button.dataset.set + " … (every query is retrieved and reranked)", "busy");
    try {
      const deadline = document.getElementById("exp-deadline").value;
      const experiment = await post("/experiments", { query_set: button.dataset.set,
        mode: document.getElementById("exp-mode").value, k: Number(document.getElementById("exp-k").value),
        deadline_ms: deadline ? Number(deadline) : null });
      location.href = "/ui/experiments/" + experiment.id;
    } catch (err) {
      say("experiment failed (" + err.message + ")", "error");
      for (const b of document.querySelectorAll("button.run-set")) b.disabled = false;
    }
  });
})();
