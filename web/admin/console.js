// The console: flashgate's admin API and a sale's event stream, nothing
// else. The admin token lives in this tab's sessionStorage only.
import { call, salePath, ServerClock, duration, watchSale, explain, linesText, el, $ } from '/shared/api.js';

const TOKEN_KEY = 'flashgate.admin_token';
const SAMPLE_MS = 1000;      // the chart gets a point at least this often
const POLL_MS = 2000;        // /metrics and /readyz
const CHART_SPAN_MS = 5 * 60 * 1000;
const PAGE = 10;        // reservations a page

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  sale: null,            // the open sale's id
  view: null,            // its newest view
  stopWatch: null,
  samples: [],           // {t (server ms), sold, held, available}
  lastMetrics: null,     // {t, outcomes: {name: count}}
  lastUnits: null,       // {t, taken}
  cursor: null,
  exportUrl: null,
  editing: null,         // the view being edited, or null for a new sale
};
const clock = new ServerClock();

// --- signing in -------------------------------------------------------------

function showSignedIn(on) {
  $('signin-view').hidden = on;
  $('console-view').hidden = !on;
  $('who').hidden = !on;
  $('sign-out').hidden = !on;
}

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  closeSale();
  showSignedIn(false);
  $('token').value = '';
  $('token-error').textContent = why || '';
  $('token').focus();
}

$('signin').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const token = $('token').value.trim();
  $('token-error').textContent = '';
  if (!token) {
    $('token-error').textContent = 'Enter the admin token.';
    return;
  }
  try {
    await call('GET', '/v1/sales', { token });
  } catch (e) {
    $('token-error').textContent = e.status === 401 ? 'This token was refused.' : explain(e);
    return;
  }
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
});
$('sign-out').addEventListener('click', () => signOut());

/** An admin call; a refused token signs out. */
async function admin(method, path, opts = {}) {
  try {
    return await call(method, path, { ...opts, token: state.token });
  } catch (e) {
    if (e.status === 401) signOut('The admin token was refused: sign in again.');
    throw e;
  }
}

function notice(id, kind, text) {
  const n = $(id);
  n.className = `notice ${kind}`;
  n.textContent = text;
  n.hidden = !text;
}

// --- the sales list ---------------------------------------------------------

async function loadSales() {
  let list;
  try {
    list = (await admin('GET', '/v1/sales')).body;
  } catch (e) {
    notice('sales-error', 'error', explain(e));
    return;
  }
  notice('sales-error', 'error', list.unavailable && list.unavailable.length
    ? `Not readable right now: ${list.unavailable.join(', ')}` : '');
  const body = $('sales').tBodies[0];
  body.replaceChildren(...list.sales.map(saleRow));
  $('sales-empty').hidden = list.sales.length > 0;
}

function saleRow(v) {
  const open = el('button', { class: 'link', type: 'button', text: v.sale_id });
  open.addEventListener('click', () => openSale(v.sale_id));
  const tr = el('tr', { dataset: { sale: v.sale_id }, 'aria-selected': String(v.sale_id === state.sale) },
    el('td', {}, open),
    el('td', {}, stateBadge(v)),
    el('td', { class: 'num', text: v.sold }),
    el('td', { class: 'num', text: v.held }),
    el('td', { class: 'num', text: v.available }));
  tr.addEventListener('click', (ev) => { if (ev.target === tr || ev.target.tagName === 'TD') openSale(v.sale_id); });
  return tr;
}

function stateBadge(v) {
  const s = v.closed ? 'closed' : v.paused ? 'paused' : v.state;
  return el('span', { class: `badge ${s}`, text: s.replace('_', ' ') });
}

function updateRow(v) {
  const row = $('sales').querySelector(`tr[data-sale="${CSS.escape(v.sale_id)}"]`);
  if (row) row.replaceWith(saleRow(v));
}

$('refresh-sales').addEventListener('click', loadSales);
$('new-sale').addEventListener('click', () => openForm(null));

// --- create / edit ----------------------------------------------------------

const FIELDS = ['sale_id', 'stock', 'per_user_limit', 'hold_ttl_secs', 'max_hold_secs', 'starts_at', 'ends_at',
  'product_id', 'admission', 'admit_per_sec', 'admission_window_secs', 'queue_opens_at'];
