// Why one script over 400 lines: the page is one flow on one screen and ships with no build step;
// its sections (marked "// ---") follow the page top to bottom.
//
// sana-serve's page: a client of the public API and nothing else (GET /v1/models, POST
// /v1/images/jobs, GET .../events as server-sent events, POST .../cancel, GET /v1/images/files/...).
// Every call carries the key the user typed (Authorization: Bearer), so the event stream and the
// image files are read with fetch() rather than EventSource or a bare <img src>: neither can send
// a header. Paths are relative to the page's <base>, so it works under any route prefix.
"use strict";

const KEY_STORAGE = "sana-serve.api-key";
const JOBS_STORAGE = "sana-serve.jobs";
const KEPT_JOBS = 20;
const RECONNECT_MS = 1000;

// The API's `param` → the form field that shows its error (the error paragraph is `${id}-error`).
const FIELD_OF_PARAM = {
  prompt: "prompt", negative_prompt: "negative", model: "model", size: "size", n: "n", seed: "seed",
  num_inference_steps: "steps", guidance_scale: "guidance", output_format: "format", partial_images: "previews",
};

// Stage → [progress %, words]; denoising fills 5-90% step by step.
const STAGES = {
  queued: [0, "Queued"], in_progress: [1, "Starting"], starting: [1, "Starting"], routed: [2, "Routed"],
  encoding: [4, "Encoding the prompt"], denoising: [5, "Denoising"], decoding: [91, "Decoding"],
  encoding_images: [97, "Encoding images"], done: [99, "Saving"],
};
const DENOISE_FROM = 5, DENOISE_TO = 90;

const $ = (id) => document.getElementById(id);
let models = [];

