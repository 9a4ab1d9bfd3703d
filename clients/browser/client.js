// The Pigeonhole browser client: registration, the short-poll loop with its
// backoff, decryption, acks, and sending. Protocol details live in
// pigeonhole.js; this file is the page around them.

import {
  ApiError,
  Backoff,
  InsecureUrlError,
  POLL_LIMIT,
  apiRequest,
  checkTransport,
  decryptDelivered,
  encryptOutgoing,
  importKey,
  intervalFromQuery,
  jittered,
  normaliseBaseUrl,
  randomFingerprint,
  rotate,
} from './pigeonhole.js';

// ----------------------------------------------------------------- storage

const KEYS = {
  baseUrl: 'pigeonhole.baseUrl',
  credentials: 'pigeonhole.credentials',
  fingerprint: 'pigeonhole.fingerprint',
  allowInsecureHttp: 'pigeonhole.allowInsecureHttp',
};
const memoryStore = new Map();
let storageWorks = true;

function load(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    storageWorks = false;
    return memoryStore.has(key) ? memoryStore.get(key) : null;
  }
}

function save(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch {
    storageWorks = false;
    if (value === null) memoryStore.delete(key);
    else memoryStore.set(key, value);
  }
}

function loadCredentials() {
  try {
    const parsed = JSON.parse(load(KEYS.credentials));
    if (parsed && ['client_id', 'api_token', 'personal_token'].every((k) => typeof parsed[k] === 'string' && parsed[k])) {
      return parsed;
    }
  } catch {
    /* fall through */
  }
  return null;
}

// --------------------------------------------------------------------- DOM

const $ = (id) => document.getElementById(id);
const ui = {
  connState: $('conn-state'),
  error: $('error'),
  errorText: $('error-text'),
  errorDismiss: $('error-dismiss'),
  notice: $('notice'),
  baseForm: $('base-form'),
  baseUrl: $('base-url'),
  baseUrlError: $('base-url-error'),
  allowInsecureHttp: $('allow-insecure-http'),
  account: $('account'),
  clientId: $('client-id'),
  ackedCursor: $('acked-cursor'),
  secretsPanel: $('secrets-panel'),
  secretApiToken: $('secret-api-token'),
  secretPersonalToken: $('secret-personal-token'),
  forget: $('forget'),
  rotate: $('rotate'),
  rotateFingerprint: $('rotate-fingerprint'),
  registerPanel: $('register-panel'),
  registerForm: $('register-form'),
  regName: $('reg-name'),
  regFingerprint: $('reg-fingerprint'),
  registerError: $('register-error'),
  registerSubmit: $('register-submit'),
  pastePanel: $('paste-panel'),
  pasteForm: $('paste-form'),
  pasteClientId: $('paste-client-id'),
  pasteApiToken: $('paste-api-token'),
  pastePersonalToken: $('paste-personal-token'),
  pasteError: $('paste-error'),
  pollNow: $('poll-now'),
  pause: $('pause'),
  interval: $('interval'),
  countdown: $('countdown'),
  countdownBar: $('countdown-bar'),
  lastPoll: $('last-poll'),
  empty: $('empty'),
  messages: $('messages'),
  composeForm: $('compose-form'),
  composeType: $('compose-type'),
  composeTypeError: $('compose-type-error'),
  composePayload: $('compose-payload'),
  composePayloadError: $('compose-payload-error'),
  composeSubmit: $('compose-submit'),
  sendResult: $('send-result'),
};

/** Shows or hides an inline field error and marks the field invalid. */
function fieldError(element, field, text) {
  element.textContent = text || '';
  element.hidden = !text;
  if (field) field.setAttribute('aria-invalid', text ? 'true' : 'false');
}

let errorSource = null;

/** The page-level error banner; `source` lets a later success clear only its own error. */
function showError(source, text) {
  showNotice('');
  errorSource = source;
  ui.errorText.textContent = text;
  ui.error.hidden = false;
  ui.error.dataset.source = source;
}