const INTS = ['stock', 'per_user_limit', 'hold_ttl_secs', 'max_hold_secs', 'admit_per_sec', 'admission_window_secs'];
const TIMES = ['starts_at', 'ends_at', 'queue_opens_at'];
const input = (name) => $(`f-${name}`);

/** RFC 3339 (UTC) to a datetime-local value in the visitor's zone. */
function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function clearFieldErrors() {
  for (const f of FIELDS) {
    $(`e-${f}`).textContent = '';
    input(f).removeAttribute('aria-invalid');
  }
  $('e-items').textContent = '';
  for (const e of $('f-items').querySelectorAll('.field-error')) e.textContent = '';
  for (const i of $('f-items').querySelectorAll('input')) i.removeAttribute('aria-invalid');
  notice('form-error', 'error', '');
}

// --- the items of a sale of several items: one row each ----------------------

const ITEM_PARTS = [['sku', 'sku'], ['stock', 'units'], ['per_user_limit', 'own cap']];

/** A row of the items editor: sku, stock, its own cap (optional). */
function itemRow(item = {}) {
  const cells = ITEM_PARTS.map(([part]) => {
    const i = el('input', {
      dataset: { part },
      type: part === 'sku' ? 'text' : 'number',
      inputmode: part === 'sku' ? undefined : 'numeric',
      spellcheck: part === 'sku' ? 'false' : undefined,
      placeholder: part === 'per_user_limit' ? 'none' : undefined,
    });
    if (item[part] !== undefined && item[part] !== null) i.value = item[part];
    return el('td', {}, i, el('span', { class: 'field-error', dataset: { part } }));
  });
  const remove = el('button', { type: 'button', class: 'small', text: '×' });
  remove.addEventListener('click', () => {
    remove.closest('tr').remove();
    labelItemRows();
  });
  return el('tr', {}, ...cells, el('td', {}, remove));
}

/** Rows are named by their place: "Item 2 sku", "Remove item 2". */
function labelItemRows() {
  [...$('f-items').tBodies[0].rows].forEach((tr, n) => {
    for (const [part, word] of ITEM_PARTS) tr.querySelector(`input[data-part="${part}"]`).setAttribute('aria-label', `Item ${n + 1} ${word}`);
    tr.querySelector('button').setAttribute('aria-label', `Remove item ${n + 1}`);
  });
}

function setItemRows(items) {
  $('f-items').tBodies[0].replaceChildren(...items.map(itemRow));
  labelItemRows();
}

$('add-item').addEventListener('click', () => {
  $('f-items').tBodies[0].append(itemRow());
  labelItemRows();
  $('f-items').tBodies[0].lastElementChild.querySelector('input').focus();
});

function itemError(tr, part, text) {
  const i = tr.querySelector(`input[data-part="${part}"]`);
  tr.querySelector(`.field-error[data-part="${part}"]`).textContent = text;
  i.setAttribute('aria-invalid', 'true');
  i.focus();
}

/**
 * The items as the API takes them, and the row each was read from (an
 * error naming `items[2].sku` belongs beside that row's sku). A row left
 * wholly empty is skipped. Null after a local error (shown).
 */
function readItems() {
  const items = [];
  const rows = [];
  for (const tr of $('f-items').tBodies[0].rows) {
    const raw = {};
    for (const [part] of ITEM_PARTS) raw[part] = tr.querySelector(`input[data-part="${part}"]`);
    if (ITEM_PARTS.every(([part]) => raw[part].value.trim() === '' && !raw[part].validity.badInput)) continue;
    const item = { sku: raw.sku.value.trim() };
    for (const part of ['stock', 'per_user_limit']) {
      const v = raw[part].value.trim();
      if (v === '' && !raw[part].validity.badInput) {
        if (part === 'stock') {
          itemError(tr, part, 'required');
          return null;
        }
        continue;
      }
      const n = Number(v);
      if (v === '' || !Number.isInteger(n)) {
        itemError(tr, part, 'must be a whole number');
        return null;
      }
      item[part] = n;
    }
    items.push(item);
    rows.push(tr);
  }
  return { items, rows };
}

