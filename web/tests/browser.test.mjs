// Browser tests of /admin/ (the console) and /demo/ (the buyer page):
// Debian's Chromium driven by playwright-core, like a person would, against
// a flashgate instance of their own (scripts/browser starts it: a free
// port, a fresh database, a key prefix of its own).
//
// Environment (set by scripts/browser): FLASHGATE_URL, FLASHGATE_ADMIN_TOKEN,
// FLASHGATE_DATABASE_URL, FLASHGATE_BIN (mints buyer tokens), LOADTEST_BIN,
// CHROMIUM (default /usr/bin/chromium), BROWSER_OUT (screenshots; a failed
// test leaves FAILED-<test>.png there).
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

const URL = need('FLASHGATE_URL');
const ADMIN = need('FLASHGATE_ADMIN_TOKEN');
const DB = need('FLASHGATE_DATABASE_URL');
const BIN = need('FLASHGATE_BIN');
const LOADTEST = need('LOADTEST_BIN');
const OUT = process.env.BROWSER_OUT || 'target/browser';
const RUN = randomBytes(3).toString('hex');
const TIMEOUT = 15_000;

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/browser)`);
  return v;
}

const buyerToken = (sub) => execFileSync(BIN, ['token', '--sub', sub, '--ttl-secs', '600'], { encoding: 'utf8' }).trim();
const psql = (sql) => execFileSync('psql', [DB, '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql], { encoding: 'utf8' })
  .split('\n').filter(Boolean);

async function api(method, path, { token = ADMIN, body, headers = {} } = {}) {
  const res = await fetch(URL + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** Waits until fn() is truthy (a condition on the server, not a sleep). */
async function until(what, fn, ms = TIMEOUT) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// --- the runner: tests in order, sharing the console's page -------------------

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1360, height: 1000 }, acceptDownloads: true });
context.setDefaultTimeout(TIMEOUT);
const problems = [];
context.on('page', watchPage);
mkdirSync(OUT, { recursive: true });

/** Script errors and CSP refusals fail the run: the pages must run clean. */
function watchPage(page) {
  page.on('pageerror', (e) => problems.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of (4\d\d)/.test(m.text())) {
      problems.push(`${page.url()}: console error: ${m.text()}`);
    }
  });
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
let current = null; // the page to photograph when a test fails
let consolePage = null;

const SALE = `web-${RUN}`;
const STOCK = 30;
let burstHeld = 0;
let confirmed = [];

test('the console signs in with the admin token, kept in sessionStorage only', async () => {
  const page = await context.newPage();
  current = page;
  consolePage = page;
  const res = await page.goto(`${URL}/admin`);
  assert.equal(new globalThis.URL(page.url()).pathname, '/admin/');
  assert.match(res.headers()['content-security-policy'], /script-src 'self'/);
  await page.getByLabel('Admin token').fill('not-the-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('This token was refused.').waitFor();
  await page.getByLabel('Admin token').fill(ADMIN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Sales' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('flashgate.admin_token')), ADMIN);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.deepEqual(await context.cookies(), []);
  assert.ok(!page.url().includes(ADMIN));
});

test('a sale is created in the form, after the API\'s field error shows beside its field', async () => {
  const page = current;
  await page.getByRole('button', { name: 'New sale' }).click();
  await page.getByLabel('Sale id').fill(SALE);
  await page.getByLabel('Stock').fill('-1');
  await page.getByLabel('Per-buyer limit').fill('2');
  await page.getByLabel('Hold time (s)').fill('600');
  await page.getByRole('button', { name: 'Save sale' }).click();
  const err = page.locator('#e-stock');
  await err.getByText('must be between 0 and').waitFor();
  assert.equal(await page.getByLabel('Stock').getAttribute('aria-invalid'), 'true');
  await page.screenshot({ path: `${OUT}/console-form.png` });
  assert.equal((await api('GET', `/v1/sales/${SALE}`)).status, 404, 'nothing was created');
  await page.getByLabel('Stock').fill(String(STOCK));
  await page.getByRole('button', { name: 'Save sale' }).click();
  await page.getByRole('heading', { name: SALE, level: 1 }).waitFor();
  await page.getByText(`Sale ${SALE} created.`).waitFor();
  await page.locator('#d-available').getByText(String(STOCK), { exact: true }).waitFor();
  await page.locator('#d-stream').getByText('live').waitFor();
  const view = (await api('GET', `/v1/sales/${SALE}`)).body;
  assert.deepEqual([view.stock, view.per_user_limit, view.hold_ttl_secs], [STOCK, 2, 600]);
});

test('a loadtest burst moves the live numbers; confirms move sold', async () => {
  const page = current;
  const report = JSON.parse(execFileSync(LOADTEST, ['--json', '--sale', SALE, 'burst', '--buyers', '100', '--per-user-limit', '2'],
    { encoding: 'utf8', env: process.env }));
  assert.ok(report.ok, JSON.stringify(report.checks));
  burstHeld = report.params.sale_after.held;
  assert.ok(burstHeld > 0);
  // The event stream brings the burst's numbers to the page by itself.
  await page.locator('#d-held').getByText(String(burstHeld), { exact: true }).waitFor();
  await page.locator('#d-available').getByText(String(STOCK - burstHeld), { exact: true }).waitFor();
  // Five holds paid (the shop's payment service confirms with the admin token).
  const held = (await api('GET', `/v1/sales/${SALE}/reservations?status=held&limit=5`)).body.reservations;
  for (const r of held) {
    const c = await api('POST', `/v1/sales/${SALE}/reservations/${r.reservation_id}/confirm`);
    assert.equal(c.status, 200, JSON.stringify(c.body));
    confirmed.push(r.reservation_id);
  }
  await page.locator('#d-sold').getByText(String(confirmed.length), { exact: true }).waitFor();
  await page.locator('#d-held').getByText(String(burstHeld - confirmed.length), { exact: true }).waitFor();
  // Outcomes per second (from /metrics) and the write-behind lag (from /readyz).
  await page.locator('#rates .label', { hasText: /^held$/ }).waitFor();
  await until('the write-behind lag', async () => /^\d+$/.test(await page.locator('#d-lag').textContent()));
});

test('holds are listed a page at a time and released from the console', async () => {
  const page = current;
  await page.getByRole('button', { name: 'Refresh reservations' }).click();
  await until('the first page again', async () => (await page.locator('#holds tbody tr').count()) === 10);
  const rows = page.locator('#holds tbody tr');
  const holding = burstHeld - confirmed.length;
  assert.ok(holding > 20, `${holding} holds: enough for three pages`);
  await until('a page of 10 holds', async () => (await rows.count()) === 10);
  for (const shown of [20, holding]) {
    await page.getByRole('button', { name: 'More' }).click();
    await until(`${shown} holds`, async () => (await rows.count()) === shown);
  }
  await page.getByRole('button', { name: 'More' }).waitFor({ state: 'hidden' });
  const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.reservation));
  assert.equal(new Set(ids).size, holding, 'no hold listed twice');
  const first = await rows.first().getAttribute('data-reservation');
  await page.getByRole('button', { name: `Release ${first}` }).click();
  await page.getByText(/^Released 1 unit\(s\) held by/).waitFor();
  const r = await api('GET', `/v1/sales/${SALE}/reservations/${first}`);
  assert.equal(r.body.status, 'cancelled');
  await page.locator('#d-held').getByText(String(burstHeld - confirmed.length - 1), { exact: true }).waitFor();
});

test('a pause from the console refuses buyers (409 sale_paused) until resumed', async () => {
  const page = current;
  await page.getByRole('button', { name: 'Pause' }).click();
  await page.locator('#d-paused').waitFor();
  const buyer = buyerToken(`paused-${RUN}`);
  const refused = await api('POST', `/v1/sales/${SALE}/reservations`, { token: buyer, body: { quantity: 1 } });
  assert.equal(refused.status, 409);
  assert.equal(refused.body.error.code, 'sale_paused');
  // The buyer page says so too.
  const demo = await context.newPage();
  await demo.goto(`${URL}/demo/?sale=${SALE}#token=${buyer}`);
  await demo.locator('#state').getByText('paused').waitFor();
  assert.equal(await demo.getByRole('button', { name: 'Paused' }).isDisabled(), true);
  await page.getByRole('button', { name: 'Resume' }).click();
  await page.locator('#d-paused').waitFor({ state: 'hidden' });
  await demo.locator('#state').getByText('on sale').waitFor();
  const after = await api('POST', `/v1/sales/${SALE}/reservations`, { token: buyer, body: { quantity: 1 } });
  assert.equal(after.status, 201, JSON.stringify(after.body));
  await demo.close();
  // The audit shows what the admin did, newest first.
  await page.getByRole('button', { name: 'Refresh audit' }).click();
  const cells = page.locator('#audit tbody tr td:nth-child(2)');
  await until('the resume in the audit', async () => (await cells.allTextContents())[0] === 'resume');
  assert.deepEqual((await cells.allTextContents()).slice(0, 4), ['resume', 'pause', 'cancel', 'configure']);
});

