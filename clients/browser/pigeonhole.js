// Pigeonhole protocol helpers for the browser client: base64, the canonical
// AAD, AES-256-GCM through Web Crypto, the HTTP calls and the poll backoff.
//
// No DOM access here, so the same file runs under Node (>= 20, which has
// globalThis.crypto) for the format tests. The wire format is described in
// docs/encryption.md and docs/api.md; this file follows them exactly.

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const KEY_BYTES = 32;
/** The `limit` the client asks for on every poll. */
export const POLL_LIMIT = 100;

// ---------------------------------------------------------------- base64

/** Standard base64 (`+/`) with `=` padding, as every binary field uses. */
export function b64encode(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Decodes standard base64; throws a readable error on anything else. */
export function b64decode(text, what = 'value') {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    throw new Error(`${what} is not standard base64`);
  }
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** A random secret suitable as a registration fingerprint (32 bytes, base64url). */
export function randomFingerprint() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return b64encode(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// ---------------------------------------------------------- canonical AAD

/**
 * Orders strings by Unicode code point (the same as ordering their UTF-8
 * bytes). JavaScript's default sort compares UTF-16 code units, which puts
 * astral characters (surrogate pairs, 0xD800–0xDFFF) before U+E000–U+FFFF.
 */
export function compareCodePoints(a, b) {
  const left = a[Symbol.iterator]();
  const right = b[Symbol.iterator]();
  for (;;) {
    const x = left.next();
    const y = right.next();
    if (x.done || y.done) return x.done ? (y.done ? 0 : -1) : 1;
    const cx = x.value.codePointAt(0);
    const cy = y.value.codePointAt(0);
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

/**
 * The canonical text of an `aad` object: keys sorted by code point, no
 * whitespace, non-ASCII left as is. JSON.stringify escapes exactly what JSON
 * requires (`"`, `\`, controls below U+0020) and nothing else, like Python's
 * `json.dumps(..., ensure_ascii=False)` and serde_json.
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

/** The associated data bytes: empty for a null/absent aad. */
export function canonicalAad(aad) {
  return encoder.encode(canonicalAadText(aad));
}

// ------------------------------------------------------------ AES-256-GCM

/** Imports `personal_token` (base64 of 32 bytes) as a non-extractable AES-GCM key. */
export async function importKey(personalToken) {
  const raw = b64decode(String(personalToken).trim(), 'personal_token');
  if (raw.length !== KEY_BYTES) {
    throw new Error(`personal_token must decode to ${KEY_BYTES} bytes (got ${raw.length})`);
  }
  return crypto.subtle.importKey('raw', raw, { name: 'AES-GCM' }, false, ['encrypt', 'decrypt']);
}

/**
 * Encrypts plaintext bytes. Web Crypto returns ciphertext || tag; the wire
 * format carries them separately. `nonce` is only passed by tests (vectors).
 */
export async function seal(key, plaintext, aad, nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES))) {
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt(
      { name: 'AES-GCM', iv: nonce, additionalData: canonicalAad(aad), tagLength: 128 },
      key,
      plaintext,
    ),
  );
  const body = {
    ciphertext: b64encode(sealed.subarray(0, sealed.length - TAG_BYTES)),
    nonce: b64encode(nonce),
    tag: b64encode(sealed.subarray(sealed.length - TAG_BYTES)),
  };
  if (aad !== null && aad !== undefined) body.aad = aad;
  return body;
}

/** Decrypts `{ciphertext, nonce, tag, aad}` to the plaintext bytes. */
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
        { name: 'AES-GCM', iv: nonce, additionalData: canonicalAad(message.aad), tagLength: 128 },
        key,
        joined,
      ),
    );
  } catch {
    throw new Error('decryption failed: wrong personal_token, or the message was tampered with');
  }
}

/** The body of `POST /messages/send`: a fresh nonce, aad binding it to the sender. */
export async function encryptOutgoing(key, clientId, type, payload) {
  const plaintext = encoder.encode(JSON.stringify({ type, payload }));
  return seal(key, plaintext, { client_id: clientId });
}

/**
 * Checks a delivered message's aad against its envelope and decrypts it.
 * Returns `{type, payload}` from the plaintext (the authoritative type).
 */
export async function decryptDelivered(key, message, clientId) {
  const aad = message.aad;
  const expected = { client_id: clientId, created_at: message.created_at, id: message.id };
  const keys = aad && typeof aad === 'object' && !Array.isArray(aad) ? Object.keys(aad) : null;
  if (
    !keys ||
    keys.length !== 3 ||
    !Object.keys(expected).every((k) => Object.prototype.hasOwnProperty.call(aad, k) && aad[k] === expected[k])
  ) {
    throw new Error('aad does not match the message envelope (client_id, created_at, id)');
  }
  let plain;
  try {
    plain = JSON.parse(decoder.decode(await open(key, message)));
  } catch (e) {
    if (e instanceof SyntaxError || e instanceof TypeError) throw new Error('decrypted plaintext is not JSON');
    throw e;
  }
  if (!plain || typeof plain !== 'object' || Array.isArray(plain) || typeof plain.type !== 'string' || !('payload' in plain)) {
    throw new Error('decrypted plaintext is not {"type", "payload"}');
  }
  return { type: plain.type, payload: plain.payload };
}