/** Where an error about the items goes: beside the field it names. */
function showItemsError(e, rows) {
  const field = (e.details && e.details.field) || '';
  const m = /^items\[(\d+)\]\.(sku|stock|per_user_limit)$/.exec(field);
  if (m && rows[Number(m[1])]) {
    itemError(rows[Number(m[1])], m[2], e.message.replace(/^items\[\d+\]\.\w+: /, ''));
    return true;
  }
  const rowOf = (sku) => rows.find((tr) => tr.querySelector('input[data-part="sku"]').value.trim() === sku);
  if (e.code === 'stock_below_committed' && Array.isArray(e.details.items)) {
    $('e-items').textContent = explain(e);
    for (const it of e.details.items) {
      const tr = rowOf(it.sku);
      if (tr) itemError(tr, 'stock', `at least ${it.sold + it.held} (${it.sold} sold, ${it.held} held)`);
    }
    return true;
  }
  if (field === 'items') {
    $('e-items').textContent = e.message.replace(/^items: /, '');
    const tr = e.details.sku && rowOf(e.details.sku);
    if (tr) itemError(tr, 'per_user_limit', 'not while it has units sold or held');
    return true;
  }
  return false;
}

function showKind() {
  const multi = $('f-kind').value === 'items';
  $('sale-form').classList.toggle('multi', multi);
  if (multi && $('f-items').tBodies[0].rows.length === 0) setItemRows([{}, {}, {}]);
}
$('f-kind').addEventListener('change', showKind);

function fieldError(name, text) {
  $(`e-${name}`).textContent = text;
  input(name).setAttribute('aria-invalid', 'true');
  input(name).focus();
}

function openForm(view) {
  state.editing = view;
  const form = $('sale-form');
  form.reset();
  clearFieldErrors();
  $('form-title').textContent = view ? `Edit ${view.sale_id}` : 'New sale';
  input('sale_id').disabled = !!view;
  $('f-kind').value = view && view.items ? 'items' : 'one';
  setItemRows([]);
  if (view) {
    input('sale_id').value = view.sale_id;
    if (view.items) setItemRows(view.items);
    else input('stock').value = view.stock;
    input('per_user_limit').value = view.per_user_limit;
    input('hold_ttl_secs').value = view.hold_ttl_secs;
    input('max_hold_secs').value = view.max_hold_secs;
    input('starts_at').value = toLocalInput(view.starts_at);
    input('ends_at').value = toLocalInput(view.ends_at);
    input('product_id').value = view.product_id || '';
    input('admission').value = view.admission;
  }
  form.classList.toggle('queued', input('admission').value === 'queue');
  showKind();
  form.hidden = false;
  $('nothing-selected').hidden = true;
  form.scrollIntoView({ block: 'nearest' });
  if (!view) input('sale_id').focus();
  else if (view.items) $('f-items').querySelector('input[data-part="stock"]').focus();
  else input('stock').focus();
}

$('f-admission').addEventListener('change', () =>
  $('sale-form').classList.toggle('queued', input('admission').value === 'queue'));
$('cancel-form').addEventListener('click', () => {
  $('sale-form').hidden = true;
  $('nothing-selected').hidden = !!state.sale;
});

$('sale-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  clearFieldErrors();
  const id = input('sale_id').value.trim();
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
    fieldError('sale_id', '1-64 characters of letters, digits, _ and -');
    return;
  }
  const multi = $('f-kind').value === 'items';
  const body = {};
  for (const f of INTS) {
    if (multi && f === 'stock') continue;
    const raw = input(f).value.trim();
    if (raw === '' && input(f).validity.badInput) {
      fieldError(f, 'must be a whole number');
      return;
    }
    if (raw === '') continue;
    const n = Number(raw);
    if (!Number.isInteger(n)) {
      fieldError(f, 'must be a whole number');
      return;
    }
    body[f] = n;
  }
  for (const f of multi ? ['per_user_limit'] : ['stock', 'per_user_limit']) {
    if (body[f] === undefined) {
      fieldError(f, 'required');
      return;
    }
  }
  for (const f of TIMES) {
    const raw = input(f).value;
    if (raw) body[f] = new Date(raw).toISOString();
  }
  let itemRows = [];
  if (multi) {
    const read = readItems();
    if (!read) return;
    body.items = read.items;
    itemRows = read.rows;
  }
  if (input('product_id').value.trim()) body.product_id = input('product_id').value.trim();
  if (input('admission').value === 'queue') {
    body.admission = 'queue';
  } else {
    delete body.admit_per_sec;
    delete body.admission_window_secs;
    delete body.queue_opens_at;
  }
  $('save-sale').disabled = true;
  try {
    const res = await admin('PUT', salePath(id), { body });
    $('sale-form').hidden = true;
    await loadSales();
    openSale(id, res.body);
    notice('action-msg', 'ok', res.status === 201 ? `Sale ${id} created.` : `Sale ${id} updated.`);
  } catch (e) {
    const field = e.details && e.details.field;
    if (multi && showItemsError(e, itemRows)) {
      // shown beside the item it names
    } else if (field && FIELDS.includes(field)) {
      fieldError(field, e.message.replace(new RegExp(`^${field}: `), ''));
    } else if (e.code === 'stock_below_committed') {
      fieldError('stock', explain(e));
    } else {
      notice('form-error', 'error', explain(e));
    }
  } finally {
    $('save-sale').disabled = false;
  }
});