// --- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const error = (body && body.error) || {};
    super(error.message || `the server answered HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.type = error.type || null;
    this.retryAfter = retryAfter;
  }

  // In words, with what the user can do about it.
  describe() {
    const wait = this.retryAfter ? ` Retry after ${this.retryAfter} s.` : "";
    if (this.status === 401) return `${this.message} (401: check the API key).`;
    if (this.status === 429) return `Too many requests: ${this.message}.${wait}`;
    if (this.status === 503) return `The server is busy: ${this.message}.${wait}`;
    return this.param ? this.message : `${this.message} (HTTP ${this.status})`;
  }
}

// A mistake the page sees before asking the server (a number field holding text).
class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: the status says enough */ }
  return new ApiError(response.status, body, response.headers.get("Retry-After"));
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: authHeaders(headers) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// A file from the API as an object URL (the <img> and the download link use it).
async function fileUrl(url) {
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) throw await errorOf(response);
  return URL.createObjectURL(await response.blob());
}

// Server-sent events over fetch: yields {type, id, data} until the server ends the stream.
async function* serverEvents(path, lastEventId, signal) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (lastEventId) headers["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(path, { headers, signal, cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event) yield event;
    }
  }
}

function parseEvent(block) {
  let type = "message", id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: the keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  return data.length ? { type, id, data: JSON.parse(data.join("\n")) } : null;
}

// --- small helpers ----------------------------------------------------------------------------

function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function announce(text) {
  $("announcer").textContent = text;
}

function seconds(ms) {
  return ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
}

function parseSize(size) {
  const [width, height] = size.split("x").map(Number);
  return { width, height };
}

function sizeLabel(width, height) {
  if (width === height) return `${width} × ${height} (square)`;
  const ratio = (Math.max(width, height) / Math.min(width, height)).toFixed(2).replace(/\.?0+$/, "");
  return `${width} × ${height} (${width > height ? `landscape ${ratio}:1` : `portrait 1:${ratio}`})`;
}

function randomSeed() {
  const values = new Uint32Array(1);
  crypto.getRandomValues(values);
  return values[0] % 2 ** 31;
}

// The prompt as generated, with each ❤️ (a word the safety filter replaced) marked.
function withHearts(node, text) {
  node.replaceChildren();
  text.split(/(❤️)/u).forEach((part) => {
    if (part === "❤️") node.append(element("mark", { title: "replaced by the safety filter" }, part));
    else if (part) node.append(document.createTextNode(part));
  });
}

// --- errors next to fields ----------------------------------------------------------------------

function clearErrors() {
  document.querySelectorAll("#generate-form .field-error").forEach((node) => { node.textContent = ""; });
  document.querySelectorAll("#generate-form [aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
  $("form-error").textContent = "";
}

function showFieldError(field, message) {
  $(`${field}-error`).textContent = message;
  const inputs = field === "size" && $("size").value === "custom" ? [$("width"), $("height")] : [$(field)];
  inputs.forEach((input) => input.setAttribute("aria-invalid", "true"));
  inputs[0].focus();
}

function showError(error) {
  if (error instanceof ApiError && error.status === 401) {
    showKeyPanel(error.describe());
    return;
  }
  if (error instanceof FieldError) {
    showFieldError(error.field, error.message);
    return;
  }
  const field = error instanceof ApiError && error.param ? FIELD_OF_PARAM[error.param] : null;
  const message = error instanceof ApiError ? error.describe() : `Could not reach the server: ${error.message}`;
  if (field) showFieldError(field, message);
  else $("form-error").textContent = message;
}

// --- the key ------------------------------------------------------------------------------------

function showKeyPanel(message) {
  $("key-panel").hidden = false;
  $("api-key-error").textContent = message || "";
  $("api-key").setAttribute("aria-invalid", message ? "true" : "false");
  $("api-key").focus();
}

async function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    showKeyPanel("Type the API key first.");
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  await connect();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  $("api-key").value = "";
  showKeyPanel("");
  $("server-status").textContent = "Key forgotten.";
}

// --- models and sizes ---------------------------------------------------------------------------

async function connect() {
  $("server-status").textContent = "Connecting…";
  try {
    models = (await api("v1/models")).data;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      $("server-status").textContent = "This server needs an API key.";
      showKeyPanel(apiKey() ? error.describe() : "");
    } else {
      $("server-status").textContent = error instanceof ApiError ? error.describe() : `Server unreachable: ${error.message}`;
    }
    return false;
  }
  if (apiKey()) {
    $("api-key-error").textContent = "";
    $("api-key").setAttribute("aria-invalid", "false");
    $("api-key-help").textContent = "Key accepted. It is kept in this tab's session storage only.";
  }
  fillModels();
  $("server-status").textContent = `Ready: ${models.length} model${models.length === 1 ? "" : "s"}.`;
  restoreJobs();
  return true;
}

function fillModels() {
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...models.map((model) => element("option", { value: model.id },
    model.description ? `${model.id} — ${model.description}` : model.id)));
  const fallback = models.find((model) => model.default) || models[0];
  select.value = models.some((model) => model.id === chosen) ? chosen : fallback.id;
  modelChanged();
}

function currentModel() {
  return models.find((model) => model.id === $("model").value);
}

function modelChanged() {
  const model = currentModel();
  if (!model) return;
  const { limits, defaults } = model;
  $("model-help").textContent = `${model.resolution}px class; up to ${limits.max_side}px a side, ${limits.max_images} image${limits.max_images === 1 ? "" : "s"} a request.`;
  fillSizes(model);
  for (const [id, max, value] of [["steps", limits.max_steps, defaults.num_inference_steps],
                                  ["guidance", limits.max_guidance_scale, defaults.guidance_scale]]) {
    $(id).max = max;
    $(id).placeholder = String(value);
    if ($(id).value === "") $(id).value = value;
  }
  $("n").max = limits.max_images;
  for (const id of ["width", "height"]) {
    $(id).min = limits.min_side;
    $(id).max = limits.max_side;
  }
  $("prompt").maxLength = limits.max_prompt_chars;
  $("negative").maxLength = limits.max_prompt_chars;
}

function fillSizes(model) {
  const select = $("size");
  const chosen = select.value;
  const groups = { Portrait: [], Square: [], Landscape: [] };
  for (const size of model.sizes) {
    const { width, height } = parseSize(size);
    const group = width === height ? "Square" : width > height ? "Landscape" : "Portrait";
    groups[group].push(element("option", { value: size }, sizeLabel(width, height)));
  }
  const children = Object.entries(groups).filter(([, options]) => options.length).map(([label, options]) => {
    const group = element("optgroup", { label });
    group.append(...options);
    return group;
  });
  children.push(element("option", { value: "custom" }, "Custom…"));
  select.replaceChildren(...children);
  const wanted = [chosen, model.default_size, model.sizes[0]].find((size) => model.sizes.includes(size) || size === "custom");
  select.value = wanted || model.sizes[0];
  sizeChanged();
}

function sizeChanged() {
  const custom = $("size").value === "custom";
  $("custom-size").hidden = !custom;
  if (custom && !$("width").value) {
    const { width, height } = parseSize(currentModel().default_size);
    $("width").value = width;
    $("height").value = height;
  }
}

// --- the form -----------------------------------------------------------------------------------

// The request body as the user set it; numbers are sent as typed, so the API names what is wrong.
function requestBody() {
  const body = {
    prompt: $("prompt").value,
    model: $("model").value,
    output_format: $("format").value,
    partial_images: Number($("previews").value),
  };
  const negative = $("negative").value;
  if (negative) body.negative_prompt = negative;
  body.size = $("size").value === "custom" ? `${$("width").value.trim()}x${$("height").value.trim()}` : $("size").value;
  for (const [id, name] of [["steps", "num_inference_steps"], ["guidance", "guidance_scale"], ["n", "n"]]) {
    const number = numberOf(id);
    if (number !== null) body[name] = number;
  }
  if (!$("random-seed").checked) {
    const seed = numberOf("seed");
    if (seed !== null) body.seed = seed;
  }
  return body;
}

function numberOf(id) {
  const input = $(id);
  if (input.value.trim() === "") return null;
  if (Number.isNaN(input.valueAsNumber)) throw new FieldError(id, `${input.labels[0].textContent}: type a number`);
  return input.valueAsNumber;
}

async function generate(event) {
  event.preventDefault();
  clearErrors();
  if (!models.length && !(await connect())) return;
  let body;
  try {
    body = requestBody();
    if (!body.prompt.trim()) throw new FieldError("prompt", "Prompt: type what to draw.");
  } catch (error) {
    showError(error);
    return;
  }
  const button = $("generate");
  button.disabled = true;
  try {
    const job = await api("v1/images/jobs", { method: "POST", body });
    const card = new JobCard(job, body);
    card.follow();
    rememberJob(job.id, body);
    announce(`Started: ${body.prompt.slice(0, 80)}`);
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

function useSettings(request, seed) {
  $("prompt").value = request.prompt;
  $("negative").value = request.negative_prompt || "";
  if (models.some((model) => model.id === request.model)) {
    $("model").value = request.model;
    modelChanged();
  }
  if (request.size && currentModel().sizes.includes(request.size)) {
    $("size").value = request.size;
  } else if (request.size) {
    $("size").value = "custom";
    const { width, height } = parseSize(request.size);
    $("width").value = width;
    $("height").value = height;
  }
  sizeChanged();
  if (request.num_inference_steps !== undefined) $("steps").value = request.num_inference_steps;
  if (request.guidance_scale !== undefined) $("guidance").value = request.guidance_scale;
  $("n").value = request.n || 1;
  $("format").value = request.output_format || "png";
  $("previews").value = String(request.partial_images ?? 2);
  $("seed").value = seed;
  $("random-seed").checked = false;
  clearErrors();
  $("prompt").focus();
  announce("Settings copied into the form.");
}

// --- jobs kept for this tab (a reload shows them again) -------------------------------------------

function keptJobs() {
  try { return JSON.parse(sessionStorage.getItem(JOBS_STORAGE) || "[]"); } catch { return []; }
}

function rememberJob(id, request) {
  const jobs = keptJobs().filter((job) => job.id !== id);
  jobs.push({ id, request });
  sessionStorage.setItem(JOBS_STORAGE, JSON.stringify(jobs.slice(-KEPT_JOBS)));
}

function forgetJob(id) {
  sessionStorage.setItem(JOBS_STORAGE, JSON.stringify(keptJobs().filter((job) => job.id !== id)));
}

let restored = false;
function restoreJobs() {
  if (restored) return;
  restored = true;
  for (const { id, request } of keptJobs()) {
    new JobCard({ id, status: "queued", created_at: null }, request).follow();
  }
}

// --- a job's card -------------------------------------------------------------------------------

class JobCard {
  constructor(job, request) {
    this.id = job.id;
    this.request = request;
    this.lastEventId = 0;
    this.finished = false;
    this.submittedAt = null; // server time of the `queued` event
    this.anchor = null; // {server, local}: the newest event's server time and when it arrived here
    this.denoise = null; // {start, step, total, at}: server times of the denoising steps
    this.stage = "queued";
    this.urls = [];
    this.abort = new AbortController();
    this.node = $("card-template").content.firstElementChild.cloneNode(true);
    this.part = (name) => this.node.querySelector(`.card-${name}`);
    this.build();
    $("cards").prepend(this.node);
    $("no-results").hidden = true;
    this.timer = setInterval(() => this.renderStatus(), 250);
  }

  build() {
    const request = this.request;
    this.node.dataset.jobId = this.id;
    const title = this.part("title");
    title.textContent = request.prompt;
    title.id = `title-${this.id}`;
    this.node.querySelector("article").setAttribute("aria-labelledby", title.id);
    const bits = [request.model, request.size, `${request.n || 1} image${(request.n || 1) === 1 ? "" : "s"}`];
    if (request.seed !== undefined) bits.push(`seed ${request.seed}`);
    this.part("meta").textContent = bits.filter(Boolean).join(" · ");
    this.part("progress").setAttribute("aria-label", `Progress of “${request.prompt.slice(0, 60)}”`);
    this.part("cancel").addEventListener("click", () => this.cancel());
    this.part("remove").addEventListener("click", () => this.remove());
    this.render(0);
  }

  async follow() {
    while (!this.finished) {
      try {
        for await (const event of serverEvents(`v1/images/jobs/${this.id}/events`, this.lastEventId, this.abort.signal)) {
          if (event.id) this.lastEventId = Number(event.id);
          this.apply(event.type, event.data);
        }
        if (this.finished) return;
      } catch (error) {
        if (this.abort.signal.aborted) return;
        if (error instanceof ApiError) { // 404 (expired), 401 (key): waiting will not help
          this.end("failed", `Can't follow this job: ${error.describe()}`);
          return;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS)); // the stream dropped: resume
    }
  }

  apply(type, data) {
    if (typeof data.created_at === "number") {
      this.anchor = { server: data.created_at, local: performance.now() };
      if (this.submittedAt === null) this.submittedAt = data.created_at;
    }
    switch (type) {
      case "queued":
        this.stage = "queued";
        this.position = data.position;
        break;
      case "in_progress":
        this.stage = "in_progress";
        this.node.dataset.state = "running";
        this.denoise = null;
        break;
      case "progress":
        this.stage = data.stage;
        if (data.stage === "denoising") this.denoiseStep(data);
        break;
      case "partial_image":
        this.showPreviews(data);
        break;
      case "cancel_requested":
        this.cancelling = true;
        break;
      case "completed":
        this.showResult(data.result);
        break;
      case "failed":
        this.end("failed", `Failed: ${data.error ? data.error.message : "unknown error"}`);
        break;
      case "cancelled":
        this.end("cancelled", this.denoise && this.denoise.total
          ? `Cancelled at step ${this.denoise.step}/${this.denoise.total}.` : "Cancelled.");
        break;
      default:
        break;
    }
    this.renderStatus();
  }

  denoiseStep(data) {
    if (!this.denoise || data.step === 0) {
      this.denoise = { start: data.created_at, step: 0, total: data.total, at: data.created_at };
    }
    this.denoise.step = data.step;
    this.denoise.total = data.total;
    this.denoise.at = data.created_at;
  }

  percent() {
    if (this.finished) return 100;
    if (this.stage === "denoising" && this.denoise && this.denoise.total) {
      return DENOISE_FROM + ((DENOISE_TO - DENOISE_FROM) * this.denoise.step) / this.denoise.total;
    }
    return (STAGES[this.stage] || [0])[0];
  }

  elapsedMs() {
    if (this.submittedAt === null || this.anchor === null) return 0;
    const since = this.finished ? 0 : performance.now() - this.anchor.local;
    return (this.anchor.server - this.submittedAt) * 1000 + since;
  }

  // Time left: the denoising steps to go at the pace so far (decode and encode are short next to them).
  etaMs() {
    const d = this.denoise;
    if (this.stage !== "denoising" || !d || d.step < 1 || d.step >= d.total) return null;
    const perStep = ((d.at - d.start) * 1000) / d.step;
    return perStep * (d.total - d.step);
  }

  render(percent) {
    const bar = this.part("progress");
    bar.value = percent;
    bar.setAttribute("aria-valuetext", `${Math.round(percent)}%`);
  }

  renderStatus() {
    if (this.finished) return;
    this.render(this.percent());
    const words = [];
    const [, stageText] = STAGES[this.stage] || [0, this.stage];
    if (this.stage === "queued" && this.position) words.push(`Queued (position ${this.position})`);
    else if (this.stage === "denoising" && this.denoise && this.denoise.total) {
      words.push(`Denoising · step ${this.denoise.step}/${this.denoise.total}`);
    } else words.push(stageText);
    if (this.cancelling) words.push("cancelling…");
    words.push(`${seconds(this.elapsedMs())} elapsed`);
    const eta = this.etaMs();
    if (eta !== null) words.push(`ETA ~${seconds(eta)}`);
    this.part("status").textContent = words.join(" · ");
  }

  async showPreviews(data) {
    const box = this.part("previews");
    box.hidden = false;
    const index = data.partial_image_index ?? data.index ?? 0;
    const urls = data.urls || [];
    const images = await Promise.all(urls.map((url) => fileUrl(url).catch(() => null)));
    if (this.finished) return; // the result came first: no stale preview
    images.forEach((src, i) => {
      if (!src) return;
      let img = box.querySelector(`img[data-image="${i}"]`);
      if (!img) {
        img = element("img", { "data-image": String(i) });
        box.append(img);
      }
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = src;
      img.alt = `Preview ${index + 1} of image ${i + 1}`;
      img.dataset.previewIndex = String(index);
    });
  }

  async showResult(result) {
    this.finished = true; // no more previews; the state says "completed" once the images are in
    clearInterval(this.timer);
    this.render(100);
    const timings = result.timings_ms || {};
    this.part("status").textContent = `Done in ${seconds(timings.total || this.elapsedMs())}.`;
    const box = this.part("images");
    const format = result.output_format || "png";
    const [width, height] = (result.size || "").split("x").map(Number);
    const items = await Promise.all(result.data.map(async (item, i) => {
      const src = await fileUrl(item.url);
      this.urls.push(src);
      const wrap = element("figure", { class: "result" });
      const enlarge = element("button", { type: "button", class: "enlarge", "aria-label": `Image ${i + 1} at full size` });
      const img = element("img", { src, alt: `Image ${i + 1}: ${this.request.prompt.slice(0, 120)}` });
      if (width && height) { img.width = width; img.height = height; }
      enlarge.append(img);
      enlarge.addEventListener("click", () => openViewer(src, img.alt, width, height));
      const download = element("a", { href: src, download: `sana-${result.seed}-${i + 1}.${format === "jpeg" ? "jpg" : format}`, class: "download" },
        `Download image ${i + 1} (${result.size} ${format.toUpperCase()})`);
      wrap.append(enlarge, download);
      if (item.flagged === true) {
        // The server's image safety check flagged it: a grey placeholder stands in for it, unless
        // the server only flags (then it is the image as generated).
        wrap.dataset.flagged = "true";
        wrap.append(element("figcaption", { class: "flagged" },
          `Image ${i + 1} was flagged by the server's safety check.`));
      }
      return wrap;
    })).catch((error) => {
      this.showError(`The images could not be fetched: ${error instanceof ApiError ? error.describe() : error.message}`);
      return [];
    });
    box.replaceChildren(...items);
    this.part("previews").hidden = true;
    const revised = result.data[0] ? result.data[0].revised_prompt : null;
    if (revised && revised !== this.request.prompt) {
      const node = this.part("revised");
      node.hidden = false;
      node.replaceChildren(element("strong", {}, "Prompt as generated: "));
      const text = element("span");
      withHearts(text, revised);
      node.append(text);
    }
    this.showDetails(result);
    this.node.dataset.state = "completed";
    const again = this.part("again");
    again.hidden = false;
    again.onclick = () => useSettings(this.request, result.seed);
    this.done();
    announce(`Finished: ${this.request.prompt.slice(0, 80)}`);
  }

  showDetails(result) {
    const timings = result.timings_ms || {};
    const rows = [
      ["Seed", String(result.seed)],
      ["Size", result.size],
      ["Model", result.model],
      ["Total", seconds(timings.total || 0)],
      ["Stages", ["queue", "encode", "denoise", "decode", "image_encode"]
        .filter((name) => timings[name] !== undefined)
        .map((name) => `${name.replace("_", " ")} ${Math.round(timings[name])} ms`).join(", ")],
      ["Batch", `${result.batch_size} image${result.batch_size === 1 ? "" : "s"} in the denoiser batch`],
    ];
    const list = this.part("details");
    list.replaceChildren(...rows.flatMap(([name, value]) => [element("dt", {}, name), element("dd", {}, value)]));
    list.hidden = false;
  }

  showError(message) {
    const node = this.part("error");
    node.hidden = false;
    node.textContent = message;
  }

  end(state, message) {
    this.node.dataset.state = state;
    this.finished = true;
    clearInterval(this.timer);
    this.part("status").textContent = message;
    if (state === "failed") this.showError(message);
    this.part("again").hidden = false;
    this.part("again").onclick = () => useSettings(this.request, this.request.seed ?? "");
    this.done();
    announce(message);
  }

  done() {
    this.part("cancel").hidden = true;
    this.part("remove").hidden = false;
  }

  async cancel() {
    const button = this.part("cancel");
    button.disabled = true;
    this.cancelling = true;
    this.renderStatus();
    try {
      await api(`v1/images/jobs/${this.id}/cancel`, { method: "POST" });
    } catch (error) {
      this.cancelling = false;
      button.disabled = false;
      this.showError(`Cancel failed: ${error instanceof ApiError ? error.describe() : error.message}`);
    }
  }

  remove() {
    this.abort.abort();
    clearInterval(this.timer);
    this.urls.forEach((url) => URL.revokeObjectURL(url));
    forgetJob(this.id);
    this.node.remove();
    $("no-results").hidden = $("cards").children.length > 0;
    $("results").focus();
  }
}

// --- the full-size viewer -----------------------------------------------------------------------

function openViewer(src, alt, width, height) {
  const img = $("viewer-image");
  img.src = src;
  img.alt = alt;
  if (width && height) { img.width = width; img.height = height; }
  $("viewer-title").textContent = width ? `Full size (${width} × ${height})` : "Full size";
  $("viewer").showModal();
  $("viewer-close").focus();
}

// --- wiring -------------------------------------------------------------------------------------

function start() {
  $("generate-form").addEventListener("submit", generate);
  $("key-form").addEventListener("submit", useKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("model").addEventListener("change", modelChanged);
  $("size").addEventListener("change", sizeChanged);
  $("reroll").addEventListener("click", () => {
    $("seed").value = randomSeed();
    $("random-seed").checked = false;
  });
  $("random-seed").addEventListener("change", () => {
    if (!$("random-seed").checked && $("seed").value === "") $("seed").value = randomSeed();
  });
  $("seed").addEventListener("input", () => { $("random-seed").checked = $("seed").value === ""; });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("generate-form").requestSubmit();
  });
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) $("viewer").close(); });
  connect();
}

document.addEventListener("DOMContentLoaded", start);
