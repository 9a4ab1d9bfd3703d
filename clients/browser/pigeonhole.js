// @ts-check
/**
 * @module pigeonhole
 *
 * The Pigeonhole protocol as one ES module: base64, the canonical AAD,
 * AES-256-GCM through Web Crypto, the HTTP calls, the poll backoff, and on
 * top of them a client (`PigeonholeClient`: register, poll, decrypt, ack,
 * send, listen, rotate) and the admin and operator calls (`PigeonholeAdmin`:
 * publish, publish status, what a client sent, the clients listing, tags,
 * delete).
 *
 * No DOM access and no dependencies: the same file runs in the browser (the
 * client page and the operators' console import it) and under Node >= 20
 * (`globalThis.crypto`, `fetch`). The wire format is described in
 * docs/encryption.md and docs/api.md; this file follows them exactly.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const KEY_BYTES = 32;
/** The `limit` the client asks for on every poll. */
export const POLL_LIMIT = 100;
/** The path every API route lives under. */
export const API_PREFIX = '/api/v1';

/**
 * What register and rotate return, and what every client call carries.
 * @typedef {object} Credentials
 * @property {string} client_id UUID of the client.
 * @property {string} api_token Bearer token (`pht_…`); treat it as opaque.
 * @property {string} personal_token Standard base64 of the 32-byte AES key.
 */

/**
 * An `aad` object: string, integer and boolean values only.
 * @typedef {Record<string, string | number | boolean>} Aad
 */

/**
 * A sealed body: what `POST /messages/send` takes and a poll delivers.
 * @typedef {object} Sealed
 * @property {string} ciphertext Standard base64, without the tag.
 * @property {string} nonce Standard base64 of 12 bytes.
 * @property {string} tag Standard base64 of 16 bytes.
 * @property {Aad | null} [aad]
 */

/**
 * A message as a poll delivers it (still encrypted).
 * @typedef {Sealed & {id: number, type: string, created_at: string}} DeliveredMessage
 */

/**
 * A delivered message once verified and decrypted.
 * @typedef {object} Message
 * @property {number} id Its id in this client's inbox.
 * @property {string} type From the plaintext (the authoritative copy).
 * @property {unknown} payload Any JSON value.
 * @property {string} created_at RFC 3339 UTC.
 */

/**
 * A 200 poll page: acknowledge `next_cursor`, not the last message's id.
 * @typedef {{messages: DeliveredMessage[], next_cursor: number}} PollPage
 */

// ---------------------------------------------------------------- base64

/**
 * Standard base64 (`+/`) with `=` padding, as every binary field uses.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function b64encode(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    // apply() takes a typed array as it takes an array of numbers.
    binary += String.fromCharCode.apply(null, /** @type {number[]} */ (/** @type {unknown} */ (bytes.subarray(i, i + 0x8000))));
  }
  return btoa(binary);
}

/**
 * Decodes standard base64; throws a readable error on anything else.
 * @param {unknown} text
 * @param {string} [what] Named in the error.
 * @returns {Uint8Array}
 */
