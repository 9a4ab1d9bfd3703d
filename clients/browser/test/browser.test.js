// End to end: the real local server serves the page, Debian's Chromium runs
// it headless (driven by playwright-core), and the test plays admin over
// HTTP. Screenshots go to target/browser-artifacts/ (or
// $PIGEONHOLE_ARTIFACTS_DIR).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium } from 'playwright-core';
import { artifacts, chromiumArgs, chromiumPath, startServer } from './server.js';

const ADMIN_TOKEN = 'browser-test-admin-token';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// The page waits at least what Retry-After asks, jittered up by as much as
// 10 % (pigeonhole.js `jittered`), and shows it to a tenth of a second.
function assertRetryAfterWait(shown, retryAfter) {
  const match = /^(\d+\.\d) s$/.exec(shown);
  assert.ok(match, `the next wait is shown in seconds (got ${JSON.stringify(shown)})`);
  const wait = Number(match[1]);
  assert.ok(
    wait >= retryAfter && wait <= retryAfter * 1.1 + 0.05,
    `Retry-After ${retryAfter} s is honoured: waits ${wait} s`,
  );
}

describe('browser client against the local server', () => {
  let server;
  let browser;
  let context;
  let page;
  let creds;
  const pageErrors = [];
  const cspViolations = [];

  const api = (path, init = {}) => fetch(`${server.url}/api/v1${path}`, init);
  const publish = async (type, payload) => {
    const response = await api('/messages/publish', {
      method: 'POST',
      headers: { 'X-Admin-Token': ADMIN_TOKEN, 'Content-Type': 'application/json' },
      body: JSON.stringify({ to_client_ids: [creds.client_id], type, payload }),
    });
    assert.equal(response.status, 202, await response.text());
  };
  const noHorizontalScroll = async () => {
    await page.setViewportSize({ width: 375, height: 740 });
    const scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(scrollWidth <= 375, `no horizontal scroll at 375 px (scrollWidth ${scrollWidth})`);
  };
  const shot = async (name, options = {}) => {
    const path = join(artifacts, name);
    await page.screenshot({ path, fullPage: true, ...options });
    return path;
  };

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    server = await startServer({ adminToken: ADMIN_TOKEN, operatorToken: 'browser-test-operator-token' });
    browser = await chromium.launch({ executablePath: chromiumPath, args: chromiumArgs });
    context = await browser.newContext({ viewport: { width: 1100, height: 900 }, colorScheme: 'light' });
    page = await context.newPage();
    page.setDefaultTimeout(10000);
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    page.on('console', (message) => {
      if (/Content[- ]Security[- ]Policy/i.test(message.text())) cspViolations.push(message.text());
    });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await server?.stop();
    console.log(`# screenshots: ${artifacts}`);
  });

  it('serves the page with a strict Content-Security-Policy', async () => {
    const response = await page.goto(`${server.url}/?interval=0.2`);
    assert.equal(response.status(), 200);
    const headers = response.headers();
    assert.match(headers['content-type'], /^text\/html/);
    assert.equal(headers['cache-control'], 'no-cache');
    assert.match(headers['content-security-policy'], /script-src 'self'/);
    assert.doesNotMatch(headers['content-security-policy'], /unsafe-inline/);
    await page.waitForSelector('html[data-ready="true"]');
    assert.equal(await page.inputValue('#base-url'), `${server.url}/api/v1`);
    assert.equal(await page.textContent('#conn-state'), 'Not connected');
    for (const path of ['/client.js', '/pigeonhole.js', '/client.css']) {
      const file = await fetch(server.url + path);
      assert.equal(file.status, 200, path);
      assert.equal(file.headers.get('cache-control'), 'no-cache');
    }
    assert.equal((await fetch(`${server.url}/api/v1/health`)).status, 200, 'the API still answers');

    await noHorizontalScroll();
    await shot('first-visit-phone.png');
    await page.setViewportSize({ width: 1100, height: 900 });
  });

  it('registers through the form', async () => {
    const fingerprint = await page.inputValue('#reg-fingerprint');
    assert.ok(fingerprint.length >= 40, 'a random default fingerprint');
    assert.equal(
      await page.evaluate(() => localStorage.getItem('pigeonhole.fingerprint')),
      fingerprint,
      'the fingerprint is kept in localStorage',
    );
    await page.fill('#reg-name', 'browser test');
    await page.click('#register-submit');
    await page.waitForFunction(() => /^[0-9a-f-]{36}$/.test(document.getElementById('client-id').textContent));
    creds = await page.evaluate(() => JSON.parse(localStorage.getItem('pigeonhole.credentials')));
    assert.match(creds.client_id, UUID);
    assert.equal(await page.textContent('#client-id'), creds.client_id);
    assert.match(creds.api_token, /^pht_/);
    assert.equal(Buffer.from(creds.personal_token, 'base64').length, 32);
    await page.waitForSelector('#conn-state[data-state="ok"]');
  });

  it('shows a published message decrypted, then acknowledges it', async () => {
    const started = Date.now();
    await publish('greeting', { text: 'hello from the test', note: 'café ✓', n: 42 });
    const card = page.locator('.message[data-id="1"]');
    await card.waitFor({ timeout: 5000 });
    console.log(`# shown ${Date.now() - started} ms after the publish`);
    assert.equal(await card.locator('.message-type').textContent(), 'greeting');
    assert.equal(await card.locator('.message-id').textContent(), '#1');
    const payload = JSON.parse(await card.locator('.message-payload').textContent());
    assert.deepEqual(payload, { text: 'hello from the test', note: 'café ✓', n: 42 });
    assert.match(await card.locator('.message-payload').textContent(), /\n {2}"text"/, 'pretty-printed');

    await page.waitForSelector('#acked-cursor[data-cursor="1"]');
    const poll = await api('/messages/poll', {
      headers: { Authorization: `Bearer ${creds.api_token}`, 'X-Client-Id': creds.client_id },
    });
    assert.equal(poll.status, 204, 'the server cursor moved past the message');
  });

  it('lists messages newest first and shows the interval and countdown', async () => {
    await publish('status', { battery: 87 });
    await publish('status', { battery: 86, list: [1, 2, 3] });
    await page.waitForSelector('.message[data-id="3"]', { timeout: 5000 });
    await page.waitForSelector('.message[data-id="2"]');
    const ids = await page.$$eval('.message', (items) => items.map((item) => item.dataset.id));
    assert.deepEqual(ids, ['3', '2', '1']);
    await page.waitForSelector('#acked-cursor[data-cursor="3"]');
    await page.waitForFunction(() => /^in \d/.test(document.getElementById('countdown').textContent));
    assert.match(await page.textContent('#interval'), /^\d+(\.\d)? s$/);
  });

  it('rotates the credentials, and a message not yet acknowledged still decrypts', async () => {
    const old = creds;
    const oldFingerprint = await page.evaluate(() => localStorage.getItem('pigeonhole.fingerprint'));
    // Paused, so the next message is delivered only after the rotation.
    await page.click('#pause');
    await page.waitForSelector('#conn-state[data-state="paused"]');
    await publish('pending', { text: 'published before the rotation' });

    assert.equal(await page.isChecked('#rotate-fingerprint'), true, 'a new fingerprint by default');
    page.once('dialog', (dialog) => dialog.accept());
    await page.click('#rotate');
    await page.waitForFunction(
      (token) => JSON.parse(localStorage.getItem('pigeonhole.credentials')).api_token !== token,
      old.api_token,
    );
    const fresh = await page.evaluate(() => JSON.parse(localStorage.getItem('pigeonhole.credentials')));
    assert.equal(fresh.client_id, old.client_id);
    assert.notEqual(fresh.personal_token, old.personal_token);
    assert.equal(Buffer.from(fresh.personal_token, 'base64').length, 32);
    await page.waitForSelector('#notice:not([hidden])');
    assert.match(await page.textContent('#notice'), /Credentials rotated/);
    const fingerprint = await page.evaluate(() => localStorage.getItem('pigeonhole.fingerprint'));
    assert.notEqual(fingerprint, oldFingerprint, 'the fingerprint was replaced');
    assert.equal(await page.inputValue('#reg-fingerprint'), fingerprint);

    // The old token is refused; the fingerprint now returns the new credentials.
    const stale = await api('/messages/poll', {
      headers: { Authorization: `Bearer ${old.api_token}`, 'X-Client-Id': old.client_id },
    });
    assert.equal(stale.status, 401);
    const again = await api('/clients/register', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ fingerprint }),
    });
    assert.equal(again.status, 200);
    assert.equal((await again.json()).api_token, fresh.api_token);

    // Resume: the pending message arrives, opened with the new key, and is acked.
    await page.click('#pause');
    const card = page.locator('.message[data-id="4"]');
    await card.waitFor({ timeout: 5000 });
    assert.equal(await card.locator('.message-type').textContent(), 'pending');
    assert.deepEqual(JSON.parse(await card.locator('.message-payload').textContent()), {
      text: 'published before the rotation',
    });
    await page.waitForSelector('#acked-cursor[data-cursor="4"]');
    await page.waitForSelector('#conn-state[data-state="ok"]');
    assert.equal(await page.isHidden('#error'), true);
    creds = fresh;
  });

  it('acknowledges next_cursor of a page whose messages all expired', async () => {
    const before = Number(await page.getAttribute('#acked-cursor', 'data-cursor'));
    await page.click('#pause');
    await page.waitForSelector('#conn-state[data-state="paused"]');
    // Two real messages; the route below plays a server that let both expire:
    // a 200 with no messages and a next_cursor past them.
    await publish('expired', { n: 1 });
    await publish('expired', { n: 2 });
    const last = before + 2;
    const acks = [];
    const onRequest = (request) => {
      if (request.url().endsWith('/api/v1/messages/ack')) acks.push(JSON.parse(request.postData()));
    };
    page.on('request', onRequest);
    const pollUrl = '**/api/v1/messages/poll*';
    await page.route(pollUrl, (route) =>
      route.fulfill({
        status: 200,
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ messages: [], next_cursor: last }),
      }),
    );
    await page.click('#pause');
    await page.waitForSelector(`#acked-cursor[data-cursor="${last}"]`);
    await page.unroute(pollUrl);
    page.off('request', onRequest);
    assert.deepEqual(acks[0], { last_received_id: last }, 'next_cursor, not a message id');
    assert.ok(acks.every((a) => a.last_received_id === last), JSON.stringify(acks));
    assert.equal(await page.locator(`.message[data-id="${before + 1}"]`).count(), 0, 'nothing shown');
    assert.equal(await page.isHidden('#error'), true);
    const poll = await api('/messages/poll', {
      headers: { Authorization: `Bearer ${creds.api_token}`, 'X-Client-Id': creds.client_id },
    });
    assert.equal(poll.status, 204, 'the server cursor moved past both ids');
    await page.waitForSelector('#conn-state[data-state="ok"]');
  });

  it('shows an invalid JSON payload inline, and sends an encrypted message', async () => {
    await page.fill('#compose-type', 'reply');
    await page.fill('#compose-payload', '{"text": ');
    await page.click('#compose-submit');
    await page.waitForSelector('#compose-payload-error:not([hidden])');
    assert.match(await page.textContent('#compose-payload-error'), /not valid JSON/);
    assert.equal(await page.getAttribute('#compose-payload', 'aria-invalid'), 'true');

    const bodies = [];
    page.on('request', (request) => {
      if (request.url().endsWith('/messages/send')) bodies.push(request.postDataJSON());
    });
    await page.fill('#compose-payload', '{"text": "hi server", "secret": "do-not-leak"}');
    await page.click('#compose-submit');
    await page.waitForSelector('#send-result[data-kind="ok"]');
    assert.equal(await page.textContent('#send-result'), 'Sent as message #1.');
    assert.equal(await page.isHidden('#compose-payload-error'), true);

    await page.click('#compose-submit');
    await page.waitForSelector('#send-result[data-id="2"]');
    assert.equal(bodies.length, 2);
    for (const body of bodies) {
      assert.deepEqual(Object.keys(body).sort(), ['aad', 'ciphertext', 'nonce', 'tag']);
      assert.deepEqual(body.aad, { client_id: creds.client_id });
      assert.equal(Buffer.from(body.nonce, 'base64').length, 12);
      assert.equal(Buffer.from(body.tag, 'base64').length, 16);
      assert.doesNotMatch(JSON.stringify(body), /do-not-leak|hi server/);
    }
    assert.notEqual(bodies[0].nonce, bodies[1].nonce, 'a fresh nonce per message');
    await shot('desktop.png');
  });

  it('fits a 375 px wide phone screen', async () => {
    await noHorizontalScroll();
    console.log(`# screenshot: ${await shot('phone.png')}`);
    await page.setViewportSize({ width: 1100, height: 900 });
  });

  it('shows 429, server and network errors in the page and recovers', async () => {
    const pollUrl = '**/api/v1/messages/poll*';
    await page.route(pollUrl, (route) =>
      route.fulfill({
        status: 429,
        headers: { 'Content-Type': 'application/json', 'Retry-After': '1' },
        body: JSON.stringify({ error: { code: 'rate_limited', message: 'too many polls' } }),
      }),
    );
    await page.click('#poll-now');
    await page.waitForSelector('#error:not([hidden])');
    assert.match(await page.textContent('#error-text'), /Rate limited \(429\).*wait 1 s/);
    assert.equal(await page.textContent('#conn-state'), 'Rate limited');
    assertRetryAfterWait(await page.textContent('#interval'), 1);
    await page.unroute(pollUrl);

    await page.route(pollUrl, (route) =>
      route.fulfill({
        status: 503,
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ error: { code: 'internal', message: 'try later' } }),
      }),
    );
    await page.click('#poll-now');
    await page.waitForFunction(() => /Server error \(503/.test(document.getElementById('error-text').textContent));
    await page.unroute(pollUrl);

    // A 503 `unavailable` with Retry-After is waited out like a 429.
    await page.route(pollUrl, (route) =>
      route.fulfill({
        status: 503,
        headers: { 'Content-Type': 'application/json', 'Retry-After': '2' },
        body: JSON.stringify({ error: { code: 'unavailable', message: 'storage is unavailable' } }),
      }),
    );
    await page.click('#poll-now');
    await page.waitForFunction(() => /Server unavailable \(503\)/.test(document.getElementById('error-text').textContent));
    assert.match(await page.textContent('#error-text'), /wait 2 s/);
    assert.equal(await page.textContent('#conn-state'), 'Server busy');
    assertRetryAfterWait(await page.textContent('#interval'), 2);
    await page.unroute(pollUrl);

    await page.route(pollUrl, (route) => route.abort('connectionrefused'));
    await page.click('#poll-now');
    await page.waitForFunction(() => /Network error/.test(document.getElementById('error-text').textContent));
    assert.equal(await page.textContent('#conn-state'), 'Offline');
    await shot('network-error.png');
    await page.unroute(pollUrl);

    await page.click('#poll-now');
    await page.waitForSelector('#error', { state: 'hidden' });
    await page.waitForSelector('#conn-state[data-state="ok"]');
  });

  it('shows a 422 from the server with its message', async () => {
    // The page always encrypts correctly, so make the server see a
    // tampered body: flip one bit of the tag in flight.
    await page.route('**/api/v1/messages/send', (route) => {
      const body = route.request().postDataJSON();
      const tag = Buffer.from(body.tag, 'base64');
      tag[0] ^= 1;
      route.continue({ postData: JSON.stringify({ ...body, tag: tag.toString('base64') }) });
    });
    await page.click('#compose-submit');
    await page.waitForSelector('#send-result[data-kind="error"]');
    assert.match(await page.textContent('#send-result'), /\(422 decryption_failed\)/);
    assert.match(await page.textContent('#error-text'), /422 decryption_failed/);
    await page.unroute('**/api/v1/messages/send');
    await page.click('#error-dismiss');
  });

  it('shows a 401 after the api_token is replaced with a wrong one', async () => {
    await page.click('#paste-panel summary');
    await page.fill('#paste-client-id', creds.client_id);
    await page.fill('#paste-api-token', `pht_${'A'.repeat(43)}`);
    await page.fill('#paste-personal-token', creds.personal_token);
    await page.click('#paste-submit');
    await page.waitForFunction(() => /Unauthorized \(401\)/.test(document.getElementById('error-text').textContent));
    assert.equal(await page.textContent('#conn-state'), 'Unauthorized');
    assert.equal(await page.textContent('#countdown'), 'stopped (401)');
    const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('pigeonhole.credentials')));
    assert.equal(stored.api_token, `pht_${'A'.repeat(43)}`);
    await shot('unauthorized.png');
  });

  it('forgets the credentials', async () => {
    page.once('dialog', (dialog) => dialog.accept());
    await page.click('#forget');
    await page.waitForSelector('#account', { state: 'hidden' });
    const stored = await page.evaluate(() => ({
      credentials: localStorage.getItem('pigeonhole.credentials'),
      fingerprint: localStorage.getItem('pigeonhole.fingerprint'),
    }));
    assert.equal(stored.credentials, null);
    assert.notEqual(stored.fingerprint, null, 'a new fingerprint for the next registration');
    assert.equal(await page.isVisible('#register-form'), true);
    assert.equal(await page.textContent('#conn-state'), 'Not connected');
  });

  it('refuses a plain http:// API on another machine unless allowed', async () => {
    const insecure = 'http://192.0.2.10:8080/api/v1';
    const local = `${server.url}/api/v1`;
    const submit = async (url) => {
      await page.fill('#base-url', url);
      await page.click('#base-form button[type="submit"]');
    };
    await submit(insecure);
    await page.waitForSelector('#base-url-error:not([hidden])');
    assert.match(await page.textContent('#base-url-error'), /refusing plain http:\/\/ to 192\.0\.2\.10/i);
    assert.equal(await page.evaluate(() => localStorage.getItem('pigeonhole.baseUrl')), null, 'not saved');

    // Registering is refused too while the field holds it (nothing is sent).
    await page.check('#allow-insecure-http');
    assert.equal(await page.evaluate(() => localStorage.getItem('pigeonhole.allowInsecureHttp')), 'true');
    await submit(insecure);
    await page.waitForSelector('#base-url-error', { state: 'hidden' });
    assert.equal(await page.evaluate(() => localStorage.getItem('pigeonhole.baseUrl')), insecure);
    await page.uncheck('#allow-insecure-http');
    await page.waitForSelector('#base-url-error:not([hidden])');
    let sent = 0;
    await page.route('http://192.0.2.10:8080/**', (route) => {
      sent += 1;
      route.abort('connectionrefused');
    });
    await page.click('#register-submit');
    await page.waitForSelector('#register-error:not([hidden])');
    assert.match(await page.textContent('#register-error'), /refusing plain http/i);
    assert.equal(sent, 0, 'nothing was sent to the insecure URL');
    await page.unroute('http://192.0.2.10:8080/**');

    await submit(local);
    await page.waitForSelector('#base-url-error', { state: 'hidden' });
    assert.equal(await page.evaluate(() => localStorage.getItem('pigeonhole.baseUrl')), null, 'back to the default');
    assert.equal(await page.evaluate(() => localStorage.getItem('pigeonhole.allowInsecureHttp')), null);
  });

  it('raised no script errors and no CSP violations', () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(cspViolations, []);
  });
});