function clearError(source) {
  if (source && errorSource !== source) return;
  errorSource = null;
  ui.error.hidden = true;
  ui.errorText.textContent = '';
  delete ui.error.dataset.source;
}

let noticeTimer = null;

/** A passing confirmation; it fades out by itself after a few seconds. */
function showNotice(text, { sticky = false } = {}) {
  clearTimeout(noticeTimer);
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
  if (text && !sticky) noticeTimer = setTimeout(() => showNotice(''), 8000);
}

function setConnState(state, text) {
  ui.connState.dataset.state = state;
  ui.connState.textContent = text;
}

function seconds(value) {
  if (value === 0) return 'now';
  if (value < 10) return `${(Math.round(value * 10) / 10).toFixed(1)} s`;
  return `${Math.round(value)} s`;
}

/** A readable sentence for a failed call, by status. */
function describe(error, action) {
  if (error instanceof InsecureUrlError) return `Not sent (${action}): ${error.message}.`;
  if (!(error instanceof ApiError)) return `${action} failed: ${error.message || error}`;
  if (error.kind === 'network') return `Network error while trying to ${action}: ${error.message}.`;
  const code = error.code ? ` ${error.code}` : '';
  switch (error.status) {
    case 401:
      return `Unauthorized (401): the server rejected these credentials while trying to ${action}. Register again or paste valid credentials.`;
    case 404:
      return `Not found (404) while trying to ${action}: ${error.message}. Check that the base URL ends in /api/v1.`;
    case 429:
      return `Rate limited (429): too many requests; the server asks to wait ${error.retryAfter || 'a few'} s before trying to ${action} again.`;
    default:
      if (error.status >= 500) return `Server error (${error.status}${code}) while trying to ${action}: ${error.message}.`;
      return `The server refused to ${action} (${error.status}${code}): ${error.message}`;
  }
}

// ------------------------------------------------------------------- state

const step = intervalFromQuery(location.search);
const state = {
  baseUrl: null,
  allowInsecureHttp: false,
  credentials: null,
  session: null, // {key, abort, backoff}; replaced whenever credentials change
  paused: false,
  unauthorized: false,
  timer: null,
  nextAt: null, // performance.now() of the next poll
  waitTotal: null, // seconds of the current wait
  cursor: 0, // highest message id shown (or skipped) in this session
  pendingAck: null, // an id to ack that has not been acknowledged yet
  shown: new Set(),
};
const MAX_SHOWN = 500;

function defaultBaseUrl() {
  return `${location.origin}/api/v1`;
}

// ------------------------------------------------------------- rendering

function renderAccount() {
  const creds = state.credentials;
  ui.account.hidden = !creds;
  ui.clientId.textContent = creds ? creds.client_id : '';
  ui.pollNow.disabled = !creds;
  ui.pause.disabled = !creds;
  ui.composeSubmit.disabled = false;
  if (!creds) {
    ui.registerPanel.open = true;
    ui.ackedCursor.textContent = '–';
    ui.interval.textContent = '–';
    ui.countdown.textContent = '–';
    ui.lastPoll.textContent = '–';
    ui.countdownBar.style.width = '0%';
    setConnState('idle', 'Not connected');
  }
  ui.secretsPanel.open = false;
  ui.secretApiToken.textContent = '';
  ui.secretPersonalToken.textContent = '';
  if (!ui.regFingerprint.value) ui.regFingerprint.value = currentFingerprint();
}

