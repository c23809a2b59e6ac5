// tomolive web view: one processed scan's preview, central slices and key metadata,
// all read through Tiled's API (the key travels as Tiled's HttpOnly cookie).
"use strict";

const ROOT = location.pathname.replace(/(custom|api\/v1)\/tomolive\/.*$/, "");
const API = ROOT + "api/v1/";
const VOLUMES = ["recon", "denoised", "segmented"];
const FIT_PX = 256; // panels aim at this size; small arrays get an integer zoom
const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let timer = null;

if (params.has("api_key")) { // Tiled has set its cookie; keep the key out of history
  params.delete("api_key");
  history.replaceState(null, "", "?" + params.toString());
}

class HttpError extends Error {
  constructor(status, url) { super(`${status} from ${url}`); this.status = status; }
}

async function getJSON(path) {
  const response = await fetch(API + path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new HttpError(response.status, path);
  return response.json();
}

const fmt = (v) => (typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : String(v));

function zoom(shape) {
  const n = Math.max(...shape);
  return n >= FIT_PX ? FIT_PX / n : Math.floor(FIT_PX / n);
}

function showSlice(id, uid, key, slice, shape, scale, stamp, caption) {
  const figure = $(id);
  const img = figure.querySelector("img");
  const query = new URLSearchParams({ slice, format: "image/png", t: stamp || "" });
  const src = `${API}array/full/processed/${uid}/${key}?${query}`;
  if (img.getAttribute("src") !== src) img.src = src;
  img.width = Math.round(shape[1] * scale);
  img.height = Math.round(shape[0] * scale);
  figure.querySelector("a").href = `${ROOT}ui/browse/processed/${uid}/${key}`;
  figure.querySelector("figcaption").textContent = caption;
  figure.hidden = false;
}

function showFacts(md, children) {
  const qc = md.qc || {};
  const centre = (md.provenance || {}).center;
  const recon = children.recon;
  const preview = children.preview;
  const p = md.progress;
  const progress = p ? (p.total ? `${p.stage} ${p.done}/${p.total}` : p.stage) : undefined;
  let centreText;
  if (centre) centreText = `${fmt(centre.center)} px (${centre.method}, confidence ${fmt(centre.confidence)})`;
  else if (preview && preview.metadata.center !== undefined)
    centreText = `${fmt(preview.metadata.center)} px (${preview.metadata.center_source}, preview)`;
  const rows = [
    ["sample", md.sample], ["scan id", md.scan_id], ["raw uid", md.raw_uid],
    ["status", md.status], ["reason", md.reason], ["progress", progress],
    ["stages", (md.stages || []).join(", ")], ["rotation centre", centreText],
    ["angles", md.tomo && `${md.tomo.n_angles} over ${fmt(md.tomo.angular_range)} deg`],
    ["volume", recon && recon.structure.shape.join(" x ")],
    ["SNR", qc.snr], ["CNR", qc.cnr], ["noise sigma", qc.noise_sigma],
    ["ring severity", qc.ring_severity], ["edge width (px)", qc.edge_width_px],
    ["centre confidence", qc.center_confidence], ["porosity", md.porosity],
    ["QC alerts", qc.alerts && (qc.alerts.length ? qc.alerts.map(String).join("; ") : "none")],
    ["created", md.created], ["updated", md.updated],
  ];
  const table = $("facts");
  table.replaceChildren();
  for (const [name, value] of rows) {
    if (value === undefined || value === null || value === "") continue;
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = name;
    tr.append(th);
    const td = tr.insertCell();
    td.textContent = fmt(value);
    if (name === "status") td.className = value;
    if (name === "QC alerts" && qc.alerts.length) td.className = "alert";
  }
}

async function listScans(selected) {
  let found;
  try {
    found = await getJSON("search/processed?fields=metadata&sort=-created&page[limit]=100");
  } catch (err) {
    if (err instanceof HttpError && err.status === 404) return ""; // nothing processed yet
    throw err;
  }
  const select = $("scan");
  select.replaceChildren();
  for (const { id, attributes: { metadata: md } } of found.data) {
    const label = `${md.sample ?? "?"} · #${md.scan_id ?? "?"} · ${md.status ?? "?"} · ${md.created ?? ""}`;
    select.add(new Option(label, id, false, id === selected));
  }
  return select.value;
}

async function showScan(uid) {
  const [node, found] = await Promise.all([
    getJSON(`metadata/processed/${uid}`),
    getJSON(`search/processed/${uid}?fields=metadata&fields=structure`),
  ]);
  const md = node.data.attributes.metadata;
  const children = Object.fromEntries(found.data.map((c) => [c.id, c.attributes]));
  document.title = `tomolive · ${md.sample ?? uid}`;
  showFacts(md, children);

  const volumes = VOLUMES.filter((k) => children[k]);
  const select = $("volume");
  const chosen = volumes.includes(select.value) ? select.value : volumes[0];
  select.replaceChildren(...volumes.map((k) => new Option(k, k, false, k === chosen)));
  for (const id of ["preview", "xy", "xz", "yz"]) $(id).hidden = true;

  const preview = children.preview;
  if (preview) {
    const [rows, ny, nx] = preview.structure.shape;
    const i = Math.floor(rows / 2);
    const row = (preview.metadata.rows || [])[i] ?? i;
    const angles = preview.metadata.n_angles ?? "?";
    showSlice("preview", uid, "preview", `${i},:,:`, [ny, nx], zoom([ny, nx]), preview.metadata.updated,
      `live preview · detector row ${row} · ${angles} angles`);
  }
  // recon exists (empty) from the first projection on: show it once processing reports progress
  if (chosen && (md.status !== "running" || md.progress)) {
    const [nz, ny, nx] = children[chosen].structure.shape;
    const [z, y, x] = [nz, ny, nx].map((n) => Math.floor(n / 2));
    const scale = zoom([nz, ny, nx]);
    showSlice("xy", uid, chosen, `${z},:,:`, [ny, nx], scale, md.updated, `${chosen} · xy · z = ${z}`);
    showSlice("xz", uid, chosen, `:,${y},:`, [nz, nx], scale, md.updated, `${chosen} · xz · y = ${y}`);
    showSlice("yz", uid, chosen, `:,:,${x}`, [nz, ny], scale, md.updated, `${chosen} · yz · x = ${x}`);
  }
  return md.status;
}

async function refresh() {
  clearTimeout(timer);
  try {
    const uid = await listScans(params.get("scan") || $("scan").value);
    if (!uid) {
      $("message").textContent = "No processed scans yet; this page refreshes itself.";
      timer = setTimeout(refresh, POLL_MS);
      return;
    }
    const status = await showScan(uid);
    $("message").textContent = "";
    if (status === "running") timer = setTimeout(refresh, POLL_MS);
  } catch (err) {
    const needsKey = err instanceof HttpError && (err.status === 401 || err.status === 403);
    $("login").hidden = !needsKey;
    $("login").elements.scan.value = params.get("scan") || "";
    $("message").textContent = needsKey
      ? "This server needs an API key to read (the link printed by `tomolive serve` carries it)."
      : `Could not read from Tiled: ${err.message}`;
    if (!needsKey) timer = setTimeout(refresh, POLL_MS);
  }
}

$("scan").addEventListener("change", () => {
  params.set("scan", $("scan").value);
  history.replaceState(null, "", "?" + params.toString());
  refresh();
});
$("volume").addEventListener("change", refresh);
refresh();
