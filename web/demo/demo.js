// The demo shop: a buyer's view of one sale, on flashgate's public API.
// The buyer token arrives in the fragment (#token=...), which browsers never
// send to a server; it is moved to this tab's sessionStorage and the
// fragment is taken off the address bar at once.
import { call, salePath, ServerClock, duration, watchSale, explain, linesText, el, $ } from '/shared/api.js';

const TOKEN_KEY = 'flashgate.buyer_token';
const params = new URLSearchParams(location.search);
const sale = params.get('sale') || 'demo';
const HOLD_KEY = `flashgate.hold.${sale}`; // the hold survives a reload

const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has('token')) {
  sessionStorage.setItem(TOKEN_KEY, fragment.get('token'));
  history.replaceState(null, '', location.pathname + location.search);
}
const token = sessionStorage.getItem(TOKEN_KEY);

const clock = new ServerClock();
const state = {
  view: null,
  hold: null,         // the reservation being held
  pendingKey: null,   // Idempotency-Key of a buy whose answer we do not know
  shortfalls: {},     // sku -> {requested, available} of the last 409 sold_out
  ticket: null,       // queue ticket
  queuePoll: null,
  busy: false,
};

/** The `sub` of the token, read locally (only for the greeting). */
function buyerName(t) {
  try {
    const part = t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4))).sub;
  } catch (e) {
    return null;
  }
}

function say(kind, text) {
  const m = $('message');
  m.className = `notice ${kind}`;
  m.textContent = text;
  m.hidden = !text;
}

function idempotencyKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return `demo-${Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')}`;
}

/** Started by the server's clock, even before an event says so. */
function started(v) {
  return !v.starts_at || clock.until(v.starts_at) <= 0;
}

function phase(v) {
  if (v.closed) return 'closed';
  if (v.state === 'ended' || (v.ends_at && clock.until(v.ends_at) <= 0)) return 'ended';
  if (v.paused) return 'paused';
  if (!started(v)) return 'scheduled';
  if (v.available <= 0) return 'sold_out';
  return 'live';
}

// --- rendering --------------------------------------------------------------

function render() {
  const v = state.view;
  if (!v) return;
  const p = phase(v);
  $('title').textContent = v.product_id || v.sale_id;
  $('subtitle').textContent = `Sale ${v.sale_id} · at most ${v.per_user_limit} per buyer${v.items ? ' in all' : ''} · a hold lasts ${duration(v.hold_ttl_secs * 1000)}`;
  const badge = $('state');
  badge.hidden = false;
  badge.className = `badge ${p}`;
  badge.textContent = { live: 'on sale', scheduled: 'coming soon', sold_out: 'sold out', paused: 'paused', ended: 'ended', closed: 'ended' }[p];

  $('countdown-box').hidden = p !== 'scheduled';
  $('availability').hidden = false;
  $('available').textContent = v.available;
  $('stock').textContent = v.stock;
  $('counts').textContent = `(${v.sold} sold, ${v.held} held)`;
  const pct = (n) => `${v.stock > 0 ? Math.min(100, (n / v.stock) * 100) : 0}%`;
  $('bar-sold').style.width = pct(v.sold);
  $('bar-held').style.width = pct(v.held);

  const queued = v.admission === 'queue';
  $('queue-box').hidden = !queued || p === 'ended' || p === 'closed';
  renderTicket();

  const canBuy = !state.hold && p !== 'ended' && p !== 'closed';
  $('buy-box').hidden = !canBuy;
  $('buy-box').classList.toggle('multi', !!v.items);
  $('items-box').hidden = !v.items || p === 'ended' || p === 'closed';
  if (v.items) renderItems(v, canBuy);
  const cart = v.items ? cartLines() : null;
  const total = cart ? cart.reduce((n, l) => n + l.quantity, 0) : 0;
  $('cart-summary').textContent = cart ? (total ? `${total} in your cart: ${linesText(cart)}` : 'Pick a quantity of at least one item.') : '';
  const q = $('quantity');
  const max = Math.min(v.per_user_limit, 10);
  if (q.options.length !== max) {
    const keep = Number(q.value) || 1;
    q.replaceChildren(...Array.from({ length: max }, (_, i) => el('option', { value: i + 1, text: i + 1 })));
    q.value = String(Math.min(keep, max));
  }
  const turn = !queued || (state.ticket && state.ticket.state === 'admitted');
  $('buy').disabled = !token || state.busy || p !== 'live' || !turn || (cart !== null && total === 0);
  $('buy').textContent = p === 'sold_out' ? 'Sold out' : p === 'paused' ? 'Paused' : p === 'scheduled' ? 'Not yet' : 'Buy';
  tick();
}

