// The browser client's protocol module under Node's Web Crypto: the format
// vectors shared with the Rust server and the Python client, the code-point
// key order of the canonical AAD, the poll backoff schedule, the plain-http
// rule, and against a stubbed fetch rotate(), the retries (one
// Idempotency-Key per publish) and the listen loop.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  ApiError,
  Backoff,
  DecryptionError,
  InsecureUrlError,
  PigeonholeAdmin,
  PigeonholeClient,
  apiBase,
  apiRequest,
  b64decode,
  b64encode,
  canonicalAadText,
  checkTransport,
  compareCodePoints,
  decryptDelivered,
  encryptOutgoing,
  importKey,
  insecureHttpHost,
  intervalFromQuery,
  isLoopbackHost,
  jittered,
  open,
  rotate,
  seal,
  sleep,
} from '../pigeonhole.js';

const vectors = JSON.parse(
  readFileSync(new URL('../../../shared/tests/data/pigeonhole_format_vectors.json', import.meta.url), 'utf8'),
);

test('every format vector: canonical aad, encryption and decryption', async () => {
  assert.ok(vectors.length >= 6);
  for (const v of vectors) {
    const key = await importKey(v.personal_token);
    assert.equal(canonicalAadText(v.aad), v.aad_bytes, v.description);
    const sealed = await seal(key, new TextEncoder().encode(v.plaintext), v.aad, b64decode(v.nonce));
    assert.equal(sealed.ciphertext, v.ciphertext, v.description);
    assert.equal(sealed.tag, v.tag, v.description);
    assert.equal(new TextDecoder().decode(await open(key, v)), v.plaintext, v.description);
  }
});

test('aad {} and null authenticate different bytes', async () => {
  assert.equal(canonicalAadText({}), '{}');
  assert.equal(canonicalAadText(null), '');
  assert.equal(canonicalAadText(undefined), '');
});

test('aad keys are sorted by code point, not by UTF-16 code unit', () => {
  const astral = '\u{1F600}'; // surrogates D83D DE00
  const bmpHigh = '\uFF61';
  assert.deepEqual([astral, bmpHigh].sort(), [astral, bmpHigh], 'default sort is UTF-16 order');
  assert.deepEqual([astral, bmpHigh].sort(compareCodePoints), [bmpHigh, astral]);
  assert.equal(canonicalAadText({ [astral]: 1, [bmpHigh]: 2, a: true }), `{"a":true,"${bmpHigh}":2,"${astral}":1}`);
  assert.equal(compareCodePoints('ab', 'abc'), -1);
  assert.equal(compareCodePoints('abc', 'abc'), 0);
});

test('aad values: strings left unescaped except what JSON requires; no floats, null or nesting', () => {
  assert.equal(canonicalAadText({ s: 'café ✓ / "q" \\ \n\u0001' }), '{"s":"café ✓ / \\"q\\" \\\\ \\n\\u0001"}');
  assert.throws(() => canonicalAadText({ f: 1.5 }));
  assert.throws(() => canonicalAadText({ n: null }));
  assert.throws(() => canonicalAadText({ a: [1] }));
  assert.throws(() => canonicalAadText({ o: {} }));
  assert.throws(() => canonicalAadText([1]));
});

test('a delivered message is checked against its envelope before it is trusted', async () => {
  const v = vectors[0];
  const key = await importKey(v.personal_token);
  const message = { ...v, id: v.aad.id, created_at: v.aad.created_at, type: 'greeting' };
  const plain = await decryptDelivered(key, message, v.aad.client_id);
  assert.deepEqual(plain, { type: 'greeting', payload: { text: 'hi' } });
  await assert.rejects(decryptDelivered(key, message, '00000000-0000-4000-8000-000000000002'), /aad does not match/);
  await assert.rejects(decryptDelivered(key, { ...message, id: 2 }, v.aad.client_id), /aad does not match/);
  await assert.rejects(
    decryptDelivered(key, { ...message, aad: { ...message.aad, extra: 1 } }, v.aad.client_id),
    /aad does not match/,
  );
  const bad = b64decode(message.tag);
  bad[0] ^= 1;
  await assert.rejects(decryptDelivered(key, { ...message, tag: b64encode(bad) }, v.aad.client_id), /decryption failed/);
});

test('outgoing messages use a fresh nonce and bind the sender id', async () => {
  const key = await importKey(vectors[0].personal_token);
  const id = '00000000-0000-4000-8000-000000000001';
  const a = await encryptOutgoing(key, id, 'note', { text: 'x' });
  const b = await encryptOutgoing(key, id, 'note', { text: 'x' });
  assert.notEqual(a.nonce, b.nonce);
  assert.equal(b64decode(a.nonce).length, 12);
  assert.equal(b64decode(a.tag).length, 16);
  assert.deepEqual(a.aad, { client_id: id });
  const plain = JSON.parse(new TextDecoder().decode(await open(key, a)));
  assert.deepEqual(plain, { type: 'note', payload: { text: 'x' } });
});

