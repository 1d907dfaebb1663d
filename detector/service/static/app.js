// The page: pick or drop an image, POST it to /v1/score, show the verdict and its evidence.
// Everything untrusted (file names, generator names, manifest fields) goes in as textContent, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const VERDICT_WORDS = {
  "ai-generated": "Likely AI-generated",
  real: "Likely a real photograph",
  uncertain: "Uncertain",
  watermarked: "Watermarked: AI-generated",
  forged: "Tampered watermark (not evidence of AI)",
};
let fusion = { threshold: 0.5, uncertain_band: 0.1 };
let thumbUrl = null;

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function fmtP(p) {
  if (p === null || p === undefined) return "–";
  return p < 1e-3 ? Number(p).toExponential(1) : Number(p).toFixed(3);
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function bar(list, label, value, shown) {
  const li = document.createElement("li");
  const name = document.createElement("span");
  name.textContent = label;
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.display = "block";
  fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
  track.appendChild(fill);
  track.setAttribute("role", "img");
  track.setAttribute("aria-label", `${label}: ${shown}`);
  const num = document.createElement("span");
  num.className = "num";
  num.textContent = shown;
  li.append(name, track, num);
  list.appendChild(li);
}

function facts(dl, rows) {
  dl.replaceChildren();
  for (const [key, value, cls] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value === null || value === undefined || value === "" ? "–" : String(value);
    if (cls) dd.className = cls;
    dl.append(dt, dd);
  }
}

function explain(r) {
  const lo = fusion.threshold - fusion.uncertain_band;
  const hi = fusion.threshold + fusion.uncertain_band;
  const parts = [];
  if (r.verdict === "watermarked") {
    const gen = r.watermark && r.watermark.generator ? ` by ${r.watermark.generator}` : "";
    parts.push(`Our watermark was found (p-value ${fmtP(r.watermark.p_value)}): made${gen}.`);
  } else if (r.verdict === "forged") {
    parts.push(`A mark of our key was found that does not belong to this image (${r.watermark ? r.watermark.status : "forged"}): someone copied or tried to remove a watermark. It says nothing about whether the image is AI-generated; P(AI) ${fmt(r.p_ai)} is the passive branches' score.`);
    if (r.watermark && r.watermark.note) parts.push(`Why: ${r.watermark.note}.`);
  } else if (r.c2pa && r.c2pa.state === "valid" && r.c2pa.ai_declared) {
    parts.push("Its Content Credentials are valid and declare the image AI-generated.");
  } else if (r.verdict === "uncertain") {
    parts.push(`P(AI) ${fmt(r.p_ai)} lies in the uncertain band ${fmt(lo, 2)}–${fmt(hi, 2)}.`);
  } else {
    parts.push(`P(AI) ${fmt(r.p_ai)} (uncertain between ${fmt(lo, 2)} and ${fmt(hi, 2)}).`);
  }
  if (r.c2pa && r.c2pa.state === "invalid") parts.push("Its Content Credentials are invalid: the file was altered after signing.");
  return parts.join(" ");
}

function render(r, branchP) {
  $("result").hidden = false;
  $("file-name").textContent = r.path;
  const verdict = $("verdict");
  verdict.className = r.verdict ? `verdict-${r.verdict}` : "";
  $("evidence").hidden = Boolean(r.error);
  if (r.error) {
    verdict.textContent = "Could not score this image";
    $("verdict-text").textContent = r.error;
  } else {
    let words = VERDICT_WORDS[r.verdict] || r.verdict;
    if (r.verdict === "watermarked" && r.watermark && r.watermark.generator) words += ` (${r.watermark.generator})`;
    verdict.textContent = words;
    $("verdict-text").textContent = explain(r);
  }
  // p_ai with the uncertainty band around the threshold
  const lo = fusion.threshold - fusion.uncertain_band;
  const hi = fusion.threshold + fusion.uncertain_band;
  $("p-band").style.left = `${lo * 100}%`;
  $("p-band").style.width = `${(hi - lo) * 100}%`;
  const marker = $("p-marker");
  marker.hidden = r.p_ai === null || r.p_ai === undefined;
  marker.style.left = `${(r.p_ai || 0) * 100}%`;
  $("p-text").textContent = r.p_ai === null || r.p_ai === undefined
    ? "No probability (no branch could score the image)."
    : `P(AI) = ${fmt(r.p_ai)}; uncertain band ${fmt(lo, 2)}–${fmt(hi, 2)}.`;
  // one bar per passive branch
  const branches = $("branches");
  branches.replaceChildren();
  for (const [name, value] of Object.entries(r.branches || {})) {
    if (branchP && name in branchP) bar(branches, name, branchP[name], fmt(branchP[name]));
    else bar(branches, `${name} (raw score)`, 0, fmt(value));
  }
  // attribution top-k, with "unknown"
  const at = r.attribution;
  const list = $("attribution");
  list.replaceChildren();
  if (at) {
    for (const [gen, p] of at.top_k) bar(list, gen, p, fmt(p));
    $("attribution-note").textContent = at.is_unknown
      ? `Unknown generator: unlike every known one (${at.score_name} ${fmt(at.unknown_score)} > ${fmt(at.threshold)}).`
      : `Closest known generator: ${at.top_k.length ? at.top_k[0][0] : "–"}` +
        (at.score_name ? ` (${at.score_name} ${fmt(at.unknown_score)} ≤ ${fmt(at.threshold)}).` : ".");
  } else {
    $("attribution-note").textContent = "No attribution head in this bundle.";
  }
  const wm = r.watermark;
  facts($("watermark"), wm
    ? [["Found", wm.detected ? "yes" : "no"], ["p-value", fmtP(wm.p_value)], ["Bit accuracy", fmt(wm.bit_accuracy)],
       ["Payload", wm.payload], ["Registry generator", wm.generator],
       ["Registered", wm.record ? `${wm.record.model_version || ""} ${wm.record.created_at || ""}`.trim() : null]]
    : [["Checked", "no (this bundle has no watermark decoder)"]]);
  const cc = r.c2pa;
  let ccRows;
  if (!cc) ccRows = [["Checked", "no"]];
  else if (!cc.present) ccRows = [["Manifest", "none found (absence proves nothing: re-saving drops it)"]];
  else {
    const state = { valid: "valid (trusted signer)", untrusted: "intact, but the signer is not trusted here",
      invalid: "INVALID: tampered or malformed, not trusted" }[cc.state] || cc.state;
    ccRows = [["Manifest", "present"], ["Validation", state, cc.state === "invalid" ? "tampered" : ""],
      ["Declared source", cc.digital_source_type ? cc.digital_source_type.split("/").pop() : null],
      ["AI declared", cc.ai_declared ? "yes" : "no"], ["Signer", cc.signer], ["Issuer", cc.issuer],
      ["Claim generator", cc.claim_generator], ["Soft binding", cc.soft_binding],
      ["Failures", (cc.failures || []).join(", ") || cc.error]];
  }
  facts($("c2pa"), ccRows);
  $("raw").textContent = JSON.stringify(r, null, 2);
}

async function score(file) {
  if (!file) return;
  if (thumbUrl) URL.revokeObjectURL(thumbUrl);
  thumbUrl = URL.createObjectURL(file);
  $("thumb").src = thumbUrl;
  $("result").hidden = true;
  setStatus(`Scoring ${file.name}…`);
  const body = new FormData();
  body.append("file", file, file.name);
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) {
    headers["X-API-Key"] = key;
    sessionStorage.setItem("detector-key", key);
  }
  try {
    const response = await fetch("/v1/score", { method: "POST", body, headers });
    const data = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (!response.ok) {
      setStatus(`Error ${response.status}: ${data.detail || data.error}`, true);
      return;
    }
    render(data.results[0], data.branch_p_ai ? data.branch_p_ai[0] : null);
    setStatus(`Scored ${file.name}.`);
    $("verdict-heading").focus();
  } catch (err) {
    setStatus(`Could not reach the service: ${err}`, true);
  }
}

async function init() {
  $("verdict-heading").tabIndex = -1;
  $("api-key").value = sessionStorage.getItem("detector-key") || "";
  try {
    const info = await (await fetch("/v1/version")).json();
    fusion = info.fusion || fusion;
    $("key-row").hidden = !(info.auth && info.auth.keys);
    const b = info.bundle || {};
    $("versions").textContent = `detector ${info.detector}; backbone ${b.backbone || "?"}; branches ${(b.branches || []).join(", ")}` +
      `; watermark decoder ${b.watermark ? "on" : "off"}; C2PA ${b.c2pa ? "on" : "off"}` +
      (b.c2pa && !b.c2pa_trust_configured ? " (no trusted signers configured)" : "");
  } catch (err) {
    setStatus("Could not read the service's version.", true);
  }
  const drop = $("drop");
  $("file").addEventListener("change", (e) => score(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) score(e.dataTransfer.files[0]);
  });
  $("form").addEventListener("submit", (e) => e.preventDefault());
  document.body.dataset.ready = "1";
}

init();
