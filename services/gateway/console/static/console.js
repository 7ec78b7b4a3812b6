// mallops console: the only script. Live updates: the task list (or an unfinished workflow's steps, or the
// workers) refreshes from the server
// (rendered there, in the page's language); a task's progress follows its Server-Sent Events.
"use strict";
(function () {
  const rows = document.querySelector("[data-live-src]");
  if (rows) {
    const refresh = async () => {
      if (document.hidden) return;
      try {
        const answer = await fetch(rows.dataset.liveSrc, { credentials: "same-origin" });
        if (answer.ok) rows.innerHTML = await answer.text();
      } catch (err) { /* next tick */ }
    };
    setInterval(refresh, 3000);
  }
  const section = document.querySelector("[data-events]");
  if (section && window.EventSource) {
    const bar = document.getElementById("task-progress");
    const text = document.getElementById("progress-text");
    const template = document.getElementById("progress-template").textContent;
    const badge = document.getElementById("task-status");
    const labels = JSON.parse(badge.dataset.labels);
    const source = new EventSource(section.dataset.events);
    const show = (event) => {
      const data = JSON.parse(event.data);
      if (data && labels[data.status] && badge.textContent !== labels[data.status]) {
        badge.textContent = labels[data.status];
        badge.className = "state state-" + data.status.toLowerCase();
      }
      if (data && data.progress) {
        bar.max = data.progress.total;
        bar.value = data.progress.current;
        text.textContent = template.replace("{current}", data.progress.current.toLocaleString(document.documentElement.lang))
          .replace("{total}", data.progress.total.toLocaleString(document.documentElement.lang));
      }
    };
    // a form sent from this page (retry, revoke) navigates away: no reload may overtake it
    document.querySelectorAll("form").forEach((form) => form.addEventListener("submit", () => source.close()));
    source.addEventListener("progress", show);
    source.addEventListener("status", show);
    source.addEventListener("end", (event) => {
      show(event);
      source.close();
      window.location.reload();  // the result, the error and the timeline, rendered by the server
    });
  }
})();
