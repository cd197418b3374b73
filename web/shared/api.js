// What both pages share: calls to flashgate's public API, the server's
// clock, the sale's event stream, and words for every error code.
// Plain ES module, no dependencies; the pages load it from /shared/api.js.

/** An answer of the API that was not a success. */
export class ApiError extends Error {
  constructor(status, code, message, details, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
    this.retryAfter = retryAfter;
  }
}

/**
 * One call to the API. Resolves to {status, body, headers} for 2xx and
 * 304; rejects with an ApiError otherwise (status 0, code "network" when
 * the request never got an answer).
 */
export async function call(method, path, { token, body, headers = {} } = {}) {
  const h = { Accept: 'application/json', ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  const init = { method, headers: h, cache: 'no-store' };
  if (body !== undefined) {
    h['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', 'flashgate did not answer (network error)', {});
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (e) {
    json = null;
  }
  if (res.ok || res.status === 304) return { status: res.status, body: json, headers: res.headers };
  const err = (json && json.error) || {};
  const retry = res.headers.get('Retry-After');
  throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText,
    err.details, retry ? Number(retry) : undefined);
}

/** `/v1/sales/<id>` with the id escaped. */
export function salePath(sale, rest = '') {
  return `/v1/sales/${encodeURIComponent(sale)}${rest}`;
}

/**
 * The server's clock: every sale view carries `server_time` (Redis' clock
 * at the read); the offset to the page's clock at receipt is kept, so a
 * countdown runs on the server's time, not on the visitor's.
 */
export class ServerClock {
  constructor() {
    this.offset = null;
  }
  /** Learn from a view (or anything with server_time). */
  see(view) {
    if (view && view.server_time) {
      const t = Date.parse(view.server_time);
      if (!Number.isNaN(t)) this.offset = t - Date.now();
    }
  }
  get known() {
    return this.offset !== null;
  }
  now() {
    return Date.now() + (this.offset || 0);
  }
  /** Milliseconds until an RFC 3339 time, on the server's clock. */
  until(iso) {
    return Date.parse(iso) - this.now();
  }
}

/** "1 h 02 min 05 s", "4.2 s" style durations. */
export function duration(ms) {
  if (ms <= 0) return '0 s';
  const s = Math.ceil(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (h > 0) return `${h} h ${String(m).padStart(2, '0')} min ${String(sec).padStart(2, '0')} s`;
  if (m > 0) return `${m} min ${String(sec).padStart(2, '0')} s`;
  return `${sec} s`;
}

/**
 * Watches a sale's event stream (`GET /v1/sales/{id}/events`): onView(view)
 * for every `sale` event, onStatus("live" | "reconnecting") as the
 * connection comes and goes. EventSource reconnects by itself (and sends
 * Last-Event-ID). Returns a function that stops watching.
 */
export function watchSale(sale, onView, onStatus = () => {}) {
  const es = new EventSource(salePath(sale, '/events'));
  es.addEventListener('sale', (ev) => {
    try {
      onView(JSON.parse(ev.data));
    } catch (e) {
      // A malformed event is skipped; the next one carries the whole view.
    }
  });
  es.addEventListener('open', () => onStatus('live'));
  es.addEventListener('error', () => onStatus(es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting'));
  return () => es.close();
}

/** Words for a buyer, for every error code the API has. */
export function explain(err, view) {
  const d = err.details || {};
  const cap = view ? view.per_user_limit : d.per_user_limit;
  switch (err.code) {
    case 'sold_out':
      if (Array.isArray(d.shortfalls) && d.shortfalls.length) {
        return `Not enough left for your cart, so nothing was held: ${shortfallText(d.shortfalls)}. Held units that are not paid in time come back — try again in a moment.`;
      }
      return 'Sold out: every unit is sold or held right now. Held units that are not paid in time come back — try again in a moment.';
    case 'user_limit_exceeded':
    case 'limit_exceeded': {
      const have = d.held !== undefined ? `: you hold ${d.held} and bought ${d.bought}` : '';
      if (d.sku) return `You have reached the limit of ${d.per_user_limit} per buyer for ${d.sku} (units you hold count too${have}).`;
      return `You have reached this sale's limit${cap ? ` of ${cap} per buyer` : ''} (units you hold count too${have}).`;
    }
    case 'sale_not_started': return 'The sale has not started yet: wait for the countdown.';
    case 'sale_paused': return 'The sale is paused by the shop. Your place is kept; try again when it resumes.';
    case 'sale_ended': return 'The sale has ended.';
    case 'sale_closed': return 'The sale was closed by the shop.';
    case 'not_admitted': return d.position
      ? `Not your turn yet: you are number ${d.position} in the queue, ${d.serving ?? 0} let in so far.`
      : 'This sale lets buyers in through a queue: join the queue first.';
    case 'admission_expired': return 'Your turn in the queue has passed without a purchase.';
    case 'queue_not_open': return 'The queue is not open yet.';
    case 'sale_not_queued': return 'This sale has no queue: just buy.';
    case 'not_in_queue': return 'You are not in the queue.';
    case 'rate_limited': return `Too many requests: wait ${err.retryAfter || 1} s and try again.`;
    case 'hold_limit_reached': return 'This hold cannot be extended any further.';
    case 'reservation_expired': return 'Your hold has expired: its units went back on sale.';
    case 'reservation_cancelled': return 'This hold was cancelled.';
    case 'reservation_confirmed': return 'This purchase is already confirmed.';
    case 'reservation_not_found': return 'This reservation does not exist (any more).';
    case 'idempotency_key_reused': return 'This purchase attempt was already used for something else: press Buy again.';
    case 'sale_not_found': return 'There is no such sale.';
    case 'unauthorized': return 'Your token was refused (missing, expired or not valid here).';
    case 'forbidden': return 'This is not yours.';
    case 'unavailable': return 'flashgate is briefly unavailable: try again (a retry is safe).';
    case 'network': return 'No answer from flashgate: check your connection and try again (a retry is safe).';
    case 'invalid_request': return `The request was refused: ${err.message}`;
    case 'payload_too_large': return 'The request was too large.';
    case 'stock_below_committed':
      if (Array.isArray(d.items) && d.items.length) {
        return `An item's stock cannot go below its units already sold or held (an item left out counts as stock 0): ${d.items.map((i) => `${i.sku} (stock ${i.stock} asked; ${i.sold} sold, ${i.held} held)`).join(', ')}.`;
      }
      return `Stock cannot go below the units already sold or held${d.sold !== undefined ? ` (${d.sold} sold, ${d.held} held)` : ''}.`;
    default: return `${err.message || 'Something went wrong'} (${err.code}).`;
  }
}

/** "M: 2 wanted, 1 left; L: 1 wanted, 0 left" for a 409 sold_out's shortfalls. */
export function shortfallText(shortfalls) {
  return shortfalls.map((s) => `${s.sku}: ${s.requested} wanted, ${s.available} left`).join('; ');
}

/** "M ×1, L ×2" for a cart's lines (`items` of a reservation). */
export function linesText(items) {
  return (items || []).map((l) => `${l.sku} ×${l.quantity}`).join(', ');
}

/** An element with text and optional class, attributes: no innerHTML. */
export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** `#id` or throw: a page whose markup drifted fails loudly. */
export function $(id) {
  const e = document.getElementById(id);
  if (!e) throw new Error(`missing #${id}`);
  return e;
}
