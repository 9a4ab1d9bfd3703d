// The operators' console end to end: the real local server serves it at
// /console, Debian's Chromium runs it headless (playwright-core), and the
// test plays the clients through pigeonhole.js under Node (register, poll,
// ack, send). It lists, filters, sorts and tags clients, publishes to a tag
// and watches the publish reach "acknowledged", reads a client's sends
// newest first, shows 401/403/429/network errors, deletes a client, and
// saves desktop and phone screenshots to target/browser-artifacts/.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium } from 'playwright-core';
import { PigeonholeAdmin, PigeonholeClient, randomFingerprint } from '../pigeonhole.js';
import { artifacts, chromiumArgs, chromiumPath, startServer } from './server.js';

const ADMIN_TOKEN = 'console-test-admin-token';
const OPERATOR_TOKEN = 'console-test-operator-token';
const HOSTILE_NAME = 'door <img src=x onerror="window.pwned=1"> & co';
const HOSTILE_PAYLOAD = { text: '<script>window.pwned = 2</script>', n: 0 };

describe('operators console against the local server', () => {
  let server;
  let browser;
  let page;
  let admin;
  const clients = {};
  const pageErrors = [];
  const cspViolations = [];

  const row = (client) => page.locator(`#clients-body tr[data-id="${client.clientId}"]`);
  const shownIds = () => page.$$eval('#clients-body tr[data-id]', (rows) => rows.map((r) => r.dataset.id));
  const loaded = () => page.waitForSelector('#clients-status[data-kind="ok"]');
  const refresh = async () => {
    await page.evaluate(() => {
      document.getElementById('clients-status').dataset.kind = '';
    });
    await page.click('#clients-refresh');
  };
  // Every client reads and acknowledges all it has, and the page is asked
  // to look at each publish once more: nothing is left for it to follow,
  // so no status request of its own lands in a later test.
  const ackEverything = async () => {
    for (const c of Object.values(clients)) {
      for (let polled = await c.poll(); polled && polled.messages.length > 0; polled = await c.poll()) {
        await c.ack(polled.nextCursor);
      }
    }
    for (const refresh of await page.locator('#publishes .publish').getByRole('button', { name: 'Refresh' }).all()) {
      await refresh.click();
    }
    await page.waitForFunction(() =>
      [...document.querySelectorAll('#publishes .publish')].every((e) => e.dataset.state === 'acknowledged'),
    );
  };
  const shot = async (name) => {
    const path = join(artifacts, name);
    await page.screenshot({ path, fullPage: true });
    return path;
  };

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    server = await startServer({ adminToken: ADMIN_TOKEN, operatorToken: OPERATOR_TOKEN });
    admin = new PigeonholeAdmin(server.url, { adminToken: ADMIN_TOKEN, operatorToken: OPERATOR_TOKEN });
    const make = async (key, name) => {
      clients[key] = await PigeonholeClient.register(server.url, { fingerprint: randomFingerprint(), name });
    };
    await make('kitchen', 'kitchen sensor');
    await make('hostile', HOSTILE_NAME);
    await make('lab1', 'lab-1');
    await make('lab2', 'lab-2');
    await make('unnamed', null);
    // lab-1 sends 25 messages (so the inbound view pages), lab-2 and the
    // hostile one poll once (so they are online).
    for (let n = 1; n <= 25; n++) {
      await clients.lab1.send(
        n === 25 ? 'hostile' : 'reading',
        n === 25 ? HOSTILE_PAYLOAD : { n, celsius: 20 + n / 10 },
      );
    }
    await clients.lab2.poll();
    await clients.hostile.poll();

    browser = await chromium.launch({ executablePath: chromiumPath, args: chromiumArgs });
    // Reduced motion: the progress bars jump to their values, so the
    // screenshots show them as they are.
    const context = await browser.newContext({
      viewport: { width: 1280, height: 900 },
      colorScheme: 'light',
      reducedMotion: 'reduce',
    });
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

  it('is served at /console with a strict Content-Security-Policy, beside the client page', async () => {
    const response = await page.goto(`${server.url}/console?interval=0.2`);
    assert.equal(response.status(), 200);
    const headers = response.headers();
    assert.match(headers['content-type'], /^text\/html/);
    assert.match(headers['content-security-policy'], /script-src 'self'/);
    assert.doesNotMatch(headers['content-security-policy'], /unsafe-inline/);
    await page.waitForSelector('html[data-ready="true"]');
    for (const path of [
      '/console.js',
      '/console-clients.js',
      '/console-publish.js',
      '/console-inbound.js',
      '/console-ui.js',
      '/console.css',
      '/pigeonhole.js',
    ]) {
      const file = await fetch(server.url + path);
      assert.equal(file.status, 200, path);
    }
    assert.equal((await fetch(`${server.url}/`)).status, 200, 'the client page is still there');
    assert.equal(await page.inputValue('#base-url'), `${server.url}/api/v1`);
    assert.equal(await page.textContent('#conn-state'), 'No tokens');
    assert.match(await page.textContent('#clients-status'), /Enter the operator token/);
  });

  it('shows a 401 when the operator token is wrong', async () => {
    await page.fill('#operator-token', 'not-the-operator-token');
    await page.click('#tokens-submit');
    await page.waitForSelector('#error:not([hidden])');
    assert.match(await page.textContent('#error-text'), /Unauthorized \(401\).*operator token/);
    assert.equal(await page.textContent('#conn-state'), 'Unauthorized (operator)');
    assert.equal(await page.getAttribute('#clients-status', 'data-kind'), 'error');
    await page.click('#forget');
    await page.waitForSelector('#error', { state: 'hidden' });
  });

  it('keeps the tokens in sessionStorage only, and lists every client', async () => {
    await page.fill('#operator-token', OPERATOR_TOKEN);
    await page.fill('#admin-token', ADMIN_TOKEN);
    await page.click('#tokens-submit');
    await loaded();
    const stored = await page.evaluate(() => ({
      session: { ...sessionStorage },
      local: JSON.stringify({ ...localStorage }),
    }));
    assert.equal(stored.session['pigeonhole.console.operatorToken'], OPERATOR_TOKEN);
    assert.equal(stored.session['pigeonhole.console.adminToken'], ADMIN_TOKEN);
    assert.doesNotMatch(stored.local, /console-test/, 'no token in localStorage');
    assert.equal(await page.inputValue('#operator-token'), '', 'the field does not keep showing it');
    assert.equal(await page.textContent('#conn-state'), 'Connected');

    assert.equal((await shownIds()).length, 5);
    assert.match(await page.textContent('#clients-status'), /5 clients, 3 online/);
    assert.equal(await page.textContent('#clients-count'), '(5)');

    // Status dot, name, tags, last seen (relative, exact on hover), sent head.
    const lab1 = row(clients.lab1);
    assert.equal(await lab1.getAttribute('data-status'), 'online', 'sending counts as being seen');
    assert.equal(await lab1.locator('.dot').getAttribute('data-status'), 'online');
    assert.equal(await lab1.locator('.client-name').textContent(), 'lab-1');
    assert.equal(await lab1.locator('.col-sent').textContent(), '25');
    assert.match(await lab1.locator('time').textContent(), /^(just now|\d+ s ago)$/);
    assert.match(await lab1.locator('time').getAttribute('title'), /\(\d{4}-\d\d-\d\dT.*Z\)$/);
    const unnamed = row(clients.unnamed);
    assert.equal(await unnamed.locator('.client-name').textContent(), '(no name)');
    assert.equal(await unnamed.locator('time').textContent(), 'never');
    assert.equal(await unnamed.locator('.dot').getAttribute('data-status'), 'offline');

    // A name is data: shown as text, never parsed as HTML.
    const hostile = row(clients.hostile);
    assert.equal(await hostile.locator('.client-name').textContent(), HOSTILE_NAME);
    assert.equal(await page.locator('#clients-body img').count(), 0);
    assert.equal(await page.evaluate(() => window.pwned), undefined);
  });

  it('filters by status and text, and sorts by column', async () => {
    await page.selectOption('#filter-status', 'online');
    assert.deepEqual(
      (await shownIds()).sort(),
      [clients.lab1.clientId, clients.lab2.clientId, clients.hostile.clientId].sort(),
      'sending or polling counts as being seen',
    );
    await page.selectOption('#filter-status', 'offline');
    assert.deepEqual((await shownIds()).sort(), [clients.kitchen.clientId, clients.unnamed.clientId].sort());
    await page.selectOption('#filter-status', '');
    await page.fill('#filter-text', 'LAB');
    assert.deepEqual(await shownIds(), [clients.lab1.clientId, clients.lab2.clientId], 'by name, case-insensitive');
    assert.equal(await page.textContent('#clients-count'), '(2 of 5)');
    await page.fill('#filter-text', clients.unnamed.clientId.slice(0, 13));
    assert.deepEqual(await shownIds(), [clients.unnamed.clientId], 'by id');
    await page.fill('#filter-text', 'nothing-matches-this');
    assert.match(await page.textContent('#clients-body'), /No client matches the filters/);
    await page.fill('#filter-text', '');

    // Name ascending first (unnamed last); the Sent header sorts by sent head.
    const names = await page.$$eval('#clients-body .client-name', (n) => n.map((x) => x.textContent));
    assert.deepEqual(names, [HOSTILE_NAME, 'kitchen sensor', 'lab-1', 'lab-2', '(no name)']);
    await page.click('th[data-sort="sent_head"] button');
    assert.equal((await shownIds())[0], clients.lab1.clientId);
    assert.equal(await page.getAttribute('th[data-sort="sent_head"]', 'aria-sort'), 'descending');
    await page.click('th[data-sort="name"] button');
    assert.equal(await page.getAttribute('th[data-sort="name"]', 'aria-sort'), 'ascending');
    await page.click('th[data-sort="name"] button');
    assert.equal(await page.getAttribute('th[data-sort="name"]', 'aria-sort'), 'descending');
    assert.equal((await shownIds())[0], clients.unnamed.clientId, 'unnamed first when descending');
    await page.selectOption('#sort', 'name:asc');
  });

  it("tags the selected clients, edits one client's tags, and filters by tag on the server", async () => {
    await row(clients.lab1).locator('.col-select input').check();
    await row(clients.lab2).locator('.col-select input').check();
    await page.waitForSelector('#selection-bar:not([hidden])');
    assert.equal(await page.textContent('#selection-count'), '2 clients selected');
    assert.equal(await page.textContent('#audience-selected-label'), 'Selected clients (2)');
    await page.fill('#bulk-tag', 'lab');
    await page.click('#bulk-tag-add');
    await page.waitForFunction(() => /Tagged 2 clients lab/.test(document.getElementById('notice').textContent));
    for (const c of [clients.lab1, clients.lab2]) {
      assert.deepEqual(await row(c).locator('.tag').allTextContents(), ['lab']);
    }

    // One client's tags, through the dialog; a bad tag is refused inline.
    await row(clients.kitchen).getByRole('button', { name: 'Edit the tags of kitchen sensor' }).click();
    await page.waitForSelector('#tags-dialog[open]');
    assert.equal(await page.textContent('#tags-dialog-name'), 'kitchen sensor');
    await page.fill('#tags-input', 'Kitchen!');
    await page.click('#tags-save');
    await page.waitForSelector('#tags-error:not([hidden])');
    assert.match(await page.textContent('#tags-error'), /not a tag/);
    await page.fill('#tags-input', 'kitchen, eu  eu');
    await page.click('#tags-save');
    await page.waitForSelector('#tags-dialog', { state: 'hidden' });
    assert.deepEqual(await row(clients.kitchen).locator('.tag').allTextContents(), ['eu', 'kitchen']);

    // What the server now holds.
    const byId = new Map((await admin.allClients()).map((c) => [c.id, c.tags]));
    assert.deepEqual(byId.get(clients.lab1.clientId), ['lab']);
    assert.deepEqual(byId.get(clients.lab2.clientId), ['lab']);
    assert.deepEqual(byId.get(clients.kitchen.clientId), ['eu', 'kitchen']);

    // The tag filter asks the server (?tag=).
    const listings = [];
    const onRequest = (request) => {
      if (request.url().includes('/operators/clients?')) listings.push(new URL(request.url()).searchParams.get('tag'));
    };
    page.on('request', onRequest);
    await page.evaluate(() => {
      document.getElementById('clients-status').dataset.kind = '';
    });
    await page.fill('#filter-tag', 'lab');
    await page.press('#filter-tag', 'Enter');
    await loaded();
    page.off('request', onRequest);
    assert.deepEqual(listings, ['lab']);
    assert.deepEqual(await shownIds(), [clients.lab1.clientId, clients.lab2.clientId]);
    assert.match(await page.textContent('#clients-status'), /2 clients tagged lab/);
    await page.fill('#filter-tag', 'NOT A TAG');
    await page.press('#filter-tag', 'Enter');
    await page.waitForSelector('#filter-tag-error:not([hidden])');
    await page.fill('#filter-tag', '');
    await page.press('#filter-tag', 'Enter');
    await loaded();
    assert.equal((await shownIds()).length, 5);
    assert.equal(await page.isHidden('#filter-tag-error'), true);
  });

  it('publishes to a tag and watches it reach "acknowledged" as the clients ack', async () => {
    await page.click('#selection-clear');
    await page.check('#audience-tag');
    await page.fill('#publish-tag', 'lab');
    await page.fill('#publish-type', 'alarm');
    // The payload is checked as you type.
    await page.fill('#publish-payload', '{"door": ');
    assert.equal(await page.getAttribute('#publish-payload-state', 'data-valid'), 'false');
    assert.match(await page.textContent('#publish-payload-state'), /Not valid JSON/);
    assert.equal(await page.getAttribute('#publish-payload', 'aria-invalid'), 'true');
    await page.click('#publish-submit');
    assert.equal(await page.locator('#publishes .publish').count(), 0, 'nothing published while invalid');
    await page.fill('#publish-payload', '{"door": "front", "open": true}');
    assert.equal(await page.getAttribute('#publish-payload-state', 'data-valid'), 'true');
    assert.match(await page.textContent('#publish-payload-state'), /Valid JSON: object/);
    await page.fill('#publish-ttl', '5');
    await page.selectOption('#publish-ttl-unit', '60');

    const requests = [];
    const onRequest = (request) => {
      if (request.url().endsWith('/messages/publish') && request.method() === 'POST') requests.push(request);
    };
    page.on('request', onRequest);
    await page.click('#publish-submit');
    const entry = page.locator('#publishes .publish').first();
    await entry.waitFor();
    page.off('request', onRequest);
    assert.equal(requests.length, 1);
    assert.deepEqual(requests[0].postDataJSON(), {
      to_tags: ['lab'],
      type: 'alarm',
      payload: { door: 'front', open: true },
      ttl_secs: 300,
    });
    assert.ok((await requests[0].allHeaders())['idempotency-key'], 'sent with an Idempotency-Key');
    assert.match(await page.textContent('#publish-result'), /Published to tag lab/);

    // Delivered to both, acknowledged by none yet.
    await page.waitForFunction(
      () => document.querySelector('#publishes .publish .publish-counts')?.dataset.delivered === '2',
    );
    assert.equal(await entry.getAttribute('data-state'), 'done');
    assert.match(await entry.locator('.publish-counts').textContent(), /^Acknowledged 0 of 2 · delivered 2/);
    assert.equal(await entry.locator('.publish-audience').textContent(), 'to tag lab');
    assert.equal(await entry.locator('.progress').getAttribute('aria-valuemax'), '2');
    assert.equal(await entry.locator('.progress').getAttribute('aria-valuenow'), '0');

    // The clients poll and acknowledge; the bar follows on its own.
    for (const c of [clients.lab1, clients.lab2]) {
      const polled = await c.poll();
      assert.deepEqual(
        polled.messages.map((m) => [m.type, m.payload]),
        [['alarm', { door: 'front', open: true }]],
      );
      await c.ack(polled.nextCursor);
      if (c === clients.lab1) {
        await page.waitForFunction(
          () => document.querySelector('#publishes .publish .publish-counts')?.dataset.acknowledged === '1',
        );
        await shot('console-publishing.png');
      }
    }
    await page.waitForSelector('#publishes .publish[data-state="acknowledged"]', { timeout: 15000 });
    assert.equal(await entry.locator('.pill').textContent(), 'Acknowledged');
    assert.match(
      await entry.locator('.publish-counts').textContent(),
      /^Acknowledged 2 of 2 · delivered 2 · expired 0/,
    );
    assert.equal(await entry.locator('.progress').getAttribute('aria-valuenow'), '2');

    // Per recipient.
    await entry.locator('.recipients summary').click();
    await page.waitForFunction(
      () => document.querySelectorAll('#publishes .publish .recipients tbody tr').length === 2,
    );
    const recipients = await entry
      .locator('.recipients tbody tr')
      .evaluateAll((rows) =>
        rows.map((r) => [r.dataset.clientId, r.querySelector('.client-name').textContent, r.dataset.status]).sort(),
      );
    assert.deepEqual(
      recipients,
      [
        [clients.lab1.clientId, 'lab-1', 'acknowledged'],
        [clients.lab2.clientId, 'lab-2', 'acknowledged'],
      ].sort(),
    );
    assert.match(await entry.locator('.recipients .status-line').textContent(), /2 of 2 recipients shown/);
  });

  it('tags and untags the selection, publishes to it, and to everyone after a confirmation', async () => {
    const bodies = [];
    const onRequest = (request) => {
      if (request.url().endsWith('/messages/publish') && request.method() === 'POST') bodies.push(request.postDataJSON());
    };
    const publishes = () => page.locator('#publishes .publish').count();
    const newest = () => page.locator('#publishes .publish').first();
    const delivered = (n) =>
      page.waitForFunction(
        (want) => document.querySelector('#publishes .publish .publish-counts')?.dataset.delivered === want,
        String(n),
      );
    page.on('request', onRequest);

    // The ticked rows, by id.
    const before = await publishes();
    await row(clients.kitchen).locator('.col-select input').check();
    await row(clients.lab1).locator('.col-select input').check();
    await page.check('#audience-selected');
    assert.equal(await page.textContent('#audience-selected-label'), 'Selected clients (2)');

    // A tag added to the selection and removed again leaves each its own.
    await page.fill('#bulk-tag', 'tmp');
    await page.click('#bulk-tag-add');
    await page.waitForFunction(() => /Tagged 2 clients tmp/.test(document.getElementById('notice').textContent));
    await page.click('#bulk-tag-remove');
    await page.waitForFunction(() => /Removed tmp from 2 clients/.test(document.getElementById('notice').textContent));
    assert.deepEqual(await row(clients.kitchen).locator('.tag').allTextContents(), ['eu', 'kitchen']);
    assert.deepEqual(await row(clients.lab1).locator('.tag').allTextContents(), ['lab']);
    const tagsById = new Map((await admin.allClients()).map((c) => [c.id, c.tags]));
    assert.deepEqual(tagsById.get(clients.kitchen.clientId), ['eu', 'kitchen']);
    assert.deepEqual(tagsById.get(clients.lab1.clientId), ['lab']);

    await page.fill('#publish-type', 'ping');
    await page.fill('#publish-payload', '{"n": 1}');
    await page.fill('#publish-ttl', '');
    await page.click('#publish-submit');
    await page.waitForFunction((n) => document.querySelectorAll('#publishes .publish').length === n, before + 1);
    assert.equal(bodies.length, 1);
    const { to_client_ids: named, ...rest } = bodies[0];
    assert.deepEqual(named.sort(), [clients.kitchen.clientId, clients.lab1.clientId].sort());
    assert.deepEqual(rest, { type: 'ping', payload: { n: 1 } });
    assert.equal(await newest().locator('.publish-audience').textContent(), 'to 2 selected clients');
    await delivered(2);
    await page.click('#selection-clear');

    // Everyone: the page asks first, and Cancel publishes nothing.
    await page.check('#audience-all');
    await page.click('#publish-submit');
    await page.waitForSelector('#confirm-dialog[open]');
    assert.equal(await page.textContent('#confirm-heading'), 'Publish to everyone?');
    await page.click('#confirm-cancel');
    await page.waitForSelector('#confirm-dialog', { state: 'hidden' });
    assert.equal(bodies.length, 1, 'nothing published on Cancel');
    assert.equal(await publishes(), before + 1);
    await page.click('#publish-submit');
    await page.waitForSelector('#confirm-dialog[open]');
    await page.click('#confirm-ok');
    await page.waitForFunction((n) => document.querySelectorAll('#publishes .publish').length === n, before + 2);
    page.off('request', onRequest);
    assert.deepEqual(bodies[1], { to_all: true, type: 'ping', payload: { n: 1 } });
    const everyone = (await admin.allClients()).length;
    assert.equal(await newest().locator('.publish-audience').textContent(), 'to everyone');
    await delivered(everyone);
    assert.equal(await newest().locator('.progress').getAttribute('aria-valuemax'), String(everyone));

    // kitchen was in both audiences, lab-2 only in everyone.
    const types = async (c) => (await c.poll()).messages.map((m) => [m.type, m.payload]);
    assert.deepEqual(await types(clients.kitchen), [['ping', { n: 1 }], ['ping', { n: 1 }]]);
    assert.deepEqual((await types(clients.lab2)).slice(-1), [['ping', { n: 1 }]]);
  });

  it('asks for an unfinished publish less and less often', async () => {
    // The unnamed client never polls: the publish stays delivered and
    // unacknowledged, so the page keeps following it, backing off from the
    // step (0.2 s here) by doubling.
    await row(clients.unnamed).locator('.col-select input').check();
    await page.check('#audience-selected');
    await page.fill('#publish-type', 'backoff');
    await page.fill('#publish-payload', '{}');
    const published = page.waitForResponse(
      (r) => r.url().endsWith('/messages/publish') && r.request().method() === 'POST',
    );
    const asked = [];
    const onRequest = (request) => {
      if (request.method() === 'GET' && request.url().includes('/messages/publish/')) {
        asked.push({ url: request.url(), at: Date.now() });
      }
    };
    page.on('request', onRequest);
    await page.click('#publish-submit');
    const { publish_id: id } = await (await published).json();
    await new Promise((resolve) => setTimeout(resolve, 4000));
    page.off('request', onRequest);
    await page.click('#selection-clear');

    const times = asked.filter((a) => a.url.includes(id)).map((a) => a.at);
    const gaps = times.slice(1).map((t, i) => (t - times[i]) / 1000);
    // Nominally at 0, 0.2, 0.6, 1.4 and 3.0 s; asking every 0.2 s would be 20 times.
    assert.ok(times.length >= 3 && times.length <= 6, `asked ${times.length} times, gaps ${gaps}`);
    assert.ok(Math.max(...gaps) >= 1.2, `the wait grows: gaps ${gaps}`);
    assert.ok(gaps[0] < 0.8, `the first wait is about one step: gaps ${gaps}`);
    await ackEverything();
  });

  it('reads what a client sent, newest first, with "load more" and "check for newer"', async () => {
    await row(clients.lab1).getByRole('button', { name: 'Show what lab-1 sent' }).click();
    await page.waitForFunction(() => document.querySelectorAll('#inbound-messages .message').length === 20);
    assert.equal(await page.textContent('#inbound-name'), 'lab-1');
    assert.equal(await page.textContent('#inbound-id'), clients.lab1.clientId);
    assert.equal(await page.inputValue('#inbound-client'), clients.lab1.clientId);
    const ids = async () =>
      page.$$eval('#inbound-messages .message', (items) => items.map((i) => Number(i.dataset.id)));
    assert.deepEqual(
      await ids(),
      Array.from({ length: 20 }, (_, i) => 25 - i),
      'the newest 20, newest first',
    );
    const newest = page.locator('#inbound-messages .message').first();
    assert.equal(await newest.locator('.message-type').textContent(), 'hostile');
    assert.deepEqual(JSON.parse(await newest.locator('.message-payload').textContent()), HOSTILE_PAYLOAD);
    assert.equal(await page.locator('#inbound-messages script').count(), 0, 'a payload is text');
    const second = page.locator('#inbound-messages .message').nth(1);
    assert.deepEqual(JSON.parse(await second.locator('.message-payload').textContent()), { n: 24, celsius: 22.4 });

    await page.click('#inbound-more');
    await page.waitForFunction(() => document.querySelectorAll('#inbound-messages .message').length === 25);
    assert.deepEqual(
      await ids(),
      Array.from({ length: 25 }, (_, i) => 25 - i),
    );
    assert.equal(await page.isHidden('#inbound-more'), true, 'nothing older');
    assert.match(await page.textContent('#inbound-status'), /25 messages shown, newest first \(all that are kept\)/);

    await clients.lab1.send('reading', { n: 26 });
    await page.click('#inbound-newer');
    await page.waitForSelector('#inbound-messages .message[data-id="26"]');
    assert.equal((await ids())[0], 26);
    assert.match(await page.textContent('#inbound-status'), /1 newer message added/);

    // By id, for a client that sent nothing.
    await page.fill('#inbound-client', clients.unnamed.clientId);
    await page.click('#inbound-submit');
    await page.waitForFunction(() => /sent nothing/.test(document.getElementById('inbound-status').textContent));
    assert.equal(await page.locator('#inbound-messages .message').count(), 0);
    await page.fill('#inbound-client', 'not-an-id');
    await page.click('#inbound-submit');
    await page.waitForSelector('#inbound-error:not([hidden])');
  });

  it('shows 429, 403 and network errors in the page, and recovers', async () => {
    const listing = '**/api/v1/operators/clients*';
    await page.route(listing, (route) =>
      route.fulfill({
        status: 429,
        headers: { 'Content-Type': 'application/json', 'Retry-After': '7' },
        body: JSON.stringify({ error: { code: 'rate_limited', message: 'slow down' } }),
      }),
    );
    await refresh();
    await page.waitForFunction(() => /Rate limited \(429\)/.test(document.getElementById('error-text').textContent));
    assert.match(await page.textContent('#error-text'), /wait 7 s/);
    assert.equal(await page.textContent('#conn-state'), 'Rate limited');
    await page.unroute(listing);

    await page.route(listing, (route) =>
      route.fulfill({ status: 403, headers: { 'Content-Type': 'application/json' }, body: '{"message":"Forbidden"}' }),
    );
    await refresh();
    await page.waitForFunction(() => /Forbidden \(403\)/.test(document.getElementById('error-text').textContent));
    await page.unroute(listing);

    await page.route(listing, (route) => route.abort('connectionrefused'));
    await refresh();
    await page.waitForFunction(() => /Network error/.test(document.getElementById('error-text').textContent));
    assert.match(await page.textContent('#error-text'), /CORS/);
    assert.equal(await page.textContent('#conn-state'), 'Offline');
    await shot('console-network-error.png');
    await page.unroute(listing);

    // A publish status refused with 401 shows in the page too.
    await page.route('**/api/v1/messages/publish/*', (route) =>
      route.fulfill({
        status: 401,
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ error: { code: 'unauthorized', message: 'bad token' } }),
      }),
    );
    await page.locator('#publishes .publish').first().getByRole('button', { name: 'Refresh' }).click();
    await page.waitForFunction(() => /refused the admin token/.test(document.getElementById('error-text').textContent));
    await page.unroute('**/api/v1/messages/publish/*');
    await page.locator('#publishes .publish').first().getByRole('button', { name: 'Refresh' }).click();
    await page.waitForFunction(() => document.getElementById('error').dataset.source !== 'status');

    await refresh();
    await loaded();
    await page.waitForSelector('#error', { state: 'hidden' });
    assert.equal(await page.textContent('#conn-state'), 'Connected');
  });

  it('deletes a client after a confirmation that names it', async () => {
    await row(clients.kitchen).getByRole('button', { name: 'Delete kitchen sensor' }).click();
    await page.waitForSelector('#confirm-dialog[open]');
    const text = await page.textContent('#confirm-text');
    assert.match(text, /“kitchen sensor”/);
    assert.ok(text.includes(clients.kitchen.clientId), 'the id too');
    assert.equal(await page.textContent('#confirm-ok'), 'Delete “kitchen sensor”');
    // Cancel leaves it.
    await page.click('#confirm-cancel');
    await page.waitForSelector('#confirm-dialog', { state: 'hidden' });
    assert.equal(await row(clients.kitchen).count(), 1);

    await row(clients.kitchen).getByRole('button', { name: 'Delete kitchen sensor' }).click();
    await page.click('#confirm-ok');
    await page.waitForSelector('#confirm-dialog', { state: 'hidden' });
    await row(clients.kitchen).waitFor({ state: 'detached' });
    assert.match(await page.textContent('#notice'), /Deleted kitchen sensor/);
    assert.equal((await shownIds()).length, 4);
    // By now every client has polled (ackEverything).
    assert.match(await page.textContent('#clients-status'), /^4 clients, 4 online/);
    assert.ok(!(await admin.allClients()).some((c) => c.id === clients.kitchen.clientId));
    await assert.rejects(clients.kitchen.poll(), (e) => e.status === 401);
  });

  it('looks tidy on a desktop and fits a 375 px phone screen', async () => {
    await row(clients.lab2).locator('.col-select input').check();
    await page.evaluate(() => window.scrollTo(0, 0));
    console.log(`# screenshot: ${await shot('console-desktop.png')}`);
    await page.setViewportSize({ width: 375, height: 740 });
    const scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(scrollWidth <= 375, `no horizontal scroll at 375 px (scrollWidth ${scrollWidth})`);
    // The table's rows are cards: no part of a row is cut off.
    const overflow = await page.$$eval(
      '#clients-body tr',
      (rows) => rows.filter((r) => r.scrollWidth > r.clientWidth + 1).length,
    );
    assert.equal(overflow, 0);
    console.log(`# screenshot: ${await shot('console-phone.png')}`);
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  it('forgets the tokens', async () => {
    await page.click('#forget');
    await page.waitForFunction(() => /Tokens forgotten/.test(document.getElementById('notice').textContent));
    const session = await page.evaluate(() => ({ ...sessionStorage }));
    assert.deepEqual(
      Object.keys(session).filter((k) => k.startsWith('pigeonhole.console.')),
      [],
    );
    assert.equal(await page.locator('#clients-body tr[data-id]').count(), 0);
    assert.equal(await page.locator('#publishes .publish').count(), 0);
    assert.equal(await page.textContent('#conn-state'), 'No tokens');
    assert.match(await page.textContent('#clients-status'), /Enter the operator token/);
  });

  it('raised no script errors and no CSP violations', () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(cspViolations, []);
  });
});