/**
 * A sale of several items: a row per item with its units left (live) and a
 * quantity to buy (0 up to the cap that applies, at most 10). Rows are kept
 * in place, so a choice survives the views that keep coming.
 */
function renderItems(v, canBuy) {
  const body = $('items').tBodies[0];
  const skus = v.items.map((i) => i.sku).join(',');
  if (body.dataset.skus !== skus) {
    body.dataset.skus = skus;
    body.replaceChildren(...v.items.map((i) => {
      const q = el('select', { 'aria-label': `Quantity of ${i.sku}`, dataset: { sku: i.sku } });
      q.addEventListener('change', () => {
        delete state.shortfalls[i.sku];
        render();
      });
      return el('tr', { dataset: { sku: i.sku } },
        el('th', { scope: 'row', class: 'sku' }, i.sku, el('span', { class: 'sub cap' })),
        el('td', { class: 'left' }, el('strong', { class: 'n' }), el('span', { class: 'sub short' })),
        el('td', { class: 'bar-col' }, el('span', { class: 'meter', 'aria-hidden': 'true' },
          el('span', { class: 'sold' }), el('span', { class: 'held' }))),
        el('td', {}, q));
    }));
  }
  v.items.forEach((item, n) => {
    const tr = body.rows[n];
    const max = Math.min(item.per_user_limit ?? v.per_user_limit, v.per_user_limit, 10);
    const q = tr.querySelector('select');
    if (q.options.length !== max + 1) {
      const keep = Number(q.value) || 0;
      q.replaceChildren(...Array.from({ length: max + 1 }, (_, k) => el('option', { value: k, text: k })));
      q.value = String(Math.min(keep, max));
    }
    q.disabled = !canBuy || (item.available <= 0 && q.value === '0');
    tr.querySelector('.cap').textContent = item.per_user_limit ? `at most ${item.per_user_limit} per buyer` : '';
    tr.querySelector('.n').textContent = item.available > 0 ? `${item.available} left` : 'sold out';
    tr.classList.toggle('out', item.available <= 0);
    const short = state.shortfalls[item.sku];
    tr.classList.toggle('short', !!short);
    tr.querySelector('.short').textContent = short ? `you asked ${short.requested}: ${short.available} left` : '';
    const pct = (x) => `${item.stock > 0 ? Math.min(100, (x / item.stock) * 100) : 0}%`;
    tr.querySelector('.meter .sold').style.width = pct(item.sold);
    tr.querySelector('.meter .held').style.width = pct(item.held);
  });
}

/** The cart picked on the page: the lines with a quantity, in the sale's order. */
function cartLines() {
  return [...$('items').querySelectorAll('select')]
    .map((q) => ({ sku: q.dataset.sku, quantity: Number(q.value) || 0 }))
    .filter((l) => l.quantity > 0);
}