test('importKey wants base64 of exactly 32 bytes', async () => {
  await assert.rejects(importKey('AAEC'), /32 bytes/);
  await assert.rejects(importKey('not base64!'), /base64/);
});

test('backoff: 3, 6, 9 … 30 after empty polls; reset after messages; Retry-After; errors', () => {
  const b = new Backoff(3);
  const waits = Array.from({ length: 12 }, () => b.afterEmpty());
  assert.deepEqual(waits, [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 30, 30]);
  assert.equal(b.afterRateLimit(7), 7, 'Retry-After is honoured');
  assert.equal(b.afterEmpty(), 30, 'a 429 leaves the delay unchanged');
  assert.equal(b.afterMessages(), 3);
  assert.equal(b.afterEmpty(), 3);
  assert.equal(b.afterEmpty(), 6);
  b.afterMessages();
  assert.deepEqual([b.afterError(), b.afterError(), b.afterError(), b.afterError(), b.afterError()], [3, 6, 12, 24, 30]);
  assert.equal(b.afterEmpty(), 3, 'a success ends the error backoff');
});

test('jitter: every wait of the schedule is within [0.9, 1.1] of it, draws differ, Retry-After is a floor', () => {
  const b = new Backoff(3);
  for (let n = 1; n <= 12; n += 1) {
    const base = b.afterEmpty();
    const draws = Array.from({ length: 500 }, () => jittered(base));
    for (const d of draws) assert.ok(0.9 * base <= d && d <= 1.1 * base, `step ${n}: ${d}`);
    assert.ok(new Set(draws).size > 100, `step ${n}: draws differ`);
  }
  assert.equal(jittered(30, 0), 27);
  assert.ok(Math.abs(jittered(30, 1) - 33) < 1e-9);
  assert.equal(jittered(30, 0.5), 30);
  assert.ok(Math.abs(jittered(30, 7) - 33) < 1e-9, 'the draw is clamped');
  // Retry-After: never earlier than the server asked.
  for (let i = 0; i < 500; i += 1) {
    const d = jittered(b.afterRateLimit(20), Math.random(), 20);
    assert.ok(20 <= d && d <= 22, `${d}`);
  }
  assert.equal(jittered(9, 0, 20), 20);
});

test('?interval= scales the schedule for tests and demos', () => {
  assert.equal(intervalFromQuery(''), 3);
  assert.equal(intervalFromQuery('?interval=0.2'), 0.2);
  assert.equal(intervalFromQuery('?interval=0'), 3);
  assert.equal(intervalFromQuery('?interval=abc'), 3);
  const b = new Backoff(intervalFromQuery('?interval=0.2'));
  const waits = Array.from({ length: 11 }, () => Math.round(b.afterEmpty() * 10) / 10);
  assert.deepEqual(waits, [0.2, 0.4, 0.6, 0.8, 1, 1.2, 1.4, 1.6, 1.8, 2, 2]);
});

