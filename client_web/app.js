// Views: webcam live check, camera monitor, file analysis.
import { initLive } from "./live.js";
import { initCameras } from "./cameras.js";
import { initAnalyze } from "./analyze.js";

initLive();
const cameras = initCameras();
initAnalyze();

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-pressed", String(tab.dataset.view === view));
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  if (view === "cameras") cameras.refresh();
  if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
show(["live", "cameras", "analyze"].includes(location.hash.slice(1)) ? location.hash.slice(1) : "live");