function renderTicket() {
  const t = state.ticket;
  const join = $('join');
  join.hidden = !!t; // one place per buyer: joining again returns the same ticket
  join.disabled = !token || state.busy;
  const text = $('queue-text');
  if (!t) return;
  text.className = t.state === 'pre_queue' ? 'hint' : `turn ${t.state}`;
  if (t.state === 'pre_queue') text.textContent = 'You are in the queue. Places are drawn at random at the start: joining early gives no advantage, and no disadvantage.';
  else if (t.state === 'waiting') text.textContent = `You are number ${t.position} in the queue: ${t.ahead} ahead of you${t.estimated_wait_secs != null ? `, about ${duration(t.estimated_wait_secs * 1000)} to wait` : ''}.`;
  else if (t.state === 'admitted' && t.admitted_until) text.replaceChildren('It is your turn: buy within ', el('strong', { id: 'turn-left', text: duration(clock.until(t.admitted_until)) }), '.');
  else if (t.state === 'admitted') text.textContent = 'It is your turn: buy now.';
  else if (t.state === 'expired') text.textContent = 'Your turn passed without a purchase.';
}

/** Countdowns, every 200 ms, on the server's clock. */
function tick() {
  const v = state.view;
  if (!v) return;
  if (v.starts_at) {
    const left = clock.until(v.starts_at);
    $('countdown').textContent = duration(left);
    if (left <= 0 && !$('countdown-box').hidden) render();
  }
  const turn = document.getElementById('turn-left');
  if (turn && state.ticket && state.ticket.admitted_until) turn.textContent = duration(clock.until(state.ticket.admitted_until));
  if (state.hold) {
    const left = clock.until(state.hold.expires_at);
    $('hold-countdown').textContent = duration(left);
    if (left <= 0) {
      showHold(null);
      say('warn', 'Your hold has expired: its units went back on sale.');
    }
  }
}
setInterval(tick, 200);

function showHold(r) {
  state.hold = r;
  if (r) sessionStorage.setItem(HOLD_KEY, JSON.stringify({ reservation_id: r.reservation_id }));
  else sessionStorage.removeItem(HOLD_KEY);
  $('hold-box').hidden = !r;
  if (r) $('hold-qty').textContent = r.quantity;
  const lines = (r && r.items) || [];
  $('hold-lines').hidden = !lines.length;
  $('hold-lines').replaceChildren(...lines.map((l) => el('li', {}, el('strong', { text: l.sku }), ` × ${l.quantity}`)));
  render();
}

// --- actions ----------------------------------------------------------------

async function buyer(method, path, opts = {}) {
  state.busy = true;
  render();
  try {
    return await call(method, path, { ...opts, token });
  } finally {
    state.busy = false;
    render();
  }
}

$('buy').addEventListener('click', async () => {
  const items = state.view && state.view.items;
  const body = items ? { items: cartLines() } : { quantity: Number($('quantity').value) || 1 };
  // Until an answer is known, every press resends the same key, even with
  // the cart changed: the API then replays the first cart's hold, or
  // refuses the other cart (422), and never holds a second one.
  state.pendingKey = state.pendingKey || idempotencyKey();
  state.shortfalls = {};
  say('info', 'Reserving…');
  try {
    const res = await buyer('POST', salePath(sale, '/reservations'), {
      body, headers: { 'Idempotency-Key': state.pendingKey },
    });
    state.pendingKey = null;
    for (const q of $('items').querySelectorAll('select')) q.value = '0'; // the cart is held: a next one starts empty
    say('ok', `Reserved ${res.body.quantity}${res.body.items ? ` (${linesText(res.body.items)})` : ''}: pay before the hold runs out.`);
    showHold(res.body);
  } catch (e) {
    // No answer, or 503: the same key on the next press can never take a
    // second unit. Any other answer is final: a new press is a new attempt.
    if (!(e.status === 0 || e.status === 503)) state.pendingKey = null;
    if (e.code === 'rate_limited' || e.code === 'not_admitted') refreshTicket();
    if (e.code === 'sold_out' && Array.isArray(e.details.shortfalls)) {
      for (const f of e.details.shortfalls) state.shortfalls[f.sku] = f;
      render();
    }
    say('error', explain(e, state.view));
  }
});