test('plain http:// only to loopback unless allowed', async () => {
  for (const host of ['localhost', 'LOCALHOST', 'localhost.', '127.0.0.1', '127.255.0.9', '[::1]', '::1']) {
    assert.equal(isLoopbackHost(host), true, host);
  }
  for (const host of ['10.0.0.1', '192.168.1.10', '0.0.0.0', '[::]', '[::ffff:7f00:1]', 'example.com', 'localhost.example.com', '1127.0.0.1', '']) {
    assert.equal(isLoopbackHost(host), false, host);
  }
  for (const url of ['http://127.0.0.1:8080/api/v1', 'http://localhost:8080', 'http://[::1]:8080', 'http://127.1', 'https://192.0.2.10/api/v1']) {
    assert.equal(insecureHttpHost(url), null, url);
    checkTransport(url);
  }
  assert.equal(insecureHttpHost('http://192.0.2.10:8080/api/v1'), '192.0.2.10');
  assert.equal(insecureHttpHost('http://pigeonhole.example.com/api/v1'), 'pigeonhole.example.com');
  assert.throws(() => checkTransport('http://192.0.2.10:8080/api/v1'), (e) => {
    assert.ok(e instanceof InsecureUrlError);
    assert.equal(e.host, '192.0.2.10');
    assert.match(e.message, /personal key/);
    assert.match(e.message, /Allow plain http/);
    return true;
  });
  checkTransport('http://192.0.2.10:8080/api/v1', true);

  // apiRequest refuses before fetch is ever called, unless allowed.
  const realFetch = globalThis.fetch;
  const calls = [];
  globalThis.fetch = async (url, init) => {
    calls.push([url, init]);
    return new Response(null, { status: 204 });
  };
  try {
    await assert.rejects(
      apiRequest('http://192.0.2.10:8080/api/v1', 'POST', '/clients/register', { body: { fingerprint: 'x'.repeat(8) } }),
      InsecureUrlError,
    );
    assert.equal(calls.length, 0, 'nothing was sent');
    const answer = await apiRequest('http://192.0.2.10:8080/api/v1', 'GET', '/messages/poll', { allowInsecureHttp: true });
    assert.equal(answer.status, 204);
    assert.equal(calls.length, 1);
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('rotate() posts JSON with the client credentials and returns the new ones', async () => {
  const realFetch = globalThis.fetch;
  const creds = { client_id: '00000000-0000-4000-8000-000000000001', api_token: 'pht_old', personal_token: 'x' };
  const fresh = { client_id: creds.client_id, api_token: 'pht_new', personal_token: b64encode(new Uint8Array(32).fill(9)) };
  const calls = [];
  let reply = () => new Response(JSON.stringify(fresh), { status: 200, headers: { 'Content-Type': 'application/json' } });
  globalThis.fetch = async (url, init) => {
    calls.push({ url, init });
    return reply();
  };
  try {
    assert.deepEqual(await rotate('http://127.0.0.1:8080/api/v1', creds), fresh);
    assert.deepEqual(await rotate('http://127.0.0.1:8080/api/v1', creds, { fingerprint: 'a-new-fingerprint' }), fresh);
    assert.equal(calls[0].url, 'http://127.0.0.1:8080/api/v1/clients/rotate');
    assert.equal(calls[0].init.method, 'POST');
    assert.equal(calls[0].init.headers['Content-Type'], 'application/json');
    assert.equal(calls[0].init.headers.Authorization, 'Bearer pht_old');
    assert.equal(calls[0].init.headers['X-Client-Id'], creds.client_id);
    assert.equal(calls[0].init.body, '{}');
    assert.equal(calls[1].init.body, '{"fingerprint":"a-new-fingerprint"}');

    // Not credentials of the same client: refused.
    reply = () => new Response(JSON.stringify({ ...fresh, client_id: '00000000-0000-4000-8000-000000000002' }), { status: 200 });
    await assert.rejects(rotate('http://127.0.0.1:8080/api/v1', creds), /not 00000000-0000-4000-8000-000000000001/);
    reply = () => new Response(JSON.stringify({ ...fresh, personal_token: 'AAEC' }), { status: 200 });
    await assert.rejects(rotate('http://127.0.0.1:8080/api/v1', creds), /32 bytes/);
    reply = () =>
      new Response(JSON.stringify({ error: { code: 'unauthorized', message: 'bad token' } }), {
        status: 401,
        headers: { 'Content-Type': 'application/json' },
      });
    await assert.rejects(rotate('http://127.0.0.1:8080/api/v1', creds), (e) => e instanceof ApiError && e.status === 401);
    const before = calls.length;
    await assert.rejects(rotate('http://192.0.2.10/api/v1', creds), InsecureUrlError);
    assert.equal(calls.length, before, 'nothing was sent over plain http');
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('every body is sent as Content-Type: application/json', async () => {
  const realFetch = globalThis.fetch;
  const seen = [];
  globalThis.fetch = async (url, init) => {
    seen.push(init);
    return new Response('{"id": 1}', { status: 201 });
  };
  try {
    for (const path of ['/clients/register', '/messages/send', '/messages/ack', '/clients/rotate']) {
      await apiRequest('http://127.0.0.1:8080/api/v1', 'POST', path, { body: {} });
    }
    assert.equal(seen.length, 4);
    for (const init of seen) assert.equal(init.headers['Content-Type'], 'application/json');
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('withRetries: what a retry may fix is retried (Retry-After first), the rest is not', async () => {
  const realFetch = globalThis.fetch;
  const replies = [];
  const calls = [];
  globalThis.fetch = async (url, init) => {
    calls.push(init);
    const next = replies.shift();
    if (next === 'network') throw new TypeError('fetch failed');
    return next();
  };
  const json = (status, body, headers = {}) => () =>
    new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
  const base = 'http://127.0.0.1:8080/api/v1';
  const admin = new PigeonholeAdmin(base, { adminToken: 'admin', attempts: 3 });
  try {
    // A publish whose answer was lost is resent with the same Idempotency-Key.
    replies.push('network', json(503, { error: { code: 'unavailable', message: 'x' } }, { 'Retry-After': '1' }));
    replies.push(json(202, { publish_id: 'p', recipients: 1 }));
    const started = Date.now();
    assert.deepEqual(await admin.publish({ toAll: true, type: 't', payload: null }), { publish_id: 'p', recipients: 1 });
    assert.ok(Date.now() - started >= 1900, 'waited 1 s, then Retry-After: 1');
    assert.equal(calls.length, 3);
    const keys = new Set(calls.map((c) => c.headers['Idempotency-Key']));
    assert.equal(keys.size, 1, 'one key for every attempt');
    assert.match([...keys][0], /^[A-Za-z0-9_-]{22}$/);
    assert.equal(calls[0].headers['X-Admin-Token'], 'admin');
    assert.equal(calls[0].body, '{"to_all":true,"type":"t","payload":null}');

    // A 422 is final; so is a 429 that asks for more than a minute.
    calls.length = 0;
    replies.push(json(422, { error: { code: 'validation_failed', message: 'bad' } }));
    await assert.rejects(admin.publishStatus('p'), (e) => e instanceof ApiError && e.status === 422 && e.code === 'validation_failed');
    replies.push(json(429, { error: { code: 'rate_limited', message: 'slow' } }, { 'Retry-After': '120' }));
    await assert.rejects(admin.publishStatus('p'), (e) => e.status === 429 && e.retryAfter === 120);
    assert.equal(calls.length, 2, 'no retries');

    // attempts: 1 is one call; a missing token is refused before any.
    replies.push('network');
    await assert.rejects(admin.publishStatus('p', { attempts: 1 }), (e) => e.kind === 'network');
    await assert.rejects(admin.listClients(), /operator token/);
    assert.equal(calls.length, 3);
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('listen: hands verified messages over, skips a forged one, acks next_cursor, waits out a 429', async () => {
  const v = vectors[0];
  const realFetch = globalThis.fetch;
  const requests = [];
  const replies = [];
  globalThis.fetch = async (url, init) => {
    requests.push([init.method, url.replace(/^.*\/api\/v1/, ''), init.body]);
    return replies.shift()();
  };
  const creds = { client_id: v.aad.client_id, api_token: 'pht_x', personal_token: v.personal_token };
  const good = { ...v, id: v.aad.id, created_at: v.aad.created_at, type: 'greeting' };
  const forged = { ...good, id: v.aad.id + 1 }; // its aad names another id
  replies.push(
    () => new Response('{"error":{"code":"rate_limited","message":"x"}}', { status: 429, headers: { 'Retry-After': '1' } }),
    () => new Response(JSON.stringify({ messages: [good, forged], next_cursor: forged.id + 5 }), { status: 200 }),
    () => new Response(JSON.stringify({ cursor: forged.id + 5 }), { status: 200 }),
    () => new Response(null, { status: 204 }),
  );
  const client = new PigeonholeClient('http://127.0.0.1:8080', creds);
  const seen = [];
  const invalid = [];
  const waits = [];
  try {
    const stats = await client.listen((m) => seen.push(m), {
      step: 0.01,
      maxPolls: 3,
      jitter: () => 0.5, // a factor of exactly 1
      onWait: (seconds, reason) => waits.push([seconds, reason]),
      onInvalid: (message, error) => invalid.push([message.id, error instanceof DecryptionError, error.messageId]),
    });
    assert.deepEqual(seen, [{ id: good.id, type: 'greeting', payload: { text: 'hi' }, created_at: good.created_at }]);
    assert.deepEqual(invalid, [[forged.id, true, forged.id]]);
    assert.deepEqual(stats, { polls: 3, messages: 1, invalid: 1, errors: 0, rateLimited: 1, cursor: forged.id + 5 });
    assert.deepEqual(waits[0], [1, 'rate_limited']);
    assert.deepEqual(
      requests.map(([method, path, body]) => [method, path, body]),
      [
        ['GET', '/messages/poll?limit=100', undefined],
        ['GET', '/messages/poll?limit=100', undefined],
        ['POST', '/messages/ack', JSON.stringify({ last_received_id: forged.id + 5 })],
        ['GET', `/messages/poll?limit=100&cursor=${forged.id + 5}`, undefined],
      ],
    );
  } finally {
    globalThis.fetch = realFetch;
  }
});

test('helpers: apiBase, intervalFromQuery fallback, sleep ends on abort', async () => {
  assert.equal(apiBase('http://127.0.0.1:8080'), 'http://127.0.0.1:8080/api/v1');
  assert.equal(apiBase('https://x.example/api/v1/'), 'https://x.example/api/v1');
  assert.throws(() => apiBase('ftp://x'), /http/);
  assert.equal(intervalFromQuery('', 1), 1);
  assert.equal(intervalFromQuery('?interval=0.5', 1), 0.5);
  const stop = new AbortController();
  const started = Date.now();
  setTimeout(() => stop.abort(), 20);
  await sleep(30, stop.signal);
  assert.ok(Date.now() - started < 5000);
});
