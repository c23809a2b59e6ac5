// tomolive web view: one processed scan's images, outputs and key metadata, all read through
// Tiled's API (the key travels as Tiled's HttpOnly cookie). Any technique's result: 3D arrays
// are volumes (central slices), 2D arrays images, tables listed; tomography's rows when present.
"use strict";

const ROOT = location.pathname.replace(/(custom|api\/v1)\/tomolive\/.*$/, "");
const API = ROOT + "api/v1/";
const VOLUME_ORDER = ["recon", "denoised", "segmented"]; // first of these shown by default
const FIT_PX = 256; // panels aim at this size; small arrays get an integer zoom
const SLIVER_PX = 32; // a thin volume's xz/yz slice is stretched along z to at least this height
const POLL_MS = 3000;
// Outputs a stage writes under another name than its own (a user's stage writes <its name>).
const STAGE_OUTPUTS = { denoise: ["denoised"], segment: ["segmented"] };
const STAGE_METADATA = {
  normalize: "normalised projections (scratch, not kept)",
  center: "rotation centre (provenance.center)",
  qc: "QC numbers (qc)",
};
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

// 4 significant digits without trailing zeros: an angle of 5.9999999 reads 6, not 6.000
const fmt = (v) => (typeof v === "number" && !Number.isInteger(v) ? String(Number(v.toPrecision(4))) : String(v));
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const techniqueOf = (md) => md.technique ?? md.provenance?.parameters?.technique;

function zoom(shape) {
  const n = Math.max(...shape);
  return n >= FIT_PX ? FIT_PX / n : Math.floor(FIT_PX / n);
}

/** The figure for panel `id`, made on first use (panels differ between techniques). */
function figure(id) {
  let found = $(`panel-${id}`);
  if (!found) {
    found = document.createElement("figure");
    found.id = `panel-${id}`;
    const link = document.createElement("a");
    const img = document.createElement("img");
    img.alt = id;
    link.append(img);
    found.append(link, document.createElement("figcaption"));
    $("panels").append(found);
  }
  return found;
}

/** Draw `slice` of array `key` as a (rows, cols) image, scaled by (sy, sx) screen pixels per pixel. */
function showSlice(id, uid, key, slice, [rows, cols], [sy, sx], stamp, caption) {
  const panel = figure(id);
  const img = panel.querySelector("img");
  const query = new URLSearchParams({ format: "image/png", t: stamp || "" });
  if (slice) query.set("slice", slice);
  const src = `${API}array/full/processed/${uid}/${key}?${query}`;
  if (img.getAttribute("src") !== src) img.src = src;
  img.width = Math.max(1, Math.round(cols * sx));
  img.height = Math.max(1, Math.round(rows * sy));
  panel.querySelector("a").href = `${ROOT}ui/browse/processed/${uid}/${key}`;
  panel.querySelector("figcaption").textContent = caption;
  panel.hidden = false;
  return id;
}

function anglesText(md) {
  const inputs = md.provenance?.inputs ?? {};
  const angles = inputs.angles_deg;
  if (Array.isArray(angles) && angles.length) {
    const [low, high] = [Math.min(...angles), Math.max(...angles)];
    return `${angles.length} over ${fmt(high - low)} deg (${fmt(low)} to ${fmt(high)})`;
  }
  const tomo = md.tomo;
  if (!isObject(tomo) || tomo.n_angles === undefined) return undefined;
  return tomo.angular_range === undefined ? `${tomo.n_angles}` : `${tomo.n_angles} over ${fmt(tomo.angular_range)} deg`;
}

function centreText(md, preview) {
  const centre = md.provenance?.center;
  if (isObject(centre)) return `${fmt(centre.center)} px (${centre.method}, confidence ${fmt(centre.confidence)})`;
  if (preview && preview.metadata.center !== undefined)
    return `${fmt(preview.metadata.center)} px (${preview.metadata.center_source}, preview)`;
  return undefined;
}

function edgeText(width) {
  // 0 means the edges read no blurrier than the measurement's own 1 px filter (noise steepens them too)
  return width === 0 ? "0 (at the limit of the measurement: sharper than 1 px, or noise)" : width;
}

/** Scalar entries of the technique's own metadata block (e.g. md.ptycho), as rows. */
function techniqueRows(md, technique) {
  const own = technique && technique !== "tomo" ? md[technique] : undefined;
  if (!isObject(own)) return [];
  return Object.entries(own)
    .filter(([, v]) => v === null || typeof v !== "object")
    .map(([k, v]) => [`${technique}.${k}`, v]);
}

function fillTable(table, rows, classes = {}) {
  table.replaceChildren();
  for (const [name, value] of rows) {
    if (value === undefined || value === null || value === "") continue;
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = name;
    tr.append(th);
    const td = tr.insertCell();
    td.textContent = fmt(value);
    if (classes[name]) td.className = classes[name];
  }
}