async function settle(action) {
  const r = state.hold;
  if (!r) return;
  try {
    const res = await buyer('POST', salePath(sale, `/reservations/${r.reservation_id}/${action}`));
    showHold(null);
    say('ok', action === 'confirm'
      ? `Bought ${res.body.quantity}${res.body.items ? ` (${linesText(res.body.items)})` : ''}! Order ${res.body.reservation_id} is confirmed.`
      : 'Cancelled: the units went back on sale.');
  } catch (e) {
    if (['reservation_expired', 'reservation_cancelled', 'reservation_confirmed', 'reservation_not_found'].includes(e.code)) showHold(null);
    say('error', explain(e, state.view));
  }
}
$('confirm').addEventListener('click', () => settle('confirm'));
$('cancel').addEventListener('click', () => settle('cancel'));

$('join').addEventListener('click', async () => {
  try {
    const res = await buyer('POST', salePath(sale, '/queue'));
    state.ticket = res.body;
    say('ok', 'You joined the queue.');
    followQueue();
  } catch (e) {
    say('error', explain(e, state.view));
  }
  render();
});

async function refreshTicket() {
  if (!token || !state.view || state.view.admission !== 'queue') return;
  try {
    const was = state.ticket && state.ticket.state;
    state.ticket = (await call('GET', salePath(sale, '/queue/me'), { token })).body;
    if (state.ticket.state === 'admitted' && was !== 'admitted') say('ok', 'Your turn has come: you can buy now.');
  } catch (e) {
    if (e.code === 'not_in_queue') state.ticket = null;
  }
  render();
}

/** The ticket moves by the clock: read it every 2 s while waiting. */
function followQueue() {
  if (state.queuePoll) return;
  state.queuePoll = setInterval(() => {
    const s = state.ticket && state.ticket.state;
    if (s === 'pre_queue' || s === 'waiting' || s === 'admitted') refreshTicket();
  }, 2000);
}

/** A hold made before a reload: shown again while the API says it is held. */
async function resumeHold() {
  let saved;
  try {
    saved = JSON.parse(sessionStorage.getItem(HOLD_KEY) || 'null');
  } catch (e) {
    saved = null;
  }
  if (!saved || !token || !/^[0-9a-f-]{36}$/.test(saved.reservation_id)) return;
  try {
    const r = (await call('GET', salePath(sale, `/reservations/${saved.reservation_id}`), { token })).body;
    if (r.status === 'held') showHold(r);
    else sessionStorage.removeItem(HOLD_KEY);
  } catch (e) {
    if (e.status === 403 || e.status === 404) sessionStorage.removeItem(HOLD_KEY);
  }
}

// --- start ------------------------------------------------------------------

async function start() {
  if (token) {
    const who = buyerName(token);
    $('who').textContent = who ? `buying as ${who}` : 'buyer token set';
  } else {
    say('warn', 'No buyer token: open the demo link that scripts/up printed (it carries #token=...).');
  }
  try {
    const res = await call('GET', salePath(sale));
    clock.see(res.body);
    state.view = res.body;
  } catch (e) {
    $('title').textContent = sale;
    say('error', explain(e));
    if (e.code === 'sale_not_found') return;
  }
  render();
  await resumeHold();
  if (state.view && state.view.admission === 'queue') {
    await refreshTicket();
    if (state.ticket) followQueue();
  }
  watchSale(sale, (v) => {
    clock.see(v);
    if (state.view && v.version < state.view.version) return;
    const queueWas = state.view && state.view.admission;
    state.view = v;
    if (v.admission === 'queue' && queueWas !== 'queue') refreshTicket();
    render();
  }, (s) => {
    $('stream').textContent = s === 'live' ? 'Live: this page updates by itself.' : 'Reconnecting to live updates…';
  });
}

start();