// --- one sale, live ---------------------------------------------------------

function closeSale() {
  if (state.stopWatch) state.stopWatch();
  state.stopWatch = null;
  state.sale = null;
  state.view = null;
}

function openSale(id, view) {
  closeSale();
  state.sale = id;
  state.samples = [];
  state.lastUnits = null;
  history.replaceState(null, '', `#sale=${encodeURIComponent(id)}`);
  for (const tr of $('sales').tBodies[0].rows) tr.setAttribute('aria-selected', String(tr.dataset.sale === id));
  $('nothing-selected').hidden = true;
  $('sale-detail').hidden = false;
  $('d-title').textContent = id;
  notice('action-msg', 'ok', '');
  notice('export-msg', 'ok', '');
  $('close-confirm').hidden = true;
  $('export-link').hidden = true;
  $('d-stream').textContent = 'connecting…';
  if (view) onView(view);
  state.stopWatch = watchSale(id, (v) => { if (state.sale === id) onView(v); }, (s) => {
    $('d-stream').textContent = s === 'live' ? 'live' : 'reconnecting…';
  });
  loadHolds(false);
  loadAudit();
  poll();
}

function onView(v) {
  if (state.view && v.version < state.view.version) return; // an older view, late
  state.view = v;
  clock.see(v);
  $('d-state').className = `badge ${v.state}`;
  $('d-state').textContent = v.state.replace('_', ' ');
  $('d-paused').hidden = !v.paused;
  $('d-closed').hidden = !v.closed;
  $('d-stock').textContent = v.stock;
  $('d-sold').textContent = v.sold;
  $('d-held').textContent = v.held;
  $('d-available').textContent = v.available;
  $('d-queue').hidden = !v.queue;
  if (v.queue) $('d-queue-value').textContent = `${v.queue.joined} / ${v.queue.serving}`;
  renderItems(v);
  const parts = [`cap ${v.per_user_limit} per buyer${v.items ? ` across ${v.items.length} items` : ''}`, `holds ${v.hold_ttl_secs} s`, `admission ${v.admission}`];
  if (v.starts_at) parts.push(`starts ${new Date(v.starts_at).toLocaleString()}`);
  if (v.ends_at) parts.push(`ends ${new Date(v.ends_at).toLocaleString()}`);
  $('d-times').textContent = parts.join(' · ');
  $('pause').disabled = v.paused || v.closed;
  $('resume').disabled = !v.paused || v.closed;
  $('close').disabled = v.closed;
  $('edit-sale').disabled = v.closed;
  addSample(v);
  updateRow(v);
}

/** A sale of several items: a row per item, kept in place as views come. */
function renderItems(v) {
  const table = $('d-items');
  table.hidden = !v.items;
  if (!v.items) return;
  const body = table.tBodies[0];
  const skus = v.items.map((i) => i.sku).join(',');
  if (body.dataset.skus !== skus) {
    body.dataset.skus = skus;
    body.replaceChildren(...v.items.map((i) => el('tr', { dataset: { sku: i.sku } },
      el('td', { class: 'sku', text: i.sku }),
      ...['stock', 'sold', 'held', 'available', 'cap'].map((k) => el('td', { class: `num ${k}`, dataset: { k } })),
      el('td', { class: 'bar-col' }, el('span', { class: 'meter', 'aria-hidden': 'true' },
        el('span', { class: 'sold' }), el('span', { class: 'held' }))))));
  }
  v.items.forEach((item, n) => {
    const tr = body.rows[n];
    const cell = (k) => tr.querySelector(`td[data-k="${k}"]`);
    for (const k of ['stock', 'sold', 'held', 'available']) cell(k).textContent = item[k];
    cell('cap').textContent = item.per_user_limit ?? '–';
    const pct = (x) => `${item.stock > 0 ? Math.min(100, (x / item.stock) * 100) : 0}%`;
    tr.querySelector('.meter .sold').style.width = pct(item.sold);
    tr.querySelector('.meter .held').style.width = pct(item.held);
  });
}