test('the order export (CSV and NDJSON) holds exactly the orders in Postgres', async () => {
  const page = current;
  const inPg = psql(`select reservation_id from orders where sale_id = '${SALE}' order by reservation_id`);
  assert.deepEqual([...confirmed].sort(), inPg);
  const [csv] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export CSV' }).click()]);
  assert.equal(csv.suggestedFilename(), `${SALE}-orders.csv`);
  const lines = readFileSync(await csv.path(), 'utf8').trim().split('\n');
  assert.equal(lines[0], 'reservation_id,sale_id,user_id,quantity,confirmed_at');
  assert.deepEqual(lines.slice(1).map((l) => l.split(',')[0]).sort(), inPg);
  await page.getByText(`${inPg.length} order(s) exported`).waitFor();
  await page.getByRole('button', { name: 'Refresh reservations' }).click();
  await until('the first page again', async () => (await page.locator('#holds tbody tr').count()) === 10);
  const [nd] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export NDJSON' }).click()]);
  const rows = readFileSync(await nd.path(), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(rows.map((o) => o.reservation_id).sort(), inPg);
  const users = psql(`select user_id || ':' || quantity from orders where sale_id = '${SALE}' order by 1`);
  assert.deepEqual(rows.map((o) => `${o.user_id}:${o.quantity}`).sort(), users);
  await page.screenshot({ path: `${OUT}/console.png`, fullPage: true });
});

test('on the demo page a buyer waits out the countdown, buys and confirms', async () => {
  const sale = `demo-${RUN}`;
  const startsAt = new Date(Date.now() + 6000).toISOString();
  const put = await api('PUT', `/v1/sales/${sale}`,
    { body: { stock: 5, per_user_limit: 2, hold_ttl_secs: 120, starts_at: startsAt, product_id: 'Limited sneaker drop' } });
  assert.equal(put.status, 201, JSON.stringify(put.body));
  const user = `buyer-${RUN}`;
  const page = await context.newPage();
  current = page;
  await page.setViewportSize({ width: 900, height: 900 });
  await page.goto(`${URL}/demo/?sale=${sale}#token=${buyerToken(user)}`);
  // The token leaves the address bar at once, and lives in sessionStorage.
  assert.equal(new globalThis.URL(page.url()).hash, '');
  assert.ok(await page.evaluate(() => sessionStorage.getItem('flashgate.buyer_token')));
  await page.getByText(`buying as ${user}`).waitFor();
  await page.getByRole('heading', { name: 'Limited sneaker drop' }).waitFor();
  const countdown = page.getByRole('timer').first();
  await countdown.waitFor();
  assert.match(await countdown.textContent(), /^\d s$/);
  assert.equal(await page.locator('#buy').isDisabled(), true);
  await page.screenshot({ path: `${OUT}/demo-countdown.png` });
  // The countdown runs out (on the server's clock); Buy opens by itself.
  await page.getByRole('button', { name: 'Buy' }).and(page.locator(':enabled')).waitFor({ timeout: 20_000 });
  await page.getByLabel('Quantity').selectOption('2');
  await page.getByRole('button', { name: 'Buy' }).click();
  await page.getByRole('heading', { name: 'Your hold' }).waitFor();
  assert.match(await page.locator('#hold-countdown').textContent(), /min|s$/);
  await page.locator('#available').getByText('3', { exact: true }).waitFor();
  await page.screenshot({ path: `${OUT}/demo-one-item.png` });
  // A reload keeps the hold (and the token): the buyer can still pay.
  await page.reload();
  await page.getByRole('heading', { name: 'Your hold' }).waitFor();
  await page.getByText(`buying as ${user}`).waitFor();
  await page.getByRole('button', { name: 'Pay and confirm' }).click();
  const done = await page.getByText(/^Bought 2! Order .* is confirmed\.$/).textContent();
  const rid = /Order (\S+) is confirmed/.exec(done)[1];
  assert.deepEqual(psql(`select reservation_id || ' ' || user_id || ' ' || quantity from orders where sale_id = '${sale}'`),
    [`${rid} ${user} 2`]);
  // Over the cap now: the page explains it.
  await page.getByRole('button', { name: 'Buy' }).click();
  await page.getByText(/reached this sale's limit of 2 per buyer/).waitFor();
});

test('a sale of three sizes: made in the console form, a buyer buys a 2-line cart, the console counts per item, order_items holds the lines', async () => {
  const sale = `items-${RUN}`;
  const page = consolePage;
  current = page;
  await page.bringToFront();
  await page.getByRole('button', { name: 'New sale' }).click();
  await page.getByLabel('Sale id').fill(sale);
  await page.getByLabel('Sells').selectOption('items');
  await page.getByLabel('Per-buyer limit').fill('2');
  await page.getByLabel('Hold time (s)').fill('600');
  await page.getByLabel('Product id').fill('Sneaker in three sizes');
  const rows = [['S', '5', ''], ['M', '3', '1'], ['M', '1', '']]; // a sku given twice: the API names items[2].sku
  for (const [n, [sku, stock, cap]] of rows.entries()) {
    await page.getByLabel(`Item ${n + 1} sku`, { exact: true }).fill(sku);
    await page.getByLabel(`Item ${n + 1} units`, { exact: true }).fill(stock);
    await page.getByLabel(`Item ${n + 1} own cap`, { exact: true }).fill(cap);
  }
  await page.getByRole('button', { name: 'Save sale' }).click();
  const third = page.locator('#f-items tbody tr').nth(2);
  await third.locator('.field-error[data-part="sku"]').getByText('M is given twice').waitFor();
  assert.equal(await page.getByLabel('Item 3 sku', { exact: true }).getAttribute('aria-invalid'), 'true');
  assert.equal((await api('GET', `/v1/sales/${sale}`)).status, 404, 'nothing was created');
  await page.getByLabel('Item 3 sku', { exact: true }).fill('L');
  await page.getByRole('button', { name: 'Save sale' }).click();
  await page.getByRole('heading', { name: sale, level: 1 }).waitFor();
  await page.getByText(`Sale ${sale} created.`).waitFor();
  const item = (sku, k) => page.locator(`#d-items tr[data-sku="${sku}"] td[data-k="${k}"]`);
  await item('L', 'available').getByText('1', { exact: true }).waitFor();
  assert.deepEqual(await page.locator('#d-items tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.sku)), ['S', 'M', 'L']);
  assert.equal(await item('M', 'cap').textContent(), '1');
  assert.equal(await item('S', 'cap').textContent(), '–');
  const view = (await api('GET', `/v1/sales/${sale}`)).body;
  assert.deepEqual(view.items.map((i) => [i.sku, i.stock, i.per_user_limit ?? null]), [['S', 5, null], ['M', 3, 1], ['L', 1, null]]);

  // The buyer: a size picker, live units per size.
  const user = `sizes-${RUN}`;
  const demo = await context.newPage();
  current = demo;
  await demo.setViewportSize({ width: 900, height: 900 });
  await demo.goto(`${URL}/demo/?sale=${sale}#token=${buyerToken(user)}`);
  await demo.getByRole('heading', { name: 'Sneaker in three sizes' }).waitFor();
  await demo.locator('#items tr[data-sku="L"] .n').getByText('1 left').waitFor();
  assert.equal(await demo.locator('#quantity').isHidden(), true);
  assert.equal(await demo.getByRole('button', { name: 'Buy' }).isDisabled(), true, 'an empty cart cannot be bought');
  // Two of L, of which one is left: a 409 sold_out naming L, nothing held.
  await demo.getByLabel('Quantity of L').selectOption('2');
  await demo.getByRole('button', { name: 'Buy' }).click();
  await demo.getByText('Not enough left for your cart, so nothing was held: L: 2 wanted, 1 left').waitFor();
  await demo.locator('#items tr[data-sku="L"] .short').getByText('you asked 2: 1 left').waitFor();
  await demo.screenshot({ path: `${OUT}/demo-shortfall.png` });
  assert.equal((await api('GET', `/v1/sales/${sale}`)).body.held, 0);
  // M's own cap is 1: its select offers no more.
  assert.deepEqual(await demo.getByLabel('Quantity of M').locator('option').allTextContents(), ['0', '1']);
  await demo.getByLabel('Quantity of L').selectOption('1');
  await demo.getByLabel('Quantity of M').selectOption('1');
  await demo.getByText('2 in your cart: M ×1, L ×1').waitFor();
  await demo.getByRole('button', { name: 'Buy' }).click();
  await demo.getByRole('heading', { name: 'Your hold' }).waitFor();
  assert.deepEqual(await demo.locator('#hold-lines li').allTextContents(), ['L × 1', 'M × 1']);
  await demo.locator('#items tr[data-sku="L"] .n').getByText('sold out').waitFor();
  await item('L', 'held').getByText('1', { exact: true }).waitFor();
  await item('M', 'held').getByText('1', { exact: true }).waitFor();
  await demo.waitForFunction(() => document.getAnimations().length === 0); // the meters' widths settle
  await demo.screenshot({ path: `${OUT}/demo.png` });
  // The console lists the hold with its lines.
  await page.getByRole('button', { name: 'Refresh reservations' }).click();
  await page.locator('#holds tbody tr .lines').getByText('L ×1, M ×1').waitFor();
  await page.screenshot({ path: `${OUT}/console-items.png`, fullPage: true });
  await demo.getByRole('button', { name: 'Pay and confirm' }).click();
  const done = await demo.getByText(/^Bought 2 \(L ×1, M ×1\)! Order .* is confirmed\.$/).textContent();
  const rid = /Order (\S+) is confirmed/.exec(done)[1];
  // Over the sale's cap across sizes now: the page says so.
  await demo.getByLabel('Quantity of S').selectOption('1');
  await demo.getByRole('button', { name: 'Buy' }).click();
  await demo.getByText("You have reached this sale's limit of 2 per buyer (units you hold count too: you hold 0 and bought 2).").waitFor();
  await demo.close();

  // The console's table counts per item, from the event stream.
  current = page;
  for (const [sku, sold, held, available] of [['S', 0, 0, 5], ['M', 1, 0, 2], ['L', 1, 0, 0]]) {
    await item(sku, 'sold').getByText(String(sold), { exact: true }).waitFor();
    await item(sku, 'held').getByText(String(held), { exact: true }).waitFor();
    await item(sku, 'available').getByText(String(available), { exact: true }).waitFor();
  }
  await page.locator('#d-sold').getByText('2', { exact: true }).waitFor();
  await page.getByLabel('Show').selectOption('confirmed');
  await page.locator(`#holds tbody tr[data-reservation="${rid}"] .lines`).getByText('L ×1, M ×1').waitFor();
  // Postgres holds the order's lines.
  assert.deepEqual(psql(`select sku || ':' || quantity from order_items where reservation_id = '${rid}' order by sku`), ['L:1', 'M:1']);
  assert.deepEqual(psql(`select user_id || ' ' || quantity from orders where sale_id = '${sale}'`), [`${user} 2`]);
  // An edit may not take an item below its units sold: the 409 names it beside the item.
  await page.getByRole('button', { name: 'Edit' }).click();
  await page.getByLabel('Item 2 units', { exact: true }).fill('0');
  await page.getByRole('button', { name: 'Save sale' }).click();
  await page.locator('#e-items').getByText('M (stock 0 asked; 1 sold, 0 held)').waitFor();
  await page.locator('#f-items tbody tr').nth(1).locator('.field-error[data-part="stock"]').getByText('at least 1 (1 sold, 0 held)').waitFor();
  await page.screenshot({ path: `${OUT}/console-items-form.png` });
  assert.equal((await api('GET', `/v1/sales/${sale}`)).body.items[1].stock, 3, 'nothing changed');
  // A restock goes through, and the audit says what changed, item by item.
  await page.getByLabel('Item 2 units', { exact: true }).fill('3');
  await page.getByLabel('Item 1 units', { exact: true }).fill('6');
  await page.getByRole('button', { name: 'Save sale' }).click();
  await page.getByText(`Sale ${sale} updated.`).waitFor();
  await item('S', 'available').getByText('6', { exact: true }).waitFor();
  await page.locator('#audit tbody tr').first().locator('td.change').getByText('item S stock: 5 → 6', { exact: true }).waitFor();
  assert.deepEqual((await api('GET', `/v1/sales/${sale}`)).body.items.map((i) => i.stock), [6, 3, 1]);
  await page.getByLabel('Show').selectOption('held');
});

test('a queued sale: the buyer joins before the start, is let in, buys; the console shows the queue and closes the sale', async () => {
  const sale = `queue-${RUN}`;
  const startsAt = new Date(Date.now() + 4000).toISOString();
  const put = await api('PUT', `/v1/sales/${sale}`, {
    body: { stock: 3, per_user_limit: 1, starts_at: startsAt, admission: 'queue', admit_per_sec: 10 },
  });
  assert.equal(put.status, 201, JSON.stringify(put.body));
  const user = `queuer-${RUN}`;
  const page = await context.newPage();
  current = page;
  await page.setViewportSize({ width: 900, height: 900 });
  await page.goto(`${URL}/demo/?sale=${sale}#token=${buyerToken(user)}`);
  await page.getByRole('button', { name: 'Join the queue' }).click();
  await page.getByText(/^You are in the queue\. Places are drawn at random at the start/).waitFor();
  assert.equal(await page.locator('#buy').isDisabled(), true);
  await page.screenshot({ path: `${OUT}/demo-prequeue.png` });
  // The console watches the same sale: one buyer in the queue.
  await consolePage.getByRole('button', { name: 'Refresh sales' }).click();
  await consolePage.getByRole('button', { name: sale, exact: true }).click();
  await consolePage.getByRole('heading', { name: sale, level: 1 }).waitFor();
  await consolePage.locator('#d-queue-value').getByText('1 / 0', { exact: true }).waitFor();
  // At the start the buyer's place comes up: Buy opens.
  await page.getByText(/^It is your turn: buy within \d+ (min|s)/).waitFor({ timeout: 20_000 });
  await page.screenshot({ path: `${OUT}/demo-queue.png` });
  await page.getByRole('button', { name: 'Buy' }).and(page.locator(':enabled')).waitFor();
  await page.getByRole('button', { name: 'Buy' }).click();
  await page.getByRole('button', { name: 'Pay and confirm' }).click();
  await page.getByText(/^Bought 1! Order .* is confirmed\.$/).waitFor();
  assert.deepEqual(psql(`select user_id from orders where sale_id = '${sale}'`), [user]);
  await consolePage.locator('#d-sold').getByText('1', { exact: true }).waitFor();
  assert.match(await consolePage.locator('#d-queue-value').textContent(), /^1 \/ [1-9]\d*$/);
  // Closing asks twice, ends the sale for good, and the buyer page shows it.
  await consolePage.getByRole('button', { name: 'Close sale…' }).click();
  await consolePage.getByRole('button', { name: 'Yes, end this sale for good' }).click();
  await consolePage.locator('#d-closed').waitFor();
  assert.equal(await consolePage.getByRole('button', { name: 'Pause' }).isDisabled(), true);
  await page.locator('#state').getByText('ended', { exact: true }).waitFor();
  assert.equal(await page.locator('#buy-box').isHidden(), true);
  const late = await api('POST', `/v1/sales/${sale}/reservations`, { token: buyerToken(`late-${RUN}`), body: { quantity: 1 } });
  assert.equal(late.body.error.code, 'sale_ended');
});

let failed = 0;
for (const t of tests) {
  const started = Date.now();
  try {
    await t.fn();
    console.log(`ok   ${t.name} (${Date.now() - started} ms)`);
  } catch (e) {
    failed += 1;
    const shot = `${OUT}/FAILED-${t.name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}.png`;
    if (current) await current.screenshot({ path: shot, fullPage: true }).catch(() => {});
    console.log(`FAIL ${t.name}\n${e.stack}\n(screenshot: ${shot})`);
    break; // the tests build on each other
  }
}
if (problems.length) {
  failed += 1;
  console.log(`FAIL the pages logged errors:\n  ${problems.join('\n  ')}`);
}
await browser.close();
console.log(failed ? `${failed} failed` : `all ${tests.length} browser tests passed`);
process.exit(failed ? 1 : 0);
