// pigeonhole.js as a Node package, unchanged, against the real local server:
// register, poll, decrypt, ack, send, listen and rotate as a client; publish
// (to ids and to a tag, with an Idempotency-Key), follow its status to
// "acknowledged", read what a client sent, list, tag and delete clients as
// admin and operator; and the README's examples run as written. Node's own
// fetch and Web Crypto, no dependencies.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  ApiError,
  InsecureUrlError,
  PigeonholeAdmin,
  PigeonholeClient,
  apiBase,
  publishBody,
  publishFinished,
  randomFingerprint,
  register,
  validTag,
} from '../pigeonhole.js';
import { startServer } from './server.js';

const ADMIN_TOKEN = 'node-test-admin-token';
const OPERATOR_TOKEN = 'node-test-operator-token';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe('pigeonhole.js under Node against the local server', () => {
  let server;
  let admin;
  let client;
  let fingerprint;

  before(async () => {
    server = await startServer({ adminToken: ADMIN_TOKEN, operatorToken: OPERATOR_TOKEN });
    admin = new PigeonholeAdmin(server.url, { adminToken: ADMIN_TOKEN, operatorToken: OPERATOR_TOKEN });
  });

  after(async () => {
    await server?.stop();
  });

  it('runs on Node with the platform crypto and fetch', () => {
    assert.equal(typeof globalThis.crypto?.subtle?.encrypt, 'function');
    assert.equal(apiBase(server.url), `${server.url}/api/v1`);
    assert.equal(apiBase(`${server.url}/api/v1/`), `${server.url}/api/v1`);
  });

  it('registers, and registering again with the fingerprint returns the same credentials', async () => {
    fingerprint = randomFingerprint();
    client = await PigeonholeClient.register(server.url, { fingerprint, name: 'node test' });
    assert.equal(client.created, true);
    assert.match(client.clientId, UUID);
    assert.match(client.credentials.api_token, /^pht_/);
    assert.equal(Buffer.from(client.credentials.personal_token, 'base64').length, 32);

    const again = await register(`${server.url}/api/v1`, { fingerprint, name: 'ignored' });
    assert.equal(again.created, false);
    assert.deepEqual(again.credentials, client.credentials);
  });

  it('polls nothing yet: null on 204', async () => {
    assert.equal(await client.poll(), null);
  });

  it('receives a published message, decrypts it, acknowledges next_cursor', async () => {
    const answer = await admin.publish({
      toClientIds: [client.clientId],
      type: 'greeting',
      payload: { text: 'hello from node', note: 'café ✓', n: 42 },
    });
    assert.match(answer.publish_id, UUID);
    assert.equal(answer.recipients, 1);

    const page = await client.poll();
    assert.ok(page, 'a 200');
    assert.deepEqual(page.invalid, []);
    assert.equal(page.messages.length, 1);
    const [message] = page.messages;
    assert.equal(message.id, 1);
    assert.equal(message.type, 'greeting');
    assert.deepEqual(message.payload, { text: 'hello from node', note: 'café ✓', n: 42 });
    assert.match(message.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(page.nextCursor, 1);

    assert.equal(await client.ack(page.nextCursor), 1);
    assert.equal(await client.poll(), null, 'acknowledged: nothing left');

    // The raw page is still there below the cursor, as delivered (encrypted).
    const raw = await client.pollRaw({ cursor: 0 });
    assert.deepEqual(raw.messages[0].aad, { client_id: client.clientId, created_at: message.created_at, id: 1 });
    assert.doesNotMatch(JSON.stringify(raw), /hello from node/);
  });

  it('sends encrypted messages; the admin reads them back decrypted by the server', async () => {
    const first = await client.send('reply', { text: 'hi server', secret: 'kept-in-ciphertext' });
    assert.deepEqual(first, { id: 1, duplicate: false });
    const second = await client.send('status', { battery: 87 });
    assert.equal(second.id, 2);

    const page = await admin.sent(client.clientId);
    assert.deepEqual(
      page.messages.map((m) => [m.id, m.type, m.payload]),
      [
        [1, 'reply', { text: 'hi server', secret: 'kept-in-ciphertext' }],
        [2, 'status', { battery: 87 }],
      ],
    );
    assert.deepEqual(page.messages[0].aad, { client_id: client.clientId });
    assert.equal(page.next_after, 2);
    assert.equal(await admin.sent(client.clientId, { after: 2 }), null, '204: nothing newer');

    const newest = await admin.sentRange(client.clientId, 1, 2);
    assert.deepEqual(
      newest.map((m) => m.id),
      [2],
    );
    const all = [];
    for await (const m of admin.iterSent(client.clientId, { limit: 1 })) all.push(m.id);
    assert.deepEqual(all, [1, 2]);

    const [listed] = (await admin.allClients()).filter((c) => c.id === client.clientId);
    assert.equal(listed.sent_head, 2);
    assert.equal(listed.name, 'node test');
    assert.equal(listed.status, 'online');
  });

  it('listens: each message goes to the handler in order and the page is acknowledged', async () => {
    for (const n of [1, 2, 3]) {
      await admin.publish({ toClientIds: [client.clientId], type: 'tick', payload: { n } });
    }
    const seen = [];
    const waits = [];
    const stop = new AbortController();
    const stats = await client.listen(
      async (message) => {
        seen.push([message.id, message.type, message.payload.n]);
        if (seen.length === 3) stop.abort();
      },
      { signal: stop.signal, step: 0.05, onWait: (seconds, reason) => waits.push(reason) },
    );
    assert.deepEqual(seen, [
      [2, 'tick', 1],
      [3, 'tick', 2],
      [4, 'tick', 3],
    ]);
    assert.equal(stats.messages, 3);
    assert.equal(stats.invalid, 0);
    assert.equal(stats.cursor, 4);
    assert.equal(await client.poll(), null, 'the page was acknowledged');

    // With nothing waiting it polls on the backoff until stopped.
    const idle = await client.listen(() => assert.fail('nothing to handle'), {
      step: 0.05,
      maxPolls: 3,
      onWait: (s, r) => waits.push(r),
    });
    assert.equal(idle.polls, 3);
    assert.ok(waits.filter((r) => r === 'empty').length >= 2, waits.join(','));
  });

  it('tags clients, publishes to the tag, and follows the status to acknowledged', async () => {
    const other = await PigeonholeClient.register(server.url, { fingerprint: randomFingerprint(), name: 'other' });
    const untagged = await PigeonholeClient.register(server.url, {
      fingerprint: randomFingerprint(),
      name: 'untagged',
    });
    assert.deepEqual(await admin.setTags(client.clientId, ['eu', 'door-sensors', 'eu']), {
      id: client.clientId,
      tags: ['door-sensors', 'eu'],
    });
    await admin.setTags(other.clientId, ['eu']);
    const eu = await admin.allClients({ tag: 'eu', pageSize: 1 });
    assert.deepEqual(eu.map((c) => c.id).sort(), [client.clientId, other.clientId].sort());
    assert.ok(eu.every((c) => c.tags.includes('eu')));
    await assert.rejects(admin.setTags(client.clientId, ['Not A Tag']), /not a tag/);

    const key = 'node-test-publish-0001';
    const published = await admin.publish({
      toTags: ['eu'],
      type: 'alarm',
      payload: { door: 'front' },
      ttlSecs: 3600,
      idempotencyKey: key,
    });
    const repeated = await admin.publish({
      toTags: ['eu'],
      type: 'alarm',
      payload: { door: 'front' },
      ttlSecs: 3600,
      idempotencyKey: key,
    });
    assert.equal(repeated.publish_id, published.publish_id, 'the same key publishes once');

    let status = await admin.publishStatus(published.publish_id);
    assert.equal(status.state, 'done');
    assert.equal(status.recipients, 2);
    assert.equal(status.delivered, 2);
    assert.equal(status.acknowledged, 0);
    assert.deepEqual(status.audience, { to_tags: ['eu'] });
    assert.ok(status.expires_at);
    assert.equal(publishFinished(status), false);

    for (const c of [client, other]) {
      const page = await c.poll();
      assert.equal(page.messages.length, 1, 'exactly once');
      assert.deepEqual([page.messages[0].type, page.messages[0].payload], ['alarm', { door: 'front' }]);
      await c.ack(page.nextCursor);
    }
    assert.equal(await untagged.poll(), null, 'the untagged client got nothing');

    status = await admin.publishStatus(published.publish_id);
    assert.equal(status.acknowledged, 2);
    assert.equal(publishFinished(status), true);
    const rows = [];
    for await (const row of admin.recipients(published.publish_id, { limit: 1 })) rows.push(row);
    assert.deepEqual(rows.map((r) => r.client_id).sort(), [client.clientId, other.clientId].sort());
    assert.ok(rows.every((r) => r.status === 'acknowledged' && Number.isInteger(r.message_id)));
  });

  it('rotates: the old token is refused and a waiting message decrypts with the new key', async () => {
    await admin.publish({ toClientIds: [client.clientId], type: 'pending', payload: 'before the rotation' });
    const old = { ...client.credentials };
    const fresh = await client.rotate({ fingerprint: randomFingerprint() });
    assert.equal(fresh.client_id, old.client_id);
    assert.notEqual(fresh.api_token, old.api_token);
    const stale = new PigeonholeClient(server.url, old);
    await assert.rejects(stale.poll(), (e) => e instanceof ApiError && e.status === 401 && e.code === 'unauthorized');
    const page = await client.poll();
    assert.deepEqual(
      page.messages.map((m) => m.payload),
      ['before the rotation'],
    );
    await client.ack(page.nextCursor);
  });

  it('reports errors as ApiError, and refuses what it must not send', async () => {
    const wrong = new PigeonholeAdmin(server.url, { adminToken: 'wrong', operatorToken: 'wrong', attempts: 1 });
    await assert.rejects(wrong.listClients(), (e) => e instanceof ApiError && e.status === 401);
    await assert.rejects(wrong.publishStatus('00000000-0000-4000-8000-000000000000'), (e) => e.status === 401);
    await assert.rejects(
      admin.publishStatus('00000000-0000-4000-8000-000000000000'),
      (e) => e instanceof ApiError && e.status === 404 && e.code === 'not_found',
    );
    await assert.rejects(new PigeonholeAdmin(server.url).listClients(), /needs the operator token/);
    await assert.rejects(new PigeonholeAdmin(server.url).publishStatus('x'), /needs the admin token/);

    assert.throws(() => publishBody({ type: 't', payload: 1 }), /exactly one audience/);
    assert.throws(() => publishBody({ toAll: true, toTags: ['eu'], type: 't', payload: 1 }), /exactly one audience/);
    assert.throws(() => publishBody({ toAll: true, type: '', payload: 1 }), /type/);
    assert.throws(() => publishBody({ toAll: true, type: 't' }), /payload/);
    assert.throws(() => publishBody({ toAll: true, type: 't', payload: 1, ttlSecs: 0 }), /ttlSecs/);
    assert.deepEqual(publishBody({ toAll: true, type: 't', payload: null, ttlSecs: 60 }), {
      to_all: true,
      type: 't',
      payload: null,
      ttl_secs: 60,
    });
    assert.equal(validTag('door-sensors.eu_1'), true);
    assert.equal(validTag('EU'), false);
    assert.equal(validTag(''), false);

    const far = new PigeonholeClient('http://192.0.2.10:8080', client.credentials);
    await assert.rejects(far.poll(), InsecureUrlError);
    const closed = new PigeonholeClient('http://127.0.0.1:9', client.credentials, { timeoutMs: 3000 });
    await assert.rejects(closed.poll(), (e) => e instanceof ApiError && e.kind === 'network');
  });

  it("runs the README's examples as written", () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const section = readme.slice(
      readme.indexOf('## `pigeonhole.js` in your project'),
      readme.indexOf('## The client page'),
    );
    const blocks = [...section.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
    assert.equal(blocks.length, 2, 'register/listen/send, then admin and operator');
    const lines = blocks.join('\n').split('\n');
    const moduleUrl = new URL('../pigeonhole.js', import.meta.url).href;
    // Only the package name, the server's address and the tokens are filled
    // in; the listen loop the example starts is stopped at the end.
    const source = [
      ...lines.filter((l) => l.startsWith('import ')).map((l) => l.replace("'pigeonhole-client'", `'${moduleUrl}'`)),
      `const ADMIN_TOKEN = ${JSON.stringify(ADMIN_TOKEN)}, OPERATOR_TOKEN = ${JSON.stringify(OPERATOR_TOKEN)};`,
      ...lines.filter((l) => !l.startsWith('import ')).map((l) => l.replaceAll('http://127.0.0.1:8080', server.url)),
      'stop.abort();',
    ].join('\n');
    const dir = mkdtempSync(join(tmpdir(), 'pigeonhole-readme-'));
    try {
      const file = join(dir, 'example.mjs');
      writeFileSync(file, source);
      const run = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 30000 });
      assert.equal(run.status, 0, `${run.stderr}\n--- example ---\n${source}`);
      assert.match(run.stdout, /^(true|false) \d+ \d+$/m, 'the status line');
      assert.match(run.stdout, /^[0-9a-f-]{36} (delivered|acknowledged)$/m, 'one recipient');
      assert.match(run.stdout, /^1 status \{ battery: 87 \}$/m, 'what it sent');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('deletes a client: its token stops working and it leaves the listing', async () => {
    await admin.deleteClient(client.clientId);
    await assert.rejects(client.poll(), (e) => e instanceof ApiError && e.status === 401);
    const listed = await admin.allClients();
    assert.ok(!listed.some((c) => c.id === client.clientId));
    await assert.rejects(admin.deleteClient(client.clientId), (e) => e.status === 404);
    await assert.rejects(admin.sent(client.clientId), (e) => e.status === 404);
  });
});