function addSample(v) {
  const t = clock.now();
  state.samples.push({ t, sold: v.sold, held: v.held, available: v.available });
  while (state.samples.length > 2 && state.samples[0].t < t - CHART_SPAN_MS) state.samples.shift();
  drawChart();
}

// A point every second even without events, so the lines run on.
setInterval(() => { if (state.view) addSample(state.view); }, SAMPLE_MS);

function drawChart() {
  const canvas = $('chart');
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 900;
  const h = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
  if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const color = (n) => css.getPropertyValue(n).trim();
  const left = 44, right = 8, top = 10, bottom = 22;
  const pw = w - left - right, ph = h - top - bottom;
  const s = state.samples;
  if (!s.length) return;
  // From the first point (the sale opened here) to now, up to five minutes.
  const now = s[s.length - 1].t;
  const t0 = Math.max(s[0].t, now - CHART_SPAN_MS);
  const span = Math.max(now - t0, 2000);
  const max = Math.max(1, state.view ? state.view.stock : 0, ...s.map((p) => Math.max(p.sold, p.held, p.available)));
  const x = (t) => left + ((t - (now - span)) / span) * pw;
  const y = (v) => top + ph - (v / max) * ph;
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = color('--muted');
  g.strokeStyle = color('--line');
  g.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const v = Math.round(max * frac);
    g.beginPath();
    g.moveTo(left, y(v) + 0.5);
    g.lineTo(w - right, y(v) + 0.5);
    g.stroke();
    g.textAlign = 'right';
    g.fillText(String(v), left - 6, y(v) + 4);
  }
  g.textAlign = 'left';
  g.fillText(`${Math.round(span / 1000)} s ago`, left, h - 6);
  g.textAlign = 'right';
  g.fillText('now', w - right, h - 6);
  for (const [key, name] of [['available', '--avail'], ['held', '--held'], ['sold', '--sold']]) {
    g.strokeStyle = color(name);
    g.lineWidth = 2;
    g.beginPath();
    s.forEach((p, i) => {
      // Steps: a count holds until the next view changes it.
      if (i === 0) g.moveTo(x(p.t), y(p[key]));
      else {
        g.lineTo(x(p.t), y(s[i - 1][key]));
        g.lineTo(x(p.t), y(p[key]));
      }
    });
    g.stroke();
  }
}
window.addEventListener('resize', drawChart);

// --- outcomes per second and the write-behind lag --------------------------

function parseOutcomes(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith('flashgate_reserve_outcomes_total{')) continue;
    const m = /outcome="([^"]*)"[^}]*\}\s+(\S+)/.exec(line);
    if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[2]);
  }
  return out;
}

async function poll() {
  if (!state.sale || document.hidden) return;
  const t = performance.now();
  // A sale opened just after a tick: rates over less than a second are noise.
  if (state.lastMetrics && t - state.lastMetrics.t < 1000) return;
  try {
    const res = await fetch('/metrics', { cache: 'no-store' });
    const outcomes = parseOutcomes(await res.text());
    const prev = state.lastMetrics;
    state.lastMetrics = { t, outcomes };
    const stats = [];
    if (state.view) {
      const taken = state.view.sold + state.view.held;
      const u = state.lastUnits;
      state.lastUnits = { t, taken };
      if (u) stats.push(rateStat('units taken (this sale)', Math.max(0, taken - u.taken) / ((t - u.t) / 1000)));
    }
    if (prev) {
      const secs = (t - prev.t) / 1000;
      const names = Object.keys(outcomes).sort();
      for (const n of names) stats.push(rateStat(n.replaceAll('_', ' '), Math.max(0, outcomes[n] - (prev.outcomes[n] || 0)) / secs));
      if (!names.length) stats.push(el('span', { class: 'hint', text: 'no reserve on this instance yet' }));
    }
    if (stats.length) $('rates').replaceChildren(...stats);
  } catch (e) {
    // The next tick tries again.
  }
  try {
    const r = await call('GET', '/readyz');
    const wb = r.body && r.body.write_behind;
    $('d-lag').textContent = wb ? `${wb.backlog + wb.pending}` : 'n/a';
    $('d-lag').title = wb ? `backlog ${wb.backlog}, pending ${wb.pending} stream entries (/readyz)` : 'no write-behind worker in this instance';
  } catch (e) {
    $('d-lag').textContent = '?';
    $('d-lag').title = explain(e);
  }
}
setInterval(poll, POLL_MS);