export function b64decode(text, what = 'value') {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    throw new Error(`${what} is not standard base64`);
  }
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** @param {Uint8Array} bytes */
function b64url(bytes) {
  return b64encode(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * A random secret suitable as a registration fingerprint (32 bytes, base64url).
 * @returns {string}
 */
export function randomFingerprint() {
  return b64url(crypto.getRandomValues(new Uint8Array(32)));
}

/**
 * A fresh `Idempotency-Key` for one logical publish (16 random bytes,
 * base64url: visible ASCII as the API asks). Works where
 * `crypto.randomUUID` does not (a page over plain http).
 * @returns {string}
 */
export function newIdempotencyKey() {
  return b64url(crypto.getRandomValues(new Uint8Array(16)));
}

// ---------------------------------------------------------- canonical AAD

/**
 * Orders strings by Unicode code point (the same as ordering their UTF-8
 * bytes). JavaScript's default sort compares UTF-16 code units, which puts
 * astral characters (surrogate pairs, 0xD800–0xDFFF) before U+E000–U+FFFF.
 * @param {string} a
 * @param {string} b
 * @returns {number}
 */
export function compareCodePoints(a, b) {
  const left = a[Symbol.iterator]();
  const right = b[Symbol.iterator]();
  for (;;) {
    const x = left.next();
    const y = right.next();
    if (x.done || y.done) return x.done ? (y.done ? 0 : -1) : 1;
    const cx = /** @type {number} */ (x.value.codePointAt(0));
    const cy = /** @type {number} */ (y.value.codePointAt(0));
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

/**
 * The canonical text of an `aad` object: keys sorted by code point, no
 * whitespace, non-ASCII left as is. JSON.stringify escapes exactly what JSON
 * requires (`"`, `\`, controls below U+0020) and nothing else, like Python's
 * `json.dumps(..., ensure_ascii=False)` and serde_json.
 * @param {Aad | null | undefined} aad
 * @returns {string}
 */
export function canonicalAadText(aad) {
  if (aad === null || aad === undefined) return '';
  if (typeof aad !== 'object' || Array.isArray(aad)) {
    throw new TypeError('aad must be an object or null');
  }
  const members = Object.keys(aad)
    .sort(compareCodePoints)
    .map((key) => {
      const value = aad[key];
      let text;
      if (typeof value === 'string' || typeof value === 'boolean') {
        text = JSON.stringify(value);
      } else if (typeof value === 'number' && Number.isSafeInteger(value)) {
        text = String(value);
      } else {
        throw new TypeError(`aad.${key} must be a string, an integer or a boolean`);
      }
      return `${JSON.stringify(key)}:${text}`;
    });
  return `{${members.join(',')}}`;
}

/**
 * The associated data bytes: empty for a null/absent aad.
 * @param {Aad | null | undefined} aad
 * @returns {Uint8Array}
 */
export function canonicalAad(aad) {
  return encoder.encode(canonicalAadText(aad));
}

// ------------------------------------------------------------ AES-256-GCM

/**
 * The bytes as Web Crypto's parameter type (for the type checker only:
 * TypeScript's DOM types want a view of an ArrayBuffer, not of any buffer).
 * @param {Uint8Array} bytes
 * @returns {BufferSource}
 */
function bufferSource(bytes) {
  return /** @type {BufferSource} */ (bytes);
}

/**
 * Imports `personal_token` (base64 of 32 bytes) as a non-extractable AES-GCM key.
 * @param {string} personalToken
 * @returns {Promise<CryptoKey>}
 */
export async function importKey(personalToken) {
  const raw = b64decode(String(personalToken).trim(), 'personal_token');
  if (raw.length !== KEY_BYTES) {
    throw new Error(`personal_token must decode to ${KEY_BYTES} bytes (got ${raw.length})`);
  }
  return crypto.subtle.importKey('raw', bufferSource(raw), { name: 'AES-GCM' }, false, ['encrypt', 'decrypt']);
}

/**
 * Encrypts plaintext bytes. Web Crypto returns ciphertext || tag; the wire
 * format carries them separately. `nonce` is only passed by tests (vectors).
 * @param {CryptoKey} key
 * @param {Uint8Array} plaintext
 * @param {Aad | null | undefined} aad
 * @param {Uint8Array} [nonce]
 * @returns {Promise<Sealed>}
 */
export async function seal(key, plaintext, aad, nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES))) {
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt(
      { name: 'AES-GCM', iv: bufferSource(nonce), additionalData: bufferSource(canonicalAad(aad)), tagLength: 128 },
      key,
      bufferSource(plaintext),
    ),
  );
  /** @type {Sealed} */
  const body = {
    ciphertext: b64encode(sealed.subarray(0, sealed.length - TAG_BYTES)),
    nonce: b64encode(nonce),
    tag: b64encode(sealed.subarray(sealed.length - TAG_BYTES)),
  };
  if (aad !== null && aad !== undefined) body.aad = aad;
  return body;
}

/**
 * Decrypts `{ciphertext, nonce, tag, aad}` to the plaintext bytes.
 * @param {CryptoKey} key
 * @param {Sealed} message
 * @returns {Promise<Uint8Array>}
 */
export async function open(key, message) {
  const ciphertext = b64decode(message.ciphertext, 'ciphertext');
  const nonce = b64decode(message.nonce, 'nonce');
  const tag = b64decode(message.tag, 'tag');
  if (nonce.length !== NONCE_BYTES) throw new Error(`nonce must be ${NONCE_BYTES} bytes`);
  if (tag.length !== TAG_BYTES) throw new Error(`tag must be ${TAG_BYTES} bytes`);
  const joined = new Uint8Array(ciphertext.length + TAG_BYTES);
  joined.set(ciphertext);
  joined.set(tag, ciphertext.length);
  try {
    return new Uint8Array(
      await crypto.subtle.decrypt(
        { name: 'AES-GCM', iv: bufferSource(nonce), additionalData: bufferSource(canonicalAad(message.aad)), tagLength: 128 },
        key,
        bufferSource(joined),
      ),
    );
  } catch {
    throw new Error('decryption failed: wrong personal_token, or the message was tampered with');
  }
}

/**
 * The body of `POST /messages/send`: a fresh nonce, aad binding it to the sender.
 * @param {CryptoKey} key
 * @param {string} clientId
 * @param {string} type
 * @param {unknown} payload
 * @returns {Promise<Sealed>}
 */
export async function encryptOutgoing(key, clientId, type, payload) {
  const plaintext = encoder.encode(JSON.stringify({ type, payload }));
  return seal(key, plaintext, { client_id: clientId });
}

/** A delivered message that failed verification: its aad, its tag or its plaintext. */
export class DecryptionError extends Error {
  /**
   * @param {string} message
   * @param {number | null} [messageId]
   */
  constructor(message, messageId = null) {
    super(message);
    this.name = 'DecryptionError';
    /** The message's id, when it had one. */
    this.messageId = messageId;
  }
}

/**
 * Checks a delivered message's aad against its envelope and decrypts it.
 * Returns `{type, payload}` from the plaintext (the authoritative type).
 * Rejects with a DecryptionError.
 * @param {CryptoKey} key
 * @param {DeliveredMessage} message
 * @param {string} clientId
 * @returns {Promise<{type: string, payload: unknown}>}
 */
export async function decryptDelivered(key, message, clientId) {
  const id = message && Number.isInteger(message.id) ? message.id : null;
  const aad = message.aad;
  /** @type {Aad} */
  const expected = { client_id: clientId, created_at: message.created_at, id: message.id };
  const keys = aad && typeof aad === 'object' && !Array.isArray(aad) ? Object.keys(aad) : null;
  if (
    !aad ||
    !keys ||
    keys.length !== 3 ||
    !Object.keys(expected).every((k) => Object.prototype.hasOwnProperty.call(aad, k) && aad[k] === expected[k])
  ) {
    throw new DecryptionError('aad does not match the message envelope (client_id, created_at, id)', id);
  }
  let plain;
  try {
    plain = JSON.parse(decoder.decode(await open(key, message)));
  } catch (e) {
    if (e instanceof SyntaxError || e instanceof TypeError) throw new DecryptionError('decrypted plaintext is not JSON', id);
    throw new DecryptionError(e instanceof Error ? e.message : String(e), id);
  }
  if (!plain || typeof plain !== 'object' || Array.isArray(plain) || typeof plain.type !== 'string' || !('payload' in plain)) {
    throw new DecryptionError('decrypted plaintext is not {"type", "payload"}', id);
  }
  return { type: plain.type, payload: plain.payload };
}

// ------------------------------------------------------------------- HTTP

/** A failed API call. `kind` is 'http' (with status/code) or 'network'. */
export class ApiError extends Error {
  /**
   * @param {'http' | 'network'} kind
   * @param {string} message
   * @param {{status?: number, code?: string | null, retryAfter?: number | null}} [details]
   */
  constructor(kind, message, { status = 0, code = null, retryAfter = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    /** The HTTP status; 0 for a network error. */
    this.status = status;
    /** The API's `error.code` (`unauthorized`, `rate_limited`, …), when it sent one. */
    this.code = code;
    /** `Retry-After` in whole seconds (at least 1), when the server sent one. */
    this.retryAfter = retryAfter;
  }
}

/**
 * A plain http:// URL to a host that is not loopback, refused because the
 * api_token (and, in the register and rotate answers, the personal key)
 * would cross the network unencrypted. Nothing was sent.
 */
export class InsecureUrlError extends Error {
  /**
   * @param {string} url
   * @param {string} host
   */
  constructor(url, host) {
    super(
      `refusing plain http:// to ${host}: the api_token, and when registering or rotating the personal key, ` +
        'would cross the network unencrypted. Use https://, or tick "Allow plain http://" if you trust every ' +
        `network between this browser and ${host}. localhost, 127.0.0.0/8 and ::1 are always allowed`,
    );
    this.name = 'InsecureUrlError';
    this.url = url;
    this.host = host;
  }
}

/**
 * True for `localhost`, 127.0.0.0/8 and `::1` (brackets allowed): traffic that stays on this machine.
 * @param {string} hostname
 * @returns {boolean}
 */
export function isLoopbackHost(hostname) {
  let host = String(hostname).toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  if (host === 'localhost') return true;
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (host === '::1') return true;
  const octets = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  return octets !== null && octets.slice(1).every((o) => Number(o) <= 255) && Number(octets[1]) === 127;
}

/**
 * The host of `url` when it is plain http:// to a host that is not loopback, else null.
 * @param {string} url
 * @returns {string | null}
 */
export function insecureHttpHost(url) {
  let parsed;
  try {
    parsed = new URL(String(url).trim());
  } catch {
    return null;
  }
  if (parsed.protocol !== 'http:') return null;
  return isLoopbackHost(parsed.hostname) ? null : parsed.hostname;
}

/**
 * Throws InsecureUrlError for plain http:// to a host that is not loopback, unless allowed.
 * @param {string} url
 * @param {boolean} [allowInsecureHttp]
 */
export function checkTransport(url, allowInsecureHttp = false) {
  const host = insecureHttpHost(url);
  if (host !== null && !allowInsecureHttp) throw new InsecureUrlError(String(url).trim(), host);
}

/**
 * Normalises a base URL: trimmed, no trailing slash; throws unless http(s).
 * @param {string} text
 * @returns {string}
 */
export function normaliseBaseUrl(text) {
  const trimmed = String(text).trim().replace(/\/+$/, '');
  let url;
  try {
    url = new URL(trimmed);
  } catch {
    throw new Error('the base URL is not a valid URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error('the base URL must start with http:// or https://');
  }
  return trimmed;
}

/**
 * The API base for a server's address: `http://host:port` and
 * `http://host:port/api/v1` both give `http://host:port/api/v1`.
 * @param {string} url
 * @returns {string}
 */
export function apiBase(url) {
  const base = normaliseBaseUrl(url);
  return base.endsWith(API_PREFIX) ? base : base + API_PREFIX;
}

/**
 * @param {string | null} value
 * @returns {number | null}
 */
function parseRetryAfter(value) {
  if (value === null || value === undefined) return null;
  const seconds = Number.parseInt(value, 10);
  if (Number.isFinite(seconds) && String(seconds) === value.trim()) return Math.max(seconds, 1);
  const date = Date.parse(value);
  return Number.isFinite(date) ? Math.max(Math.ceil((date - Date.now()) / 1000), 1) : null;
}

/**
 * Options of one API call.
 * @typedef {object} RequestOptions
 * @property {unknown} [body] Sent as JSON (`Content-Type: application/json`).
 * @property {Credentials | null} [credentials] Client auth (`Authorization` and `X-Client-Id`).
 * @property {Record<string, string>} [headers] Further headers, e.g. `X-Admin-Token`.
 * @property {AbortSignal} [signal]
 * @property {number} [timeoutMs] Default 15000.
 * @property {boolean} [allowInsecureHttp] Allow plain http:// to a host that is not loopback.
 */

/**
 * One API call. Resolves to `{status, body}` for 2xx (body null for 204);
 * rejects with ApiError otherwise, or with an AbortError when `signal` fires.
 * A body is always sent as `Content-Type: application/json` (the server
 * answers 415 otherwise). Plain http:// to a host that is not loopback
 * rejects with InsecureUrlError, before anything is sent, unless
 * `allowInsecureHttp`.
 * @param {string} baseUrl The API base, ending in `/api/v1`.
 * @param {string} method
 * @param {string} path From the base, with its query string.
 * @param {RequestOptions} [options]
 * @returns {Promise<{status: number, body: any}>}
 */
export async function apiRequest(
  baseUrl,
  method,
  path,
  { body, credentials, headers: extraHeaders, signal, timeoutMs = 15000, allowInsecureHttp = false } = {},
) {
  checkTransport(baseUrl, allowInsecureHttp);
  /** @type {Record<string, string>} */
  const headers = { Accept: 'application/json', ...(extraHeaders || {}) };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (credentials) {
    headers.Authorization = `Bearer ${credentials.api_token}`;
    headers['X-Client-Id'] = credentials.client_id;
  }
  const controller = new AbortController();
  const onAbort = () => controller.abort();
  if (signal) {
    if (signal.aborted) controller.abort();
    signal.addEventListener('abort', onAbort, { once: true });
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  try {
    let response;
    try {
      response = await fetch(baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: controller.signal,
        cache: 'no-store',
        credentials: 'omit',
        referrerPolicy: 'no-referrer',
      });
    } catch (e) {
      if (signal && signal.aborted) throw e;
      if (timedOut) throw new ApiError('network', `no answer from the server within ${timeoutMs / 1000} s`);
      const reason = e instanceof Error ? e.message : String(e);
      throw new ApiError('network', `could not reach ${baseUrl} (${reason})`);
    }
    const text = response.status === 204 ? '' : await response.text();
    let json = null;
    if (text) {
      try {
        json = JSON.parse(text);
      } catch {
        json = null;
      }
    }
    if (response.ok) {
      if (response.status !== 204 && json === null) {
        throw new ApiError('http', `HTTP ${response.status}: the response is not JSON`, { status: response.status });
      }
      return { status: response.status, body: json };
    }
    const error = json && json.error && typeof json.error === 'object' ? json.error : {};
    const message =
      typeof error.message === 'string'
        ? error.message
        : text.trim().slice(0, 200) || response.statusText || 'no details';
    throw new ApiError('http', message, {
      status: response.status,
      code: typeof error.code === 'string' ? error.code : null,
      retryAfter: parseRetryAfter(response.headers.get('Retry-After')),
    });
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener('abort', onAbort);
  }
}

/**
 * True when the same request may succeed later: no answer, a 5xx, or a 429.
 * @param {unknown} error
 * @returns {boolean}
 */
export function isRetryable(error) {
  return error instanceof ApiError && (error.kind === 'network' || error.status >= 500 || error.status === 429);
}

/**
 * Resolves after `seconds`, or at once (without rejecting) when `signal` fires.
 * @param {number} seconds
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
export function sleep(seconds, signal) {
  return new Promise((resolve) => {
    if (signal && signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      if (signal) signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, seconds * 1000));
    if (signal) signal.addEventListener('abort', done, { once: true });
  });
}

/** Retry-After values longer than this (seconds) end the retries. */
export const MAX_RETRY_AFTER = 60;

/**
 * Runs `call` up to `attempts` times while it fails in a way a retry may
 * fix (see isRetryable): after `Retry-After` when the server sent one (up to
 * MAX_RETRY_AFTER), else 1, 2, 4 … s. Only for requests that are safe to
 * repeat.
 * @template T
 * @param {() => Promise<T>} call
 * @param {{attempts?: number, signal?: AbortSignal, onRetry?: (error: ApiError, wait: number, attempt: number) => void}} [options]
 * @returns {Promise<T>}
 */
export async function withRetries(call, { attempts = 3, signal, onRetry } = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (e) {
      if (!isRetryable(e) || attempt >= attempts || (signal && signal.aborted)) throw e;
      const error = /** @type {ApiError} */ (e);
      if (error.retryAfter !== null && error.retryAfter > MAX_RETRY_AFTER) throw e;
      const wait = error.retryAfter ?? 2 ** (attempt - 1);
      if (onRetry) onRetry(error, wait, attempt);
      await sleep(wait, signal);
      if (signal && signal.aborted) throw e;
    }
  }
}

/**
 * The credentials in a register or rotate answer, checked.
 * @param {unknown} body
 * @param {string} what
 * @returns {Credentials}
 */
function credentialsFrom(body, what) {
  /** @type {Record<string, string>} */
  const fresh = {};
  const record = /** @type {Record<string, unknown>} */ (body && typeof body === 'object' ? body : {});
  for (const key of ['client_id', 'api_token', 'personal_token']) {
    const value = record[key];
    if (typeof value !== 'string' || !value) throw new Error(`the ${what} answer has no ${key}`);
    fresh[key] = value;
  }
  const raw = b64decode(fresh.personal_token, 'personal_token');
  if (raw.length !== KEY_BYTES) throw new Error(`the new personal_token is not ${KEY_BYTES} bytes`);
  return { client_id: fresh.client_id, api_token: fresh.api_token, personal_token: fresh.personal_token };
}

/**
 * `POST /clients/register`: creates a client, or returns the existing one
 * for a known fingerprint (`created` false, the same credentials as the
 * first time, the name unchanged). Safe to repeat, so a network error or 5xx
 * is retried.
 * @param {string} baseUrl The API base, ending in `/api/v1`.
 * @param {{fingerprint: string, name?: string | null, adminToken?: string, attempts?: number, signal?: AbortSignal, allowInsecureHttp?: boolean, timeoutMs?: number}} options
 *   `adminToken` exempts the call from the registration limit.
 * @returns {Promise<{credentials: Credentials, created: boolean}>}
 */
export async function register(baseUrl, { fingerprint, name = null, adminToken, attempts = 3, signal, allowInsecureHttp, timeoutMs }) {
  if (typeof fingerprint !== 'string' || !fingerprint) throw new Error('a fingerprint is required');
  const { status, body } = await withRetries(
    () =>
      apiRequest(baseUrl, 'POST', '/clients/register', {
        body: { name, fingerprint },
        headers: adminToken ? { 'X-Admin-Token': adminToken } : undefined,
        signal,
        allowInsecureHttp,
        timeoutMs,
      }),
    { attempts, signal },
  );
  return { credentials: credentialsFrom(body, 'register'), created: status === 201 };
}

/**
 * `POST /clients/rotate`: trades `credentials` for a new api_token and
 * personal key (and, with `fingerprint`, a new fingerprint). Resolves to the
 * new `{client_id, api_token, personal_token}`; from the server's answer on
 * the old token is refused, and messages not yet acknowledged are delivered
 * under the new key. Rejects like apiRequest, or with an Error when the
 * answer is not credentials of the same client.
 * @param {string} baseUrl
 * @param {Credentials} credentials
 * @param {{fingerprint?: string | null, signal?: AbortSignal, allowInsecureHttp?: boolean}} [options]
 * @returns {Promise<Credentials>}
 */
export async function rotate(baseUrl, credentials, { fingerprint = null, signal, allowInsecureHttp = false } = {}) {
  const { body } = await apiRequest(baseUrl, 'POST', '/clients/rotate', {
    body: fingerprint === null || fingerprint === undefined ? {} : { fingerprint },
    credentials,
    signal,
    allowInsecureHttp,
  });
  const record = body && typeof body === 'object' ? body : {};
  for (const key of ['client_id', 'api_token', 'personal_token']) {
    if (typeof record[key] !== 'string' || !record[key]) throw new Error(`the rotate answer has no ${key}`);
  }
  if (record.client_id !== credentials.client_id) {
    throw new Error(`the rotate answer is for client ${record.client_id}, not ${credentials.client_id}`);
  }
  return credentialsFrom(record, 'rotate');
}

// ---------------------------------------------------------------- backoff

/**
 * The short-poll schedule from docs/api.md, in seconds: start at `step`;
 * after an empty poll wait the delay, then add `step`, up to `max`
 * (3, 6, 9 … 30); after messages reset to `step`. A 429, or a 503 with
 * Retry-After, waits as the server asked. Other errors (network, 5xx) back
 * off exponentially from `step`, never below the current delay. The loops
 * multiply every wait by a random factor in [0.9, 1.1] (`jittered`).
 */
export class Backoff {
  /**
   * @param {number} [step]
   * @param {number} [max]
   */
  constructor(step = 3, max = step * 10) {
    this.step = step;
    this.max = max;
    this.delay = step;
    this.errors = 0;
  }

  /** A 204: returns the wait before the next poll, then grows the delay. */
  afterEmpty() {
    this.errors = 0;
    const wait = this.delay;
    this.delay = Math.min(this.delay + this.step, this.max);
    return wait;
  }

  /** A 200 with messages: the delay goes back to the first step. */
  afterMessages() {
    this.errors = 0;
    this.delay = this.step;
    return this.delay;
  }

  /**
   * A 429, or a 503 `unavailable` with Retry-After: wait what the server
   * asked (at least 1 s); the delay is unchanged.
   * @param {number | null} [retryAfter]
   */
  afterRateLimit(retryAfter) {
    return Math.max(retryAfter || this.delay, 1);
  }

  /** A network error or 5xx: step, 2·step, 4·step … capped at max. */
  afterError() {
    this.errors += 1;
    const exponential = this.step * 2 ** Math.min(this.errors - 1, 20);
    return Math.min(this.max, Math.max(this.delay, exponential));
  }
}

/** The range of the random factor `jittered` multiplies a wait by. */
export const JITTER_MIN = 0.9;
export const JITTER_MAX = 1.1;

/**
 * A wait of the poll schedule with jitter: `seconds` multiplied by a factor
 * in [0.9, 1.1], so a fleet restarted together does not poll in lockstep;
 * never less than `floor` (the server's Retry-After: never poll earlier than
 * it asked).
 * @param {number} seconds The wait from `Backoff`.
 * @param {number} [unit] A uniform draw from [0, 1) (clamped); Math.random().
 * @param {number | null} [floor] Seconds the wait may not go below.
 * @returns {number}
 */
export function jittered(seconds, unit = Math.random(), floor = 0) {
  const u = Number.isFinite(unit) ? Math.min(Math.max(unit, 0), 1) : 0.5;
  return Math.max(floor || 0, seconds * (JITTER_MIN + (JITTER_MAX - JITTER_MIN) * u));
}

/**
 * The base step from `?interval=SECONDS` (for demos and tests), or
 * `fallback` (3 s). Accepted range 0.05–60 s; anything else falls back.
 * @param {string} search A query string such as `location.search`.
 * @param {number} [fallback]
 * @returns {number}
 */
export function intervalFromQuery(search, fallback = 3) {
  const raw = new URLSearchParams(search).get('interval');
  if (raw === null || raw.trim() === '') return fallback;
  const value = Number(raw);
  return Number.isFinite(value) && value >= 0.05 && value <= 60 ? value : fallback;
}

// ----------------------------------------------------------------- client

/**
 * What `listen` counted.
 * @typedef {object} ListenStats
 * @property {number} polls
 * @property {number} messages Handed to the handler.
 * @property {number} invalid Failed verification (never handed to the handler).
 * @property {number} errors Network errors and 5xx, retried.
 * @property {number} rateLimited 429s, waited out.
 * @property {number | null} cursor The last cursor acknowledged.
 */

/**
 * Options of `listen`.
 * @typedef {object} ListenOptions
 * @property {AbortSignal} [signal] Ends the loop (also during a wait).
 * @property {number} [step] The schedule's base step in seconds (3).
 * @property {number} [limit] Messages per poll (POLL_LIMIT).
 * @property {number} [maxPolls] Stop after this many polls (tests, scripts).
 * @property {(seconds: number, reason: 'empty' | 'messages' | 'rate_limited' | 'unavailable' | 'error') => void} [onWait]
 * @property {(message: DeliveredMessage, error: DecryptionError) => void} [onInvalid]
 *   A message that failed verification; acknowledged with its page so that it
 *   cannot block the queue. Default: a console warning.
 * @property {(error: unknown) => void} [onError] A poll or ack that failed and will be retried.
 * @property {() => number} [jitter] The uniform [0, 1) draw behind each
 *   wait's jitter factor (Math.random); `() => 0.5` gives no jitter.
 */

/**
 * A registered client: poll, decrypt, ack, send, listen and rotate.
 *
 * ```js
 * const client = await PigeonholeClient.register('http://127.0.0.1:8080', { fingerprint });
 * await client.listen((m) => console.log(m.id, m.type, m.payload), { signal });
 * await client.send('status', { battery: 87 });
 * ```
 */
export class PigeonholeClient {
  /**
   * @param {string} baseUrl The server (`http://host:port`) or its API base (`…/api/v1`).
   * @param {Credentials} credentials
   * @param {{allowInsecureHttp?: boolean, timeoutMs?: number}} [options]
   */
  constructor(baseUrl, credentials, { allowInsecureHttp = false, timeoutMs = 15000 } = {}) {
    for (const key of /** @type {const} */ (['client_id', 'api_token', 'personal_token'])) {
      if (!credentials || typeof credentials[key] !== 'string' || !credentials[key]) {
        throw new Error(`credentials.${key} is missing`);
      }
    }
    this.baseUrl = apiBase(baseUrl);
    this.allowInsecureHttp = allowInsecureHttp;
    this.timeoutMs = timeoutMs;
    /** True when the register call that made this client created it (201). */
    this.created = false;
    /** @type {Credentials} */
    this.credentials = { ...credentials };
    /** @type {Promise<CryptoKey> | null} */
    this._key = null;
  }

  /**
   * Registers (`POST /clients/register`) and returns a client for the
   * credentials. Use a secret, high-entropy fingerprint (randomFingerprint())
   * and keep it: registering with it again returns the same credentials.
   * @param {string} baseUrl
   * @param {{fingerprint: string, name?: string | null, adminToken?: string, allowInsecureHttp?: boolean, timeoutMs?: number, signal?: AbortSignal}} options
   * @returns {Promise<PigeonholeClient>}
   */
  static async register(baseUrl, options) {
    const base = apiBase(baseUrl);
    const { credentials, created } = await register(base, options);
    const client = new PigeonholeClient(base, credentials, options);
    client.created = created;
    return client;
  }

  /** @returns {string} */
  get clientId() {
    return this.credentials.client_id;
  }

  /** The personal key, imported once. */
  key() {
    if (!this._key) this._key = importKey(this.credentials.personal_token);
    return this._key;
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {{body?: unknown, signal?: AbortSignal}} [options]
   */
  _call(method, path, { body, signal } = {}) {
    return apiRequest(this.baseUrl, method, path, {
      body,
      credentials: this.credentials,
      signal,
      timeoutMs: this.timeoutMs,
      allowInsecureHttp: this.allowInsecureHttp,
    });
  }

  /**
   * `GET /messages/poll` as delivered, or null on 204 (nothing new).
   * Without `cursor` the server starts from the acknowledged cursor.
   * @param {{cursor?: number | null, limit?: number, signal?: AbortSignal}} [options]
   * @returns {Promise<PollPage | null>}
   */
  async pollRaw({ cursor = null, limit = POLL_LIMIT, signal } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor !== null && cursor !== undefined) query.set('cursor', String(cursor));
    const { status, body } = await this._call('GET', `/messages/poll?${query}`, { signal });
    if (status === 204) return null;
    if (!body || !Array.isArray(body.messages) || !Number.isInteger(body.next_cursor)) {
      throw new Error('the poll response is not {"messages", "next_cursor"}');
    }
    return body;
  }

  /**
   * Verifies and decrypts one delivered message. Rejects with DecryptionError.
   * @param {DeliveredMessage} message
   * @returns {Promise<Message>}
   */
  async decrypt(message) {
    const plain = await decryptDelivered(await this.key(), message, this.clientId);
    return { id: message.id, type: plain.type, payload: plain.payload, created_at: message.created_at };
  }

  /**
   * Polls once: the verified, decrypted messages in ascending id order, the
   * ones that failed verification, and `nextCursor` to acknowledge once they
   * are processed. Null on 204.
   * @param {{cursor?: number | null, limit?: number, signal?: AbortSignal}} [options]
   * @returns {Promise<{messages: Message[], invalid: {message: DeliveredMessage, error: DecryptionError}[], nextCursor: number} | null>}
   */
  async poll(options = {}) {
    const page = await this.pollRaw(options);
    if (page === null) return null;
    /** @type {Message[]} */
    const messages = [];
    /** @type {{message: DeliveredMessage, error: DecryptionError}[]} */
    const invalid = [];
    for (const raw of page.messages) {
      try {
        messages.push(await this.decrypt(raw));
      } catch (e) {
        if (!(e instanceof DecryptionError)) throw e;
        invalid.push({ message: raw, error: e });
      }
    }
    return { messages, invalid, nextCursor: page.next_cursor };
  }

  /**
   * `POST /messages/ack`: everything up to `lastReceivedId` (a poll's
   * `next_cursor`) is processed. Resolves to the new cursor.
   * @param {number} lastReceivedId
   * @param {{signal?: AbortSignal}} [options]
   * @returns {Promise<number>}
   */
  async ack(lastReceivedId, { signal } = {}) {
    const { body } = await this._call('POST', '/messages/ack', { body: { last_received_id: lastReceivedId }, signal });
    return body.cursor;
  }

  /**
   * The body of a send: `{"type", "payload"}` under this client's key, with
   * a fresh nonce and `aad = {"client_id": <own id>}`.
   * @param {string} type
   * @param {unknown} payload
   * @returns {Promise<Sealed>}
   */
  async encrypt(type, payload) {
    return encryptOutgoing(await this.key(), this.clientId, type, payload);
  }

  /**
   * Encrypts and sends one message (`POST /messages/send`). A network
   * error, 5xx or 429 is retried with the *identical* body, so the server
   * stores it once. Resolves to its id (`duplicate`: a retry the server had
   * already stored).
   * @param {string} type 1–64 characters.
   * @param {unknown} payload Any JSON value.
   * @param {{attempts?: number, signal?: AbortSignal}} [options]
   * @returns {Promise<{id: number, duplicate: boolean}>}
   */
  async send(type, payload, { attempts = 3, signal } = {}) {
    const body = await this.encrypt(type, payload);
    const { status, body: answer } = await withRetries(() => this._call('POST', '/messages/send', { body, signal }), {
      attempts,
      signal,
    });
    return { id: answer.id, duplicate: status === 200 };
  }

  /**
   * Trades the credentials for new ones (`POST /clients/rotate`) and uses
   * them from now on; with `fingerprint` the fingerprint is replaced too.
   * Store the returned credentials: the old token is refused from now on.
   * @param {{fingerprint?: string | null, signal?: AbortSignal}} [options]
   * @returns {Promise<Credentials>}
   */
  async rotate({ fingerprint = null, signal } = {}) {
    const fresh = await rotate(this.baseUrl, this.credentials, {
      fingerprint,
      signal,
      allowInsecureHttp: this.allowInsecureHttp,
    });
    this.credentials = fresh;
    this._key = null;
    return { ...fresh };
  }

  /**
   * Polls with the documented backoff and calls `handler(message)` for each
   * message, in order, then acknowledges the page's `next_cursor`:
   * - after an empty poll wait the delay, then add `step`, up to 10·step
   *   (3, 6, 9 … 30 s); after messages go back to `step`; a full page, or a
   *   page of expired ids only, is followed by another poll at once;
   * - every wait is multiplied by a random factor in [0.9, 1.1] (`jittered`);
   * - a 429, or a 503 with Retry-After, waits as the server asked (never
   *   less), without changing the delay or the cursor;
   * - a network error or another 5xx backs off and the loop goes on;
   * - a message that fails verification goes to `onInvalid`, never to the
   *   handler, and is acknowledged with its page;
   * - if the handler throws, the messages handled before it are acknowledged
   *   and the error propagates; so do other API errors (401, 422).
   * Resolves with the counts when `signal` fires (or after `maxPolls`).
   * @param {(message: Message) => unknown} handler May return a promise; it is awaited.
   * @param {ListenOptions} [options]
   * @returns {Promise<ListenStats>}
   */
  async listen(handler, { signal, step = 3, limit = POLL_LIMIT, maxPolls, onWait, onInvalid, onError, jitter = Math.random } = {}) {
    const backoff = new Backoff(step);
    /** @type {ListenStats} */
    const stats = { polls: 0, messages: 0, invalid: 0, errors: 0, rateLimited: 0, cursor: null };
    /** @type {number | null} */
    let cursor = null; // null: start from the server's acknowledged cursor
    const aborted = () => Boolean(signal && signal.aborted);
    /** @param {number} base @param {'empty' | 'messages' | 'rate_limited' | 'unavailable' | 'error'} reason @param {number | null} [floor] */
    const wait = async (base, reason, floor = 0) => {
      if (maxPolls !== undefined && stats.polls >= maxPolls) return;
      const seconds = jittered(base, jitter(), floor);
      if (onWait) onWait(seconds, reason);
      await sleep(seconds, signal);
    };
    while (!aborted() && (maxPolls === undefined || stats.polls < maxPolls)) {
      stats.polls += 1;
      let page;
      try {
        page = await this.pollRaw({ cursor, limit, signal });
      } catch (e) {
        if (aborted()) break;
        if (e instanceof ApiError && e.status === 429) {
          stats.rateLimited += 1;
          await wait(backoff.afterRateLimit(e.retryAfter), 'rate_limited', e.retryAfter);
          continue;
        }
        if (!isRetryable(e)) throw e;
        stats.errors += 1;
        if (onError) onError(e);
        const error = /** @type {ApiError} */ (e);
        if (error.status === 503 && error.retryAfter) {
          await wait(backoff.afterRateLimit(error.retryAfter), 'unavailable', error.retryAfter);
        } else {
          await wait(backoff.afterError(), 'error');
        }
        continue;
      }
      const moved = page !== null && (cursor === null || page.next_cursor > cursor);
      if (page === null || (page.messages.length === 0 && !moved)) {
        await wait(backoff.afterEmpty(), 'empty');
        continue;
      }
      /** @type {number | null} */
      let handledUpTo = null;
      try {
        for (const raw of page.messages) {
          let message = null;
          try {
            message = await this.decrypt(raw);
          } catch (e) {
            if (!(e instanceof DecryptionError)) throw e;
            stats.invalid += 1;
            if (onInvalid) onInvalid(raw, e);
            else console.warn(`pigeonhole: message ${raw.id} failed verification: ${e.message}`);
          }
          if (message !== null) {
            await handler(message);
            stats.messages += 1;
          }
          if (Number.isInteger(raw.id)) handledUpTo = raw.id;
        }
        // The whole page is handled: move on to next_cursor, which is past
        // the expired ids it skipped.
        handledUpTo = page.next_cursor;
      } finally {
        if (handledUpTo !== null) {
          cursor = cursor === null ? handledUpTo : Math.max(cursor, handledUpTo);
          stats.cursor = cursor;
          try {
            await this.ack(cursor);
          } catch (e) {
            // The next ack covers it; a 401 will show on the next poll.
            if (onError) onError(e);
          }
        }
      }
      backoff.afterMessages();
      if (page.messages.length >= limit || page.messages.length === 0) continue;
      await wait(backoff.delay, 'messages');
    }
    return stats;
  }
}

// ------------------------------------------------------ admin and operator

/** A tag: 1–64 characters of `a-z 0-9 _ . -`. */
export const TAG_PATTERN = /^[a-z0-9_.-]{1,64}$/;
/** At most this many tags per client. */
export const MAX_TAGS = 20;
/** The longest `ttl_secs`: 30 days. */
export const MAX_TTL_SECS = 2592000;

/**
 * The API's rule for a tag.
 * @param {unknown} tag
 * @returns {boolean}
 */
export function validTag(tag) {
  return typeof tag === 'string' && TAG_PATTERN.test(tag);
}

/**
 * A publish as the API takes it.
 * @typedef {object} PublishRequest
 * @property {string[]} [toClientIds] Client ids (1–10000).
 * @property {string[]} [toTags] Tags (1–10): every client carrying any of them.
 * @property {true} [toAll] Every client.
 * @property {string} type 1–64 characters.
 * @property {unknown} payload Any JSON value (null too), ≤ 64 KiB serialized.
 * @property {number | null} [ttlSecs] 1–2592000: recipients that have not acknowledged it by then never get it.
 */

/**
 * The body of `POST /messages/publish`, checked the way the server checks
 * it (one audience, the type's length, the tags, `ttl_secs`). Throws an
 * Error naming the field otherwise.
 * @param {PublishRequest} request
 * @returns {Record<string, unknown>}
 */
export function publishBody({ toClientIds, toTags, toAll, type, payload, ttlSecs = null }) {
  const audiences = [toClientIds !== undefined, toTags !== undefined, toAll !== undefined].filter(Boolean).length;
  if (audiences !== 1) throw new Error('name exactly one audience: toClientIds, toTags or toAll');
  /** @type {Record<string, unknown>} */
  const body = {};
  if (toClientIds !== undefined) {
    if (!Array.isArray(toClientIds) || toClientIds.length === 0) throw new Error('toClientIds must list at least one client id');
    body.to_client_ids = [...toClientIds];
  } else if (toTags !== undefined) {
    if (!Array.isArray(toTags) || toTags.length === 0 || toTags.length > 10) throw new Error('toTags must list 1 to 10 tags');
    const bad = toTags.find((t) => !validTag(t));
    if (bad !== undefined) throw new Error(`not a tag: ${JSON.stringify(bad)} (1–64 characters of a-z 0-9 _ . -)`);
    body.to_tags = [...toTags];
  } else {
    if (toAll !== true) throw new Error('toAll must be true');
    body.to_all = true;
  }
  const length = typeof type === 'string' ? [...type].length : 0;
  if (length < 1 || length > 64) throw new Error('type must be 1 to 64 characters long');
  body.type = type;
  if (payload === undefined) throw new Error('payload is required (null is a payload)');
  body.payload = payload;
  if (ttlSecs !== null && ttlSecs !== undefined) {
    if (!Number.isInteger(ttlSecs) || ttlSecs < 1 || ttlSecs > MAX_TTL_SECS) {
      throw new Error(`ttlSecs must be a whole number of seconds from 1 to ${MAX_TTL_SECS}`);
    }
    body.ttl_secs = ttlSecs;
  }
  return body;
}

/**
 * How far a publish got (`GET /messages/publish/{id}`).
 * @typedef {object} PublishStatus
 * @property {string} publish_id
 * @property {string} type
 * @property {string} created_at
 * @property {{to_client_ids: number} | {to_tags: string[]} | {to_all: true}} audience
 * @property {string | null} expires_at
 * @property {number | null} recipients Null while a tag or everyone audience is being enumerated.
 * @property {number} delivered Includes the acknowledged ones.
 * @property {number} acknowledged
 * @property {number} expired
 * @property {number} unknown
 * @property {number} pending
 * @property {'queued' | 'delivering' | 'done'} state
 * @property {RecipientStatus[]} [recipient_status] With `recipients: true`.
 * @property {string} [next_page_token]
 */

/**
 * One recipient of a publish.
 * @typedef {{client_id: string, message_id: number | null, status: 'pending' | 'delivered' | 'acknowledged' | 'expired' | 'unknown'}} RecipientStatus
 */

/**
 * True once a publish has run its course: the fan-out is done and every
 * recipient that has the message acknowledged it. Nothing changes after that.
 * @param {PublishStatus} status
 * @returns {boolean}
 */
export function publishFinished(status) {
  return status.state === 'done' && status.delivered === status.acknowledged;
}

/**
 * A message a client sent, as `GET /clients/{id}/sent` returns it (opened by the server).
 * @typedef {{id: number, type: string, payload: unknown, aad: Aad, created_at: string}} SentMessage
 */

/**
 * One client in the operators' listing.
 * @typedef {object} ClientInfo
 * @property {string} id
 * @property {string | null} name
 * @property {string} created_at
 * @property {string | null} last_seen_at
 * @property {'online' | 'offline'} status
 * @property {number} sent_head Its newest sent message id (0 when none).
 * @property {string[]} tags
 */

/**
 * The admin and operator calls. The admin token (`X-Admin-Token`) publishes,
 * follows publishes and reads what clients sent; an operator token
 * (`X-Operator-Token`) lists, tags and deletes clients. Give the one(s) you
 * have; a call whose token is missing rejects before anything is sent.
 *
 * Calls that are safe to repeat (every GET, setting tags, and publish, which
 * always carries an `Idempotency-Key`) are retried `attempts` times after a
 * network error, a 5xx or a 429 (see withRetries).
 */
export class PigeonholeAdmin {
  /**
   * @param {string} baseUrl The server (`http://host:port`) or its API base (`…/api/v1`).
   * @param {{adminToken?: string | null, operatorToken?: string | null, allowInsecureHttp?: boolean, timeoutMs?: number, attempts?: number}} [options]
   */
  constructor(baseUrl, { adminToken = null, operatorToken = null, allowInsecureHttp = false, timeoutMs = 15000, attempts = 3 } = {}) {
    this.baseUrl = apiBase(baseUrl);
    this.adminToken = adminToken || null;
    this.operatorToken = operatorToken || null;
    this.allowInsecureHttp = allowInsecureHttp;
    this.timeoutMs = timeoutMs;
    this.attempts = attempts;
  }

  /**
   * @param {'admin' | 'operator'} role
   * @param {string} method
   * @param {string} path
   * @param {{body?: unknown, headers?: Record<string, string>, signal?: AbortSignal, attempts?: number}} [options]
   */
  _call(role, method, path, { body, headers = {}, signal, attempts = this.attempts } = {}) {
    const token = role === 'admin' ? this.adminToken : this.operatorToken;
    if (!token) return Promise.reject(new Error(`this call needs the ${role} token, and none was given`));
    const header = role === 'admin' ? 'X-Admin-Token' : 'X-Operator-Token';
    return withRetries(
      () =>
        apiRequest(this.baseUrl, method, path, {
          body,
          headers: { ...headers, [header]: token },
          signal,
          timeoutMs: this.timeoutMs,
          allowInsecureHttp: this.allowInsecureHttp,
        }),
      { attempts, signal },
    );
  }

  /**
   * `POST /messages/publish` (admin): one message to each client of the
   * audience, encrypted by the server to each one's key. Always sent with
   * an `Idempotency-Key` (a fresh one unless given), so the retries never
   * publish twice; pass your own to retry across processes. `recipients` is
   * null for a tag or everyone audience until the fan-out has counted it.
   * @param {PublishRequest & {idempotencyKey?: string, signal?: AbortSignal, attempts?: number}} request
   * @returns {Promise<{publish_id: string, recipients: number | null}>}
   */
  async publish(request) {
    const body = publishBody(request);
    const key = request.idempotencyKey || newIdempotencyKey();
    const { body: answer } = await this._call('admin', 'POST', '/messages/publish', {
      body,
      headers: { 'Idempotency-Key': key },
      signal: request.signal,
      attempts: request.attempts,
    });
    return answer;
  }

  /**
   * `GET /messages/publish/{id}` (admin): how far a publish got; with
   * `recipients`, also a page of recipients (`recipient_status`, and
   * `next_page_token` while more follow).
   * @param {string} publishId
   * @param {{recipients?: boolean, limit?: number, pageToken?: string | null, signal?: AbortSignal, attempts?: number}} [options]
   * @returns {Promise<PublishStatus>}
   */
  async publishStatus(publishId, { recipients = false, limit, pageToken = null, signal, attempts } = {}) {
    const query = new URLSearchParams();
    if (recipients) query.set('recipients', '1');
    if (limit !== undefined) query.set('limit', String(limit));
    if (pageToken) query.set('page_token', pageToken);
    const text = query.toString();
    const path = `/messages/publish/${encodeURIComponent(publishId)}${text ? `?${text}` : ''}`;
    const { body } = await this._call('admin', 'GET', path, { signal, attempts });
    return body;
  }

  /**
   * Every recipient of a publish, a page at a time. Ends at the last page
   * (or, while the audience is still being enumerated, at an empty one).
   * @param {string} publishId
   * @param {{limit?: number, signal?: AbortSignal}} [options]
   * @returns {AsyncGenerator<RecipientStatus>}
   */
  async *recipients(publishId, { limit = 1000, signal } = {}) {
    /** @type {string | null} */
    let pageToken = null;
    for (;;) {
      const page = await this.publishStatus(publishId, { recipients: true, limit, pageToken, signal });
      const rows = page.recipient_status || [];
      yield* rows;
      if (!page.next_page_token || rows.length === 0) return;
      pageToken = page.next_page_token;
    }
  }

  /**
   * `GET /clients/{id}/sent` (admin): one page of what a client sent after
   * `after`, oldest first, opened by the server; null on 204 (nothing newer).
   * Page on with `after = next_after`.
   * @param {string} clientId
   * @param {{after?: number, limit?: number, signal?: AbortSignal, attempts?: number}} [options]
   * @returns {Promise<{messages: SentMessage[], next_after: number} | null>}
   */
  async sent(clientId, { after = 0, limit, signal, attempts } = {}) {
    const query = new URLSearchParams({ after: String(after) });
    if (limit !== undefined) query.set('limit', String(limit));
    const { status, body } = await this._call('admin', 'GET', `/clients/${encodeURIComponent(clientId)}/sent?${query}`, {
      signal,
      attempts,
    });
    return status === 204 ? null : body;
  }

  /**
   * Everything a client sent after `after`, oldest first.
   * @param {string} clientId
   * @param {{after?: number, limit?: number, signal?: AbortSignal}} [options]
   * @returns {AsyncGenerator<SentMessage>}
   */
  async *iterSent(clientId, { after = 0, limit, signal } = {}) {
    for (;;) {
      const page = await this.sent(clientId, { after, limit, signal });
      if (page === null || page.messages.length === 0) return;
      yield* page.messages;
      after = page.next_after;
    }
  }

  /**
   * The messages a client sent with `after < id <= through`, oldest first:
   * with a client's `sent_head` as `through`, the newest ones. Messages past
   * their retention are gone, so fewer may come back.
   * @param {string} clientId
   * @param {number} after
   * @param {number} through
   * @param {{signal?: AbortSignal, attempts?: number}} [options]
   * @returns {Promise<SentMessage[]>}
   */
  async sentRange(clientId, after, through, { signal, attempts } = {}) {
    /** @type {SentMessage[]} */
    const messages = [];
    let from = Math.max(0, after);
    while (from < through) {
      const page = await this.sent(clientId, { after: from, limit: Math.min(through - from, 500), signal, attempts });
      if (page === null || page.messages.length === 0) break;
      for (const m of page.messages) if (m.id <= through) messages.push(m);
      if (page.next_after <= from) break;
      from = page.next_after;
    }
    return messages;
  }

  /**
   * `GET /operators/clients` (operator): one page of the listing, in the
   * store's order; `next_page_token` while more may follow. With `tag`,
   * only the clients carrying it.
   * @param {{limit?: number, pageToken?: string | null, tag?: string | null, signal?: AbortSignal, attempts?: number}} [options]
   * @returns {Promise<{clients: ClientInfo[], next_page_token?: string}>}
   */
  async listClients({ limit, pageToken = null, tag = null, signal, attempts } = {}) {
    const query = new URLSearchParams();
    if (limit !== undefined) query.set('limit', String(limit));
    if (pageToken) query.set('page_token', pageToken);
    if (tag) query.set('tag', tag);
    const text = query.toString();
    const { body } = await this._call('operator', 'GET', `/operators/clients${text ? `?${text}` : ''}`, { signal, attempts });
    return body;
  }

  /**
   * Every client (carrying `tag`, if given): all pages of the listing.
   * @param {{tag?: string | null, pageSize?: number, signal?: AbortSignal, onPage?: (clientsSoFar: number) => void}} [options]
   * @returns {Promise<ClientInfo[]>}
   */
  async allClients({ tag = null, pageSize = 1000, signal, onPage } = {}) {
    /** @type {ClientInfo[]} */
    const clients = [];
    /** @type {string | null} */
    let pageToken = null;
    for (;;) {
      const page = await this.listClients({ limit: pageSize, pageToken, tag, signal });
      clients.push(...page.clients);
      if (onPage) onPage(clients.length);
      if (!page.next_page_token) return clients;
      pageToken = page.next_page_token;
    }
  }

  /**
   * `PUT /operators/clients/{id}/tags` (operator): replaces the client's
   * tags (`[]` clears them). Resolves to the tags as stored: sorted, distinct.
   * @param {string} clientId
   * @param {string[]} tags
   * @param {{signal?: AbortSignal, attempts?: number}} [options]
   * @returns {Promise<{id: string, tags: string[]}>}
   */
  async setTags(clientId, tags, { signal, attempts } = {}) {
    if (!Array.isArray(tags)) throw new Error('tags must be an array');
    const bad = tags.find((t) => !validTag(t));
    if (bad !== undefined) throw new Error(`not a tag: ${JSON.stringify(bad)} (1–64 characters of a-z 0-9 _ . -)`);
    if (new Set(tags).size > MAX_TAGS) throw new Error(`at most ${MAX_TAGS} tags per client`);
    const { body } = await this._call('operator', 'PUT', `/operators/clients/${encodeURIComponent(clientId)}/tags`, {
      body: { tags },
      signal,
      attempts,
    });
    return body;
  }

  /**
   * `DELETE /operators/clients/{id}` (operator): revokes the client for good
   * (its token answers 401 at once; inbox, outbox and tags are deleted).
   * Not retried: a repeat after a lost answer would say 404.
   * @param {string} clientId
   * @param {{signal?: AbortSignal}} [options]
   * @returns {Promise<void>}
   */
  async deleteClient(clientId, { signal } = {}) {
    await this._call('operator', 'DELETE', `/operators/clients/${encodeURIComponent(clientId)}`, { signal, attempts: 1 });
  }
}