// ------------------------------------------------------------------- HTTP

/** A failed API call. `kind` is 'http' (with status/code) or 'network'. */
export class ApiError extends Error {
  constructor(kind, message, { status = 0, code = null, retryAfter = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/**
 * A plain http:// URL to a host that is not loopback, refused because the
 * api_token (and, in the register and rotate answers, the personal key)
 * would cross the network unencrypted. Nothing was sent.
 */
export class InsecureUrlError extends Error {
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

/** True for `localhost`, 127.0.0.0/8 and `::1` (brackets allowed): traffic that stays on this machine. */
export function isLoopbackHost(hostname) {
  let host = String(hostname).toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  if (host === 'localhost') return true;
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (host === '::1') return true;
  const octets = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  return Boolean(octets) && octets.slice(1).every((o) => Number(o) <= 255) && Number(octets[1]) === 127;
}

/** The host of `url` when it is plain http:// to a host that is not loopback, else null. */
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

/** Throws InsecureUrlError for plain http:// to a host that is not loopback, unless allowed. */
export function checkTransport(url, allowInsecureHttp = false) {
  const host = insecureHttpHost(url);
  if (host !== null && !allowInsecureHttp) throw new InsecureUrlError(String(url).trim(), host);
}

/** Normalises a base URL: trimmed, no trailing slash; throws unless http(s). */
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

function parseRetryAfter(value) {
  if (value === null || value === undefined) return null;
  const seconds = Number.parseInt(value, 10);
  if (Number.isFinite(seconds) && String(seconds) === value.trim()) return Math.max(seconds, 1);
  const date = Date.parse(value);
  return Number.isFinite(date) ? Math.max(Math.ceil((date - Date.now()) / 1000), 1) : null;
}

/**
 * One API call. Resolves to `{status, body}` for 2xx (body null for 204);
 * rejects with ApiError otherwise, or with an AbortError when `signal` fires.
 * A body is always sent as `Content-Type: application/json` (the server
 * answers 415 otherwise). Plain http:// to a host that is not loopback
 * rejects with InsecureUrlError, before anything is sent, unless
 * `allowInsecureHttp`.
 */
export async function apiRequest(
  baseUrl,
  method,
  path,
  { body, credentials, signal, timeoutMs = 15000, allowInsecureHttp = false } = {},
) {
  checkTransport(baseUrl, allowInsecureHttp);
  const headers = { Accept: 'application/json' };
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
      throw new ApiError('network', `could not reach ${baseUrl} (${e.message || e})`);
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
 * `POST /clients/rotate`: trades `credentials` for a new api_token and
 * personal key (and, with `fingerprint`, a new fingerprint). Resolves to the
 * new `{client_id, api_token, personal_token}`; from the server's answer on
 * the old token is refused, and messages not yet acknowledged are delivered
 * under the new key. Rejects like apiRequest, or with an Error when the
 * answer is not credentials of the same client.
 */
export async function rotate(baseUrl, credentials, { fingerprint = null, signal, allowInsecureHttp = false } = {}) {
  const { body } = await apiRequest(baseUrl, 'POST', '/clients/rotate', {
    body: fingerprint === null || fingerprint === undefined ? {} : { fingerprint },
    credentials,
    signal,
    allowInsecureHttp,
  });
  const fresh = {};
  for (const key of ['client_id', 'api_token', 'personal_token']) {
    if (!body || typeof body[key] !== 'string' || !body[key]) {
      throw new Error(`the rotate answer has no ${key}`);
    }
    fresh[key] = body[key];
  }
  if (fresh.client_id !== credentials.client_id) {
    throw new Error(`the rotate answer is for client ${fresh.client_id}, not ${credentials.client_id}`);
  }
  const raw = b64decode(fresh.personal_token, 'personal_token');
  if (raw.length !== KEY_BYTES) throw new Error(`the new personal_token is not ${KEY_BYTES} bytes`);
  return fresh;
}

// ---------------------------------------------------------------- backoff

/**
 * The short-poll schedule from docs/api.md, in seconds: start at `step`;
 * after an empty poll wait the delay, then add `step`, up to `max`
 * (3, 6, 9 … 30); after messages reset to `step`. A 429, or a 503 with
 * Retry-After, waits as the server asked. Other errors (network, 5xx) back
 * off exponentially from `step`, never below the current delay.
 */
export class Backoff {
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

/**
 * The base step from `?interval=SECONDS` (for demos and tests), or 3 s.
 * Accepted range 0.05–60 s; anything else falls back to 3 s.
 */
export function intervalFromQuery(search) {
  const raw = new URLSearchParams(search).get('interval');
  if (raw === null || raw.trim() === '') return 3;
  const value = Number(raw);
  return Number.isFinite(value) && value >= 0.05 && value <= 60 ? value : 3;
}