function rateStat(label, perSec) {
  const v = perSec >= 10 ? Math.round(perSec) : Math.round(perSec * 10) / 10;
  return el('div', { class: 'stat' }, el('span', { class: 'value', text: `${v}/s` }), el('span', { class: 'label', text: label }));
}

// --- pause, resume, close ---------------------------------------------------

async function steer(action, done) {
  const id = state.sale;
  try {
    const res = await admin('POST', salePath(id, `/${action}`));
    onView(res.body);
    notice('action-msg', 'ok', done);
    loadAudit();
  } catch (e) {
    notice('action-msg', 'error', explain(e));
  }
}

$('pause').addEventListener('click', () => steer('pause', 'Paused: reserves and queue joins are refused; holds can still be paid.'));
$('resume').addEventListener('click', () => steer('resume', 'Resumed.'));
$('close').addEventListener('click', () => { $('close-confirm').hidden = false; $('close-confirm').focus(); });
$('close-confirm').addEventListener('click', () => {
  $('close-confirm').hidden = true;
  steer('close', 'Closed: the sale has ended for good.');
});
$('edit-sale').addEventListener('click', () => { if (state.view) openForm(state.view); });

// --- reservations -----------------------------------------------------------

async function loadHolds(more) {
  const id = state.sale;
  const status = $('holds-status').value;
  let q = `?status=${status}&limit=${PAGE}`;
  if (more && state.cursor) q += `&cursor=${encodeURIComponent(state.cursor)}`;
  let page;
  try {
    page = (await admin('GET', salePath(id, `/reservations${q}`))).body;
  } catch (e) {
    notice('holds-error', 'error', explain(e));
    return;
  }
  if (id !== state.sale) return;
  notice('holds-error', 'error', '');
  const rows = page.reservations.map(holdRow);
  const body = $('holds').tBodies[0];
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  state.cursor = page.next_cursor;
  $('holds-more').hidden = !page.next_cursor;
  $('holds-empty').hidden = body.rows.length > 0;
}

function holdRow(r) {
  const when = r.status === 'held' ? r.expires_at : r.confirmed_at;
  const whenCell = el('td', {}, when ? new Date(when).toLocaleTimeString() : '–');
  if (r.status === 'held' && r.expires_at) {
    whenCell.append(el('span', { class: 'sub', text: `in ${duration(clock.until(r.expires_at))}` }));
  }
  const actions = el('td', {});
  if (r.status === 'held') {
    const b = el('button', { class: 'small danger', type: 'button', text: 'Release', 'aria-label': `Release ${r.reservation_id}` });
    b.addEventListener('click', () => release(r, b));
    actions.append(b);
  }
  return el('tr', { dataset: { reservation: r.reservation_id } },
    el('td', { class: 'mono', title: r.reservation_id, text: r.reservation_id.slice(0, 8) }),
    el('td', { text: r.user_id }),
    el('td', { class: 'num' }, String(r.quantity), r.items ? el('span', { class: 'sub lines', text: linesText(r.items) }) : null),
    whenCell, actions);
}

async function release(r, button) {
  button.disabled = true;
  try {
    await admin('POST', salePath(r.sale_id, `/reservations/${r.reservation_id}/cancel`));
    button.closest('tr').remove();
    notice('holds-error', 'ok', `Released ${r.quantity} unit(s) held by ${r.user_id}${r.items ? ` (${linesText(r.items)})` : ''}.`);
    loadAudit();
  } catch (e) {
    button.disabled = false;
    notice('holds-error', 'error', explain(e));
  }
}

$('refresh-holds').addEventListener('click', () => loadHolds(false));
$('holds-status').addEventListener('change', () => loadHolds(false));
$('holds-more').addEventListener('click', () => loadHolds(true));

// --- export -----------------------------------------------------------------