function currentFingerprint() {
  let fingerprint = load(KEYS.fingerprint);
  if (!fingerprint) {
    fingerprint = randomFingerprint();
    save(KEYS.fingerprint, fingerprint);
  }
  return fingerprint;
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

function payloadText(payload) {
  return JSON.stringify(payload, null, 2);
}

/** Adds one message card at the top of the list (the list is newest first). */
function renderMessage(envelope, plain, failure) {
  const item = document.createElement('li');
  item.className = failure ? 'message message-rejected' : 'message';
  item.dataset.id = String(envelope.id);

  const head = document.createElement('div');
  head.className = 'message-head';
  const type = document.createElement('span');
  type.className = 'message-type';
  type.textContent = failure ? 'unverified' : plain.type;
  const time = document.createElement('time');
  time.className = 'message-time';
  time.dateTime = envelope.created_at;
  time.title = envelope.created_at;
  time.textContent = formatTime(envelope.created_at);
  const id = document.createElement('span');
  id.className = 'message-id';
  id.textContent = `#${envelope.id}`;
  head.append(type, time, id);

  const body = document.createElement('pre');
  body.className = 'message-payload';
  body.textContent = failure
    ? `Not shown: ${failure}. (type in the clear: ${JSON.stringify(envelope.type)})`
    : payloadText(plain.payload);
  item.append(head, body);

  ui.messages.prepend(item);
  while (ui.messages.children.length > MAX_SHOWN) ui.messages.lastElementChild.remove();
  ui.empty.hidden = true;
}

function clearMessages() {
  ui.messages.replaceChildren();
  ui.ackedCursor.textContent = '–';
  delete ui.ackedCursor.dataset.cursor;
  ui.sendResult.hidden = true;
  ui.empty.hidden = false;
  state.shown.clear();
  state.cursor = 0;
  state.pendingAck = null;
}

// ----------------------------------------------------------------- polling

function stopTimer() {
  clearTimeout(state.timer);
  state.timer = null;
  state.nextAt = null;
}

/** Ends the current session: cancels the timer and any request in flight. */
function stopSession() {
  stopTimer();
  if (state.session) state.session.abort.abort();
  state.session = null;
}

/** Starts polling with the stored credentials (a new session each time). */
async function startSession({ clear = true } = {}) {
  stopSession();
  if (clear) clearMessages();
  state.unauthorized = false;
  const creds = state.credentials;
  renderAccount();
  if (!creds) return;
  setConnState('polling', 'Connecting…');
  const session = { key: null, abort: new AbortController(), backoff: new Backoff(step) };
  state.session = session;
  try {
    session.key = await importKey(creds.personal_token);
  } catch (e) {
    if (state.session !== session) return;
    setConnState('error', 'Bad key');
    showError('credentials', `The stored personal_token is unusable: ${e.message}. Paste valid credentials or register again.`);
    stopSession();
    return;
  }
  if (state.session !== session) return;
  if (state.paused) {
    setConnState('paused', 'Paused');
    return;
  }
  schedule(session, 0);
}

function schedule(session, wait) {
  if (state.session !== session) return;
  stopTimer();
  state.waitTotal = wait;
  state.nextAt = performance.now() + wait * 1000;
  ui.interval.textContent = seconds(wait);
  state.timer = setTimeout(() => pollOnce(session), wait * 1000);
  tick();
}

/** Acknowledges `state.pendingAck`; throws like apiRequest. */
async function ackPending(session) {
  const id = state.pendingAck;
  if (id === null) return;
  const { body } = await apiRequest(state.baseUrl, 'POST', '/messages/ack', {
    body: { last_received_id: id },
    credentials: state.credentials,
    signal: session.abort.signal,
    allowInsecureHttp: state.allowInsecureHttp,
  });
  if (state.session !== session) return;
  if (state.pendingAck === id) state.pendingAck = null;
  ui.ackedCursor.textContent = `#${body.cursor}`;
  ui.ackedCursor.dataset.cursor = String(body.cursor);
}

async function pollOnce(session) {
  if (state.session !== session || state.paused) return;
  stopTimer();
  setConnState('polling', 'Polling…');
  ui.countdown.textContent = 'polling…';
  const creds = state.credentials;
  try {
    await ackPending(session);
    const query = state.cursor > 0 ? `?cursor=${state.cursor}&limit=${POLL_LIMIT}` : `?limit=${POLL_LIMIT}`;
    const response = await apiRequest(state.baseUrl, 'GET', `/messages/poll${query}`, {
      credentials: creds,
      signal: session.abort.signal,
      allowInsecureHttp: state.allowInsecureHttp,
    });
    if (state.session !== session) return;
    const now = new Date().toLocaleTimeString();
    if (response.status === 204) {
      ui.lastPoll.textContent = `no new messages (${now})`;
      clearError('poll');
      setConnState('ok', 'Connected');
      schedule(session, jittered(session.backoff.afterEmpty()));
      return;
    }
    const { messages, next_cursor: nextCursor } = response.body;
    if (!Array.isArray(messages) || !Number.isInteger(nextCursor)) {
      throw new Error('the poll response is not {"messages", "next_cursor"}');
    }
    if (messages.length === 0) {
      // Every message this page covered expired before it was delivered:
      // nothing to show, but next_cursor moves past their ids. Acknowledge
      // it and poll again at once (more may be waiting behind them). A page
      // that does not move the cursor is treated like a 204.
      const moved = nextCursor > state.cursor && nextCursor > (state.pendingAck || 0);
      clearError('poll');
      setConnState('ok', 'Connected');
      if (!moved) {
        ui.lastPoll.textContent = `no new messages (${now})`;
        schedule(session, jittered(session.backoff.afterEmpty()));
        return;
      }
      ui.lastPoll.textContent = `no new messages; expired ones skipped up to #${nextCursor} (${now})`;
      state.cursor = nextCursor;
      state.pendingAck = nextCursor;
      await ackPending(session);
      if (state.session !== session) return;
      session.backoff.afterMessages();
      schedule(session, 0);
      return;
    }
    let shown = 0;
    const failures = [];
    const results = [];
    for (const message of messages) {
      if (state.shown.has(message.id)) continue;
      try {
        results.push([message, await decryptDelivered(session.key, message, creds.client_id), null]);
        shown += 1;
      } catch (e) {
        results.push([message, null, e.message]);
        failures.push(`#${message.id}: ${e.message}`);
      }
    }
    if (state.session !== session) return;
    if (failures.length > 0 && shown === 0) {
      // Nothing in the batch verifies: most likely a wrong personal_token.
      // Acknowledging would throw the messages away, so stop here instead.
      setConnState('error', 'Cannot decrypt');
      showError(
        'poll',
        `No message in the last poll could be verified (${failures.join('; ')}). Nothing was acknowledged and polling is paused: ` +
          'check the personal_token, then press "Poll now".',
      );
      ui.lastPoll.textContent = `${messages.length} undecryptable (${now})`;
      ui.interval.textContent = 'stopped';
      ui.countdown.textContent = 'stopped';
      ui.countdownBar.style.width = '0%';
      return;
    }
    for (const [message, plain, failure] of results) {
      renderMessage(message, plain, failure);
      state.shown.add(message.id);
    }
    ui.lastPoll.textContent = `${shown} new message${shown === 1 ? '' : 's'} (${now})`;
    state.cursor = Math.max(state.cursor, nextCursor);
    state.pendingAck = Math.max(state.pendingAck || 0, nextCursor);
    if (failures.length > 0) {
      showError('poll', `Some messages failed verification and are marked "unverified": ${failures.join('; ')}`);
    } else {
      clearError('poll');
    }
    await ackPending(session);
    if (state.session !== session) return;
    setConnState('ok', 'Connected');
    const wait = jittered(session.backoff.afterMessages());
    // A full page means more may be waiting: ask again at once.
    schedule(session, messages.length >= POLL_LIMIT ? 0 : wait);
  } catch (e) {
    if (state.session !== session || e.name === 'AbortError') return;
    pollFailed(session, e);
  }
}

function pollFailed(session, error) {
  const action = state.pendingAck !== null ? 'poll and acknowledge' : 'poll';
  if (error instanceof InsecureUrlError) {
    // Nothing was sent; retrying cannot help until the URL or the setting changes.
    stopTimer();
    setConnState('error', 'Insecure URL');
    ui.interval.textContent = 'stopped';
    ui.countdown.textContent = 'stopped (plain http)';
    ui.countdownBar.style.width = '0%';
    showError('poll', describe(error, action));
    return;
  }
  if (error instanceof ApiError && error.status === 401) {
    state.unauthorized = true;
    stopTimer();
    setConnState('error', 'Unauthorized');
    ui.interval.textContent = 'stopped';
    ui.countdown.textContent = 'stopped (401)';
    ui.countdownBar.style.width = '0%';
    ui.lastPoll.textContent = `401 unauthorized (${new Date().toLocaleTimeString()})`;
    showError('poll', describe(error, action));
    return;
  }
  let wait;
  if (error instanceof ApiError && error.status === 429) {
    wait = jittered(session.backoff.afterRateLimit(error.retryAfter), Math.random(), error.retryAfter);
    setConnState('warn', 'Rate limited');
    showError('poll', `Rate limited (429): the server asked to wait ${error.retryAfter ?? '?'} s; next poll in ${seconds(wait)}.`);
  } else if (error instanceof ApiError && error.status === 503 && error.retryAfter) {
    // 503 unavailable: storage was briefly unavailable. Like a 429: wait as
    // asked, keep the delay and the cursor (nothing was skipped).
    wait = jittered(session.backoff.afterRateLimit(error.retryAfter), Math.random(), error.retryAfter);
    setConnState('warn', 'Server busy');
    showError('poll', `Server unavailable (503): the server asked to wait ${error.retryAfter} s; next poll in ${seconds(wait)}.`);
  } else {
    wait = jittered(session.backoff.afterError());
    const offline = error instanceof ApiError && error.kind === 'network';
    setConnState('warn', offline ? 'Offline' : 'Error');
    showError('poll', `${describe(error, action)} Retrying in ${seconds(wait)}.`);
  }
  ui.lastPoll.textContent = `${error instanceof ApiError && error.status ? error.status : 'failed'} (${new Date().toLocaleTimeString()})`;
  schedule(session, wait);
}

/** Updates the countdown text and bar; runs ten times a second. */
function tick() {
  if (state.nextAt === null) {
    if (state.session && state.paused) {
      ui.countdown.textContent = 'paused';
      ui.countdownBar.style.width = '0%';
    }
    return;
  }
  const left = Math.max(0, (state.nextAt - performance.now()) / 1000);
  ui.countdown.textContent = left === 0 ? 'now' : `in ${seconds(left)}`;
  const fraction = state.waitTotal > 0 ? left / state.waitTotal : 0;
  ui.countdownBar.style.width = `${(fraction * 100).toFixed(1)}%`;
}

// ------------------------------------------------------------------ actions

function setCredentials(creds) {
  state.credentials = creds;
  save(KEYS.credentials, creds ? JSON.stringify(creds) : null);
  clearError();
  startSession();
}

async function register(event) {
  event.preventDefault();
  fieldError(ui.registerError, null, '');
  const fingerprint = ui.regFingerprint.value.trim();
  const name = ui.regName.value.trim();
  if (!fingerprint) {
    fieldError(ui.registerError, ui.regFingerprint, 'A fingerprint is required.');
    return;
  }
  ui.registerSubmit.disabled = true;
  try {
    const { status, body } = await apiRequest(state.baseUrl, 'POST', '/clients/register', {
      body: { name: name || null, fingerprint },
      allowInsecureHttp: state.allowInsecureHttp,
    });
    save(KEYS.fingerprint, fingerprint);
    setCredentials({ client_id: body.client_id, api_token: body.api_token, personal_token: body.personal_token });
    ui.registerPanel.open = false;
    ui.pastePanel.open = false;
    showNotice(
      status === 201
        ? 'Registered. This browser now polls for its messages.'
        : 'This fingerprint was already registered: its credentials were restored (the name was not changed).',
    );
  } catch (e) {
    fieldError(ui.registerError, e.status === 422 ? ui.regFingerprint : null, describe(e, 'register'));
  } finally {
    ui.registerSubmit.disabled = false;
  }
}

async function usePasted(event) {
  event.preventDefault();
  fieldError(ui.pasteError, null, '');
  const creds = {
    client_id: ui.pasteClientId.value.trim(),
    api_token: ui.pasteApiToken.value.trim(),
    personal_token: ui.pastePersonalToken.value.trim(),
  };
  const missing = Object.keys(creds).filter((k) => !creds[k]);
  if (missing.length) {
    fieldError(ui.pasteError, null, `Missing: ${missing.join(', ')}.`);
    return;
  }
  try {
    await importKey(creds.personal_token);
  } catch (e) {
    fieldError(ui.pasteError, ui.pastePersonalToken, `${e.message}.`);
    return;
  }
  ui.pasteForm.reset();
  ui.pastePanel.open = false;
  ui.registerPanel.open = false;
  setCredentials(creds);
  showNotice('Credentials saved. Polling with them now.');
}

function forget() {
  if (!confirm('Forget the credentials and fingerprint stored in this browser? Without them you cannot read this client\'s messages here again.')) {
    return;
  }
  save(KEYS.credentials, null);
  save(KEYS.fingerprint, null);
  ui.regFingerprint.value = '';
  state.credentials = null;
  stopSession();
  clearMessages();
  clearError();
  renderAccount();
  showNotice('Credentials forgotten. A new fingerprint was generated for the next registration.');
}

function saveBaseUrl(event) {
  event.preventDefault();
  let url;
  try {
    url = normaliseBaseUrl(ui.baseUrl.value);
    checkTransport(url, state.allowInsecureHttp);
  } catch (e) {
    fieldError(ui.baseUrlError, ui.baseUrl, `${e.message[0].toUpperCase()}${e.message.slice(1)}.`);
    return;
  }
  fieldError(ui.baseUrlError, ui.baseUrl, '');
  ui.baseUrl.value = url;
  if (url === state.baseUrl) return;
  state.baseUrl = url;
  save(KEYS.baseUrl, url === defaultBaseUrl() ? null : url);
  showNotice(`Using ${url}.`);
  if (state.credentials) startSession();
}

async function send(event) {
  event.preventDefault();
  fieldError(ui.composeTypeError, ui.composeType, '');
  fieldError(ui.composePayloadError, ui.composePayload, '');
  ui.sendResult.hidden = true;
  const type = ui.composeType.value.trim();
  const typeLength = [...type].length;
  let invalid = false;
  if (typeLength < 1 || typeLength > 64) {
    fieldError(ui.composeTypeError, ui.composeType, 'The type must be 1 to 64 characters long.');
    invalid = true;
  }
  let payload;
  try {
    payload = JSON.parse(ui.composePayload.value);
  } catch (e) {
    fieldError(ui.composePayloadError, ui.composePayload, `The payload is not valid JSON: ${e.message}`);
    invalid = true;
  }
  if (invalid) return;
  const session = state.session;
  if (!state.credentials || !session || !session.key) {
    result('error', 'Register or paste credentials before sending.');
    return;
  }
  ui.composeSubmit.disabled = true;
  result('pending', 'Encrypting and sending…');
  try {
    const body = await encryptOutgoing(session.key, state.credentials.client_id, type, payload);
    // A retry resends the identical body (same nonce): the server stores it once.
    let response;
    for (let attempt = 1; ; attempt++) {
      try {
        response = await apiRequest(state.baseUrl, 'POST', '/messages/send', {
          body,
          credentials: state.credentials,
          signal: session.abort.signal,
          allowInsecureHttp: state.allowInsecureHttp,
        });
        break;
      } catch (e) {
        const retryable =
          e instanceof ApiError &&
          (e.kind === 'network' || e.status >= 500 || (e.status === 429 && (e.retryAfter || 1) <= 30));
        if (!retryable || attempt >= 3) throw e;
        result('pending', `${describe(e, 'send')} Retrying (attempt ${attempt + 1} of 3)…`);
        // A 429 (sends are limited per client) or a 503 says when to come
        // back (Retry-After); otherwise 1 s, then 2 s.
        const asked = (e.status === 503 || e.status === 429) && e.retryAfter;
        const wait = asked ? Math.min(e.retryAfter, 30) : attempt;
        await new Promise((resolve) => setTimeout(resolve, 1000 * wait));
      }
    }
    const id = response.body.id;
    result('ok', response.status === 201 ? `Sent as message #${id}.` : `Already stored as message #${id} (a retry).`);
    ui.sendResult.dataset.id = String(id);
  } catch (e) {
    if (e.name === 'AbortError') {
      result('error', 'Not sent: the credentials changed while sending.');
      return;
    }
    const text = describe(e, 'send');
    result('error', text);
    showError('send', text);
    if (e instanceof ApiError && e.status === 401) setConnState('error', 'Unauthorized');
  } finally {
    ui.composeSubmit.disabled = false;
  }
}

/**
 * Trades the credentials for new ones (a new api_token and personal key, and
 * with the box ticked a new fingerprint) and keeps them where the page keeps
 * its credentials. Polling goes on from the same cursor: messages not yet
 * acknowledged are delivered under the new key.
 */
async function rotateCredentials() {
  const creds = state.credentials;
  if (!creds) return;
  const replaceFingerprint = ui.rotateFingerprint.checked;
  if (
    !confirm(
      'Rotate the credentials? This browser gets a new api_token and personal key' +
        (replaceFingerprint ? ' and fingerprint' : '') +
        '; anything else still using the current ones is refused from now on.',
    )
  ) {
    return;
  }
  const fingerprint = replaceFingerprint ? randomFingerprint() : null;
  ui.rotate.disabled = true;
  stopTimer(); // no poll with a token that is about to stop working
  const session = state.session;
  try {
    const fresh = await rotate(state.baseUrl, creds, {
      fingerprint,
      allowInsecureHttp: state.allowInsecureHttp,
    });
    await importKey(fresh.personal_token);
    if (fingerprint) {
      save(KEYS.fingerprint, fingerprint);
      ui.regFingerprint.value = fingerprint;
    }
    state.credentials = fresh;
    save(KEYS.credentials, JSON.stringify(fresh));
    clearError();
    startSession({ clear: false });
    showNotice(
      'Credentials rotated: this browser now uses a new api_token and personal key' +
        (fingerprint ? ' and fingerprint' : '') +
        '. The old ones no longer work; messages not yet acknowledged arrive under the new key.',
    );
  } catch (e) {
    const lost = e instanceof ApiError && (e.kind === 'network' || e.status >= 500);
    if (lost && fingerprint) ui.regFingerprint.value = fingerprint;
    showError(
      'rotate',
      lost
        ? `${describe(e, 'rotate the credentials')} The server may have rotated anyway: if polling now reports 401, ` +
            `register again with ${fingerprint ? 'the new fingerprint, filled in below,' : "this browser's fingerprint"} ` +
            'to get the current credentials.'
        : describe(e, 'rotate the credentials'),
    );
    // Go on with the credentials we have.
    if (state.session === session && session && session.key && !state.paused && !state.unauthorized) {
      schedule(session, 0);
    } else if (state.credentials === creds) {
      startSession({ clear: false });
    }
  } finally {
    ui.rotate.disabled = false;
  }
}

function setAllowInsecureHttp() {
  state.allowInsecureHttp = ui.allowInsecureHttp.checked;
  save(KEYS.allowInsecureHttp, state.allowInsecureHttp ? 'true' : null);
  try {
    checkTransport(state.baseUrl, state.allowInsecureHttp);
    fieldError(ui.baseUrlError, ui.baseUrl, '');
    clearError('poll');
  } catch (e) {
    fieldError(ui.baseUrlError, ui.baseUrl, `${e.message[0].toUpperCase()}${e.message.slice(1)}.`);
  }
  if (state.credentials) startSession({ clear: false });
}

function result(kind, text) {
  ui.sendResult.dataset.kind = kind;
  ui.sendResult.textContent = text;
  ui.sendResult.hidden = false;
  if (kind !== 'ok') delete ui.sendResult.dataset.id;
}

function togglePause() {
  state.paused = !state.paused;
  ui.pause.textContent = state.paused ? 'Resume' : 'Pause';
  ui.pause.setAttribute('aria-pressed', String(state.paused));
  if (state.paused) {
    stopTimer();
    setConnState('paused', 'Paused');
    ui.interval.textContent = 'paused';
    tick();
  } else if (state.session && state.session.key && !state.unauthorized) {
    schedule(state.session, 0);
  }
}

function pollNow() {
  if (!state.credentials) return;
  if (state.paused) togglePause();
  if (state.unauthorized || !state.session || !state.session.key) {
    // After a 401 (or a bad key) start over with the stored credentials.
    startSession({ clear: false });
    return;
  }
  schedule(state.session, 0);
}

// -------------------------------------------------------------------- start

function init() {
  const storedBase = load(KEYS.baseUrl);
  try {
    state.baseUrl = normaliseBaseUrl(storedBase || defaultBaseUrl());
  } catch {
    state.baseUrl = defaultBaseUrl();
  }
  ui.baseUrl.value = state.baseUrl;
  ui.baseUrl.placeholder = defaultBaseUrl();
  state.allowInsecureHttp = load(KEYS.allowInsecureHttp) === 'true';
  ui.allowInsecureHttp.checked = state.allowInsecureHttp;
  try {
    checkTransport(state.baseUrl, state.allowInsecureHttp);
  } catch (e) {
    // E.g. this page was opened over plain http from another machine.
    fieldError(ui.baseUrlError, ui.baseUrl, `${e.message[0].toUpperCase()}${e.message.slice(1)}.`);
  }
  state.credentials = loadCredentials();
  if (!storageWorks) {
    showNotice('This browser blocks localStorage: credentials last only until the page is closed.', { sticky: true });
  }

  ui.baseForm.addEventListener('submit', saveBaseUrl);
  ui.baseUrl.addEventListener('change', () => ui.baseForm.requestSubmit());
  ui.registerForm.addEventListener('submit', register);
  ui.pasteForm.addEventListener('submit', usePasted);
  ui.forget.addEventListener('click', forget);
  ui.rotate.addEventListener('click', rotateCredentials);
  ui.allowInsecureHttp.addEventListener('change', setAllowInsecureHttp);
  ui.composeForm.addEventListener('submit', send);
  ui.composePayload.addEventListener('input', () => fieldError(ui.composePayloadError, ui.composePayload, ''));
  ui.pollNow.addEventListener('click', pollNow);
  ui.pause.addEventListener('click', togglePause);
  ui.errorDismiss.addEventListener('click', () => clearError());
  ui.secretsPanel.addEventListener('toggle', () => {
    const open = ui.secretsPanel.open && state.credentials;
    ui.secretApiToken.textContent = open ? state.credentials.api_token : '';
    ui.secretPersonalToken.textContent = open ? state.credentials.personal_token : '';
  });
  window.addEventListener('storage', (event) => {
    // Another tab forgot or replaced the credentials.
    if (event.key === KEYS.credentials) {
      state.credentials = loadCredentials();
      startSession();
    }
  });

  document.documentElement.dataset.step = String(step);
  setInterval(tick, 100);
  startSession();
  document.documentElement.dataset.ready = 'true';
}

init();