function showFacts(md, children) {
  const qc = isObject(md.qc) ? md.qc : {};
  const alerts = Array.isArray(qc.alerts) ? qc.alerts : undefined;
  const p = md.progress;
  const running = md.status === "running";
  const progress = running && isObject(p) ? (p.total ? `${p.stage} ${p.done}/${p.total}` : p.stage) : undefined;
  const volume = children.recon;
  const rows = [
    ["sample", md.sample], ["technique", techniqueOf(md)], ["scan id", md.scan_id], ["raw uid", md.raw_uid],
    ["source", md.source && (md.format ? `${md.source} (${md.format})` : md.source)],
    ["status", md.status], ["reason", md.reason], ["progress", progress], ["live preview", md.preview_status],
    ["rotation centre", centreText(md, children.preview)], ["angles", anglesText(md)],
    ["volume", volume?.structure?.shape?.join(" x ")],
    ["SNR", qc.snr], ["CNR", qc.cnr], ["noise sigma", qc.noise_sigma],
    ["ring severity", qc.ring_severity], ["edge width (px)", edgeText(qc.edge_width_px)],
    ["centre confidence", qc.center_confidence], ["porosity", md.porosity],
    ["QC alerts", alerts && (alerts.length ? alerts.map(String).join("; ") : "none")],
    ...techniqueRows(md, techniqueOf(md)),
    ["created", md.created], ["updated", md.updated],
  ];
  const classes = { status: String(md.status), "QC alerts": alerts && alerts.length ? "alert" : "" };
  fillTable($("facts"), rows, classes);
}

function describe(name, child) {
  if (!child) return undefined;
  const s = child.structure ?? {};
  if (child.structure_family === "table") return `${name} (table: ${(s.columns ?? []).join(", ")})`;
  if (child.structure_family === "array") return `${name} (${s.shape.join(" x ")} ${s.data_type?.kind}${(s.data_type?.itemsize ?? 0) * 8})`;
  return `${name} (${child.structure_family})`;
}

/** One row per stage done: the arrays, tables and metadata it wrote; then outputs of no stage. */
function showOutputs(md, children) {
  const stages = Array.isArray(md.stages) ? md.stages.map(String) : [];
  const seconds = md.provenance?.seconds_per_stage ?? {};
  const claimed = new Set();
  const rows = stages.map((stage) => {
    const names = [stage, ...(STAGE_OUTPUTS[stage] ?? [])].filter((n) => children[n]);
    names.forEach((n) => claimed.add(n));
    const parts = names.map((n) => describe(n, children[n]));
    if (STAGE_METADATA[stage]) parts.push(STAGE_METADATA[stage]);
    if (isObject(md.metrics?.[stage])) parts.push(`metrics.${stage}: ${Object.keys(md.metrics[stage]).join(", ")}`);
    if (typeof seconds[stage] === "number") parts.push(`${fmt(seconds[stage])} s`);
    return [stage, parts.join("; ") || "-"];
  });
  const rest = Object.keys(children).filter((n) => !claimed.has(n)).sort();
  const during = rest.filter((n) => n.startsWith("preview"));
  const other = rest.filter((n) => !n.startsWith("preview"));
  if (during.length) rows.push(["during acquisition", during.map((n) => describe(n, children[n])).join("; ")]);
  if (other.length) rows.push(["other outputs", other.map((n) => describe(n, children[n])).join("; ")]);
  fillTable($("outputs"), rows);
  $("outputs-title").hidden = rows.length === 0;
}

function scanOption(id, md, selected) {
  const technique = techniqueOf(md);
  const label = [
    md.sample ?? id.slice(0, 8),
    md.scan_id !== undefined && md.scan_id !== null ? `#${md.scan_id}` : null,
    technique && technique !== "tomo" ? technique : null,
    md.status, md.created,
  ].filter((part) => part !== null && part !== undefined && part !== "").join(" · ");
  return new Option(label, id, false, id === selected);
}

/** The newest 100 scans, and the one asked for by its uid even when it is older than those. */
async function listScans(selected) {
  let found;
  try {
    found = await getJSON("search/processed?fields=metadata&sort=-created&page[limit]=100");
  } catch (err) {
    if (err instanceof HttpError && err.status === 404) return ""; // nothing processed yet
    throw err;
  }
  const options = found.data.map(({ id, attributes }) => scanOption(id, attributes.metadata ?? {}, selected));
  if (selected && !found.data.some(({ id }) => id === selected)) {
    try {
      const node = await getJSON(`metadata/processed/${encodeURIComponent(selected)}`);
      options.unshift(scanOption(selected, node.data.attributes.metadata ?? {}, selected));
    } catch (err) {
      if (!(err instanceof HttpError && err.status === 404)) throw err;
      $("message").textContent = `No processed scan ${selected}; showing the newest.`;
    }
  }
  $("scan").replaceChildren(...options);
  return $("scan").value;
}