async function exportOrders(kind) {
  const id = state.sale;
  const accept = kind === 'csv' ? 'text/csv' : 'application/x-ndjson';
  notice('export-msg', 'info', 'Exporting…');
  let res;
  try {
    res = await fetch(salePath(id, '/orders'), { headers: { Authorization: `Bearer ${state.token}`, Accept: accept }, cache: 'no-store' });
  } catch (e) {
    notice('export-msg', 'error', explain({ code: 'network' }));
    return;
  }
  if (!res.ok) {
    let err = { code: `http_${res.status}`, message: res.statusText };
    try { err = (await res.json()).error || err; } catch (e) { /* not JSON */ }
    if (res.status === 401) signOut('The admin token was refused: sign in again.');
    notice('export-msg', 'error', explain(err));
    return;
  }
  const blob = await res.blob();
  const text = await blob.text();
  const lines = text.split('\n').filter((l) => l.length > 0).length;
  const orders = kind === 'csv' ? Math.max(0, lines - 1) : lines;
  if (state.exportUrl) URL.revokeObjectURL(state.exportUrl);
  state.exportUrl = URL.createObjectURL(blob);
  const link = $('export-link');
  link.href = state.exportUrl;
  link.download = `${id}-orders.${kind}`;
  link.textContent = `Download ${link.download}`;
  link.hidden = false;
  notice('export-msg', 'ok', `${orders} order(s) exported (${blob.size} bytes).`);
  link.click();
}
$('export-csv').addEventListener('click', () => exportOrders('csv'));
$('export-ndjson').addEventListener('click', () => exportOrders('ndjson'));

// --- audit ------------------------------------------------------------------

async function loadAudit() {
  const id = state.sale;
  let actions;
  try {
    actions = (await admin('GET', `/v1/audit?sale_id=${encodeURIComponent(id)}&limit=50`)).body.actions;
  } catch (e) {
    notice('audit-error', 'error', explain(e));
    return;
  }
  if (id !== state.sale) return;
  notice('audit-error', 'error', '');
  $('audit').tBodies[0].replaceChildren(...actions.map((a) => el('tr', {},
    el('td', { text: new Date(a.at).toLocaleString() }),
    el('td', {}, el('span', { class: 'badge', text: a.action })),
    el('td', { class: 'change' }, ...changes(a.before, a.after).map((c) => el('span', { text: c }))),
    el('td', { class: 'mono' }, el('span', { text: a.request_id || '–' }), el('span', { class: 'sub', text: a.client || '' })))));
}

/** "stock: 10 → 20" for each field that differs. */
function changes(before, after) {
  if (!after || typeof after !== 'object') return [];
  if (!before || typeof before !== 'object') return ['created'];
  const out = [];
  for (const k of Object.keys(after)) {
    const a = JSON.stringify(before[k]);
    const b = JSON.stringify(after[k]);
    if (a === b) continue;
    if (k === 'items') out.push(...itemChanges(before[k], after[k]));
    else out.push(`${k}: ${a ?? '–'} → ${b}`);
  }
  return out.length ? out : ['no change'];
}

/** A sale's items, item by item: "item S stock: 5 → 6", "item XL added: ...". */
function itemChanges(before, after) {
  const bySku = (list) => new Map((Array.isArray(list) ? list : []).map((i) => [i.sku, i]));
  const was = bySku(before);
  const now = bySku(after);
  const cap = (i) => i.per_user_limit ?? '–';
  const out = [];
  for (const [sku, i] of now) {
    const o = was.get(sku);
    if (!o) {
      out.push(`item ${sku} added: stock ${i.stock}, own cap ${cap(i)}`);
      continue;
    }
    if (o.stock !== i.stock) out.push(`item ${sku} stock: ${o.stock} → ${i.stock}`);
    if (cap(o) !== cap(i)) out.push(`item ${sku} own cap: ${cap(o)} → ${cap(i)}`);
  }
  for (const sku of was.keys()) if (!now.has(sku)) out.push(`item ${sku} removed`);
  return out.length ? out : ['items: order changed'];
}
$('refresh-audit').addEventListener('click', loadAudit);

// --- start ------------------------------------------------------------------

async function start() {
  showSignedIn(true);
  await loadSales();
  if (!state.token) return;
  const m = /^#sale=(.+)$/.exec(location.hash);
  if (m) openSale(decodeURIComponent(m[1]));
}

if (state.token) start();
else showSignedIn(false);
