// The browser client's protocol module under Node's Web Crypto: the format
// vectors shared with the Rust server and the Python client, the code-point
// key order of the canonical AAD, the poll backoff schedule, the plain-http
// rule, and rotate() against a stubbed fetch.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  ApiError,
  Backoff,
  InsecureUrlError,
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
  open,
  rotate,
  seal,
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