function showPreview(uid, key, child) {
  const [rows, ny, nx] = child.structure.shape;
  const pm = child.metadata ?? {};
  const i = Math.floor(rows / 2);
  const row = (pm.rows || [])[i] ?? i;
  const [low, high] = Array.isArray(pm.angle_range_deg) ? pm.angle_range_deg : [];
  let caption = `${key} · detector row ${row}`;
  if (pm.n_angles !== undefined) caption += ` · ${pm.n_angles} angles`;
  if (low !== undefined) caption += ` (${fmt(low)} to ${fmt(high)} deg)`;
  if (pm.frames_dropped) caption += ` · ${pm.frames_dropped} projections not previewed (processing outran the preview)`;
  return showSlice(key, uid, key, `${i},:,:`, [ny, nx], Array(2).fill(zoom([ny, nx])), pm.updated, caption);
}

function showVolume(uid, key, child, stamp) {
  const [nz, ny, nx] = child.structure.shape;
  const [z, y, x] = [nz, ny, nx].map((n) => Math.floor(n / 2));
  const scale = zoom([nz, ny, nx]);
  const stretch = nz * scale >= SLIVER_PX ? 1 : Math.ceil(SLIVER_PX / (nz * scale)); // thin volumes
  const note = stretch > 1 ? ` · z drawn ${stretch}x taller (${nz} slice${nz === 1 ? "" : "s"})` : "";
  return [
    showSlice("xy", uid, key, `${z},:,:`, [ny, nx], [scale, scale], stamp, `${key} · xy · z = ${z}`),
    showSlice("xz", uid, key, `:,${y},:`, [nz, nx], [scale * stretch, scale], stamp, `${key} · xz · y = ${y}${note}`),
    showSlice("yz", uid, key, `:,:,${x}`, [nz, ny], [scale * stretch, scale], stamp, `${key} · yz · x = ${x}${note}`),
  ];
}

const drawable = (c) => c.structure_family === "array" && ["f", "i", "u", "b"].includes(c.structure?.data_type?.kind);

async function showScan(uid) {
  const [node, found] = await Promise.all([
    getJSON(`metadata/processed/${uid}`),
    getJSON(`search/processed/${uid}?fields=metadata&fields=structure&fields=structure_family&page[limit]=100`),
  ]);
  const md = node.data.attributes.metadata ?? {};
  const children = Object.fromEntries(found.data.map((c) => [c.id, c.attributes]));
  document.title = `tomolive · ${md.sample ?? uid}`;
  showFacts(md, children);
  showOutputs(md, children);

  const arrays = Object.keys(children).filter((k) => drawable(children[k]));
  const stacks = arrays.filter((k) => k.startsWith("preview") && children[k].structure.shape.length === 3);
  const volumes = arrays.filter((k) => children[k].structure.shape.length === 3 && !stacks.includes(k));
  volumes.sort((a, b) => (VOLUME_ORDER.indexOf(a) + 1 || 99) - (VOLUME_ORDER.indexOf(b) + 1 || 99));
  const images = arrays.filter((k) => children[k].structure.shape.length === 2).sort();
  const select = $("volume");
  const chosen = volumes.includes(select.value) ? select.value : volumes[0];
  select.replaceChildren(...volumes.map((k) => new Option(k, k, false, k === chosen)));
  select.parentElement.hidden = volumes.length === 0;

  const shown = stacks.map((k) => showPreview(uid, k, children[k]));
  for (const k of images) {
    const shape = children[k].structure.shape;
    shown.push(showSlice(k, uid, k, "", shape, Array(2).fill(zoom(shape)), children[k].metadata?.updated ?? md.updated, k));
  }
  // recon exists (empty) from the first projection on: show it once processing reports progress
  if (chosen && (md.status !== "running" || md.progress)) shown.push(...showVolume(uid, chosen, children[chosen], md.updated));
  for (const panel of $("panels").children) panel.hidden = !shown.includes(panel.id.slice("panel-".length));
  return md.status;
}

async function refresh() {
  clearTimeout(timer);
  $("message").textContent = "";
  try {
    const uid = await listScans(params.get("scan") || $("scan").value);
    if (!uid) {
      $("message").textContent = "No processed scans yet; this page refreshes itself.";
      timer = setTimeout(refresh, POLL_MS);
      return;
    }
    const status = await showScan(uid);
    if (status === "running") timer = setTimeout(refresh, POLL_MS);
  } catch (err) {
    const needsKey = err instanceof HttpError && (err.status === 401 || err.status === 403);
    $("login").hidden = !needsKey;
    $("login").elements.scan.value = params.get("scan") || "";
    $("message").textContent = needsKey ? "This server needs an API key to read." : `Could not read from Tiled: ${err.message}`;
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
