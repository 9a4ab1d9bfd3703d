// The Pigeonhole operators' console: the connection (base URL and the two
// tokens, kept in sessionStorage only), the page-wide error banner and
// confirmation dialog, and the three views: clients (console-clients.js),
// publish (console-publish.js) and inbound (console-inbound.js). Every API
// call goes through PigeonholeAdmin in pigeonhole.js, the module the client
// page uses too.

import {
  ApiError,
  InsecureUrlError,
  PigeonholeAdmin,
  checkTransport,
  intervalFromQuery,
  normaliseBaseUrl,
} from './pigeonhole.js';
import { ClientsView } from './console-clients.js';
import { InboundView } from './console-inbound.js';
import { PublishView } from './console-publish.js';
import { SESSION, describeError, fieldError, updateTime } from './console-ui.js';

// ----------------------------------------------------------------- storage

/** Not secret: kept across visits in localStorage. */
const LOCAL = {
  baseUrl: 'pigeonhole.console.baseUrl',
  allowInsecureHttp: 'pigeonhole.console.allowInsecureHttp',
};
const memory = new Map();

/** A Storage that falls back to memory when the browser refuses it. */
function store(kind) {
  return {
    get(key) {
      try {
        return window[kind].getItem(key);
      } catch {
        return memory.has(`${kind}:${key}`) ? memory.get(`${kind}:${key}`) : null;
      }
    },
    set(key, value) {
      try {
        if (value === null || value === undefined) window[kind].removeItem(key);
        else window[kind].setItem(key, value);
      } catch {
        if (value === null || value === undefined) memory.delete(`${kind}:${key}`);
        else memory.set(`${kind}:${key}`, value);
      }
    },
  };
}
const local = store('localStorage');
const session = store('sessionStorage');

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
  tokensForm: $('tokens-form'),
  adminToken: $('admin-token'),
  operatorToken: $('operator-token'),
  tokensError: $('tokens-error'),
  forget: $('forget'),
  confirm: $('confirm-dialog'),
  confirmHeading: $('confirm-heading'),
  confirmText: $('confirm-text'),
  confirmError: $('confirm-error'),
  confirmOk: $('confirm-ok'),
  confirmCancel: $('confirm-cancel'),
};

// ------------------------------------------------------------------ context

let errorSource = null;
let noticeTimer = null;

/**
 * What the views share: the API (null until there is a base URL), the
 * tokens present, the banner, the notice, the confirmation dialog and the
 * other views.
 */
const ctx = {
  /** Seconds: the first wait between two status refreshes (?interval= for tests). */
  step: intervalFromQuery(location.search, 1),
  /** @type {PigeonholeAdmin | null} */
  admin: null,
  baseUrl: '',
  allowInsecureHttp: false,
  session,
  /** @type {ClientsView} */
  clients: /** @type {any} */ (null),
  /** @type {PublishView} */
  publish: /** @type {any} */ (null),
  /** @type {InboundView} */
  inbound: /** @type {any} */ (null),

  /** @param {'admin' | 'operator'} role */
  has(role) {
    return Boolean(role === 'admin' ? ctx.admin && ctx.admin.adminToken : ctx.admin && ctx.admin.operatorToken);
  },

  /** A failed call: the banner says what happened; the pill says where things stand. */
  report(source, error, action, role = null) {
    const text = describeError(error, action, role);
    showError(source, text);
    if (error instanceof ApiError) {
      if (error.status === 401) setConnState('error', `Unauthorized (${role || 'token'})`);
      else if (error.status === 429) setConnState('warn', 'Rate limited');
      else if (error.kind === 'network') setConnState('warn', 'Offline');
      else if (error.status >= 500) setConnState('warn', 'Server error');
    } else if (error instanceof InsecureUrlError) {
      setConnState('error', 'Insecure URL');
    }
    return text;
  },

  /** A call that worked: its own error goes, the pill goes green. */
  succeeded(source) {
    clearError(source);
    setConnState('ok', 'Connected');
  },

  clearError,
  notice: showNotice,

  /**
   * Asks before something that cannot be undone. `action` runs when the
   * operator confirms; while it fails, the dialog stays open with its error.
   * @param {{heading: string, text: string, ok: string, action: () => Promise<void>}} options
   */
  confirm({ heading, text, ok, action }) {
    ui.confirmHeading.textContent = heading;
    ui.confirmText.textContent = text;
    ui.confirmOk.textContent = ok;
    fieldError(ui.confirmError, null, '');
    confirmAction = action;
    ui.confirm.showModal();
    ui.confirmCancel.focus();
  },
};

let confirmAction = null;

async function confirmed() {
  if (!confirmAction) return;
  ui.confirmOk.disabled = true;
  try {
    await confirmAction();
    confirmAction = null;
    ui.confirm.close();
  } catch (e) {
    fieldError(ui.confirmError, null, e.message || String(e));
  } finally {
    ui.confirmOk.disabled = false;
  }
}

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

// ---------------------------------------------------------------- settings

function defaultBaseUrl() {
  return `${location.origin}/api/v1`;
}

function capitalised(message) {
  return `${message[0].toUpperCase()}${message.slice(1)}.`;
}

/** Makes the API object for the current base URL and tokens, and tells the views. */
function connect({ reload = true } = {}) {
  const adminToken = session.get(SESSION.adminToken);
  const operatorToken = session.get(SESSION.operatorToken);
  ctx.admin = new PigeonholeAdmin(ctx.baseUrl, {
    adminToken,
    operatorToken,
    allowInsecureHttp: ctx.allowInsecureHttp,
    // Interactive: an error shows at once; the operator decides to retry.
    attempts: 1,
  });
  if (!adminToken && !operatorToken) setConnState('idle', 'No tokens');
  else setConnState('idle', 'Tokens set');
  // The fields show that a token is set, never what it is.
  ui.adminToken.placeholder = adminToken ? 'set for this tab (type to replace)' : '';
  ui.operatorToken.placeholder = operatorToken ? 'set for this tab (type to replace)' : '';
  ui.forget.disabled = !adminToken && !operatorToken;
  if (reload) {
    ctx.clients.reset();
    ctx.publish.reset();
    ctx.inbound.reset();
  }
}

function saveBaseUrl(event) {
  event.preventDefault();
  let url;
  try {
    url = normaliseBaseUrl(ui.baseUrl.value);
    checkTransport(url, ctx.allowInsecureHttp);
  } catch (e) {
    fieldError(ui.baseUrlError, ui.baseUrl, capitalised(e.message));
    return;
  }
  fieldError(ui.baseUrlError, ui.baseUrl, '');
  ui.baseUrl.value = url;
  if (url === ctx.baseUrl) return;
  ctx.baseUrl = url;
  local.set(LOCAL.baseUrl, url === defaultBaseUrl() ? null : url);
  showNotice(`Using ${url}.`);
  connect();
}

function setAllowInsecureHttp() {
  ctx.allowInsecureHttp = ui.allowInsecureHttp.checked;
  local.set(LOCAL.allowInsecureHttp, ctx.allowInsecureHttp ? 'true' : null);
  try {
    checkTransport(ctx.baseUrl, ctx.allowInsecureHttp);
    fieldError(ui.baseUrlError, ui.baseUrl, '');
  } catch (e) {
    fieldError(ui.baseUrlError, ui.baseUrl, capitalised(e.message));
  }
  connect();
}

function useTokens(event) {
  event.preventDefault();
  // An empty field keeps the token already set for this tab.
  const admin = ui.adminToken.value.trim() || session.get(SESSION.adminToken);
  const operator = ui.operatorToken.value.trim() || session.get(SESSION.operatorToken);
  if (!admin && !operator) {
    fieldError(ui.tokensError, null, 'Enter the operator token, the admin token, or both.');
    return;
  }
  fieldError(ui.tokensError, null, '');
  session.set(SESSION.adminToken, admin || null);
  session.set(SESSION.operatorToken, operator || null);
  ui.adminToken.value = '';
  ui.operatorToken.value = '';
  clearError();
  showNotice(
    admin && operator
      ? 'Both tokens are set for this tab.'
      : admin
        ? 'The admin token is set: publishing and reading sends work; the clients list needs the operator token.'
        : 'The operator token is set: the clients list works; publishing and reading sends need the admin token.',
  );
  connect();
}

function forget() {
  session.set(SESSION.adminToken, null);
  session.set(SESSION.operatorToken, null);
  session.set(SESSION.publishes, null);
  ui.adminToken.value = '';
  ui.operatorToken.value = '';
  clearError();
  connect();
  showNotice('Tokens forgotten: nothing of them is left in this tab.');
}

// -------------------------------------------------------------------- start

function init() {
  let base = local.get(LOCAL.baseUrl) || defaultBaseUrl();
  try {
    base = normaliseBaseUrl(base);
  } catch {
    base = defaultBaseUrl();
  }
  ctx.baseUrl = base;
  ui.baseUrl.value = base;
  ui.baseUrl.placeholder = defaultBaseUrl();
  ctx.allowInsecureHttp = local.get(LOCAL.allowInsecureHttp) === 'true';
  ui.allowInsecureHttp.checked = ctx.allowInsecureHttp;
  try {
    checkTransport(ctx.baseUrl, ctx.allowInsecureHttp);
  } catch (e) {
    fieldError(ui.baseUrlError, ui.baseUrl, capitalised(e.message));
  }
  ctx.clients = new ClientsView(ctx);
  ctx.publish = new PublishView(ctx);
  ctx.inbound = new InboundView(ctx);

  ui.baseForm.addEventListener('submit', saveBaseUrl);
  ui.baseUrl.addEventListener('change', () => ui.baseForm.requestSubmit());
  ui.allowInsecureHttp.addEventListener('change', setAllowInsecureHttp);
  ui.tokensForm.addEventListener('submit', useTokens);
  ui.forget.addEventListener('click', forget);
  ui.errorDismiss.addEventListener('click', () => clearError());
  ui.confirmOk.addEventListener('click', confirmed);
  ui.confirmCancel.addEventListener('click', () => ui.confirm.close());
  ui.confirm.addEventListener('close', () => {
    confirmAction = null;
  });

  // "2 min ago" stays true.
  setInterval(
    () => document.querySelectorAll('time.ago').forEach((node) => updateTime(/** @type {HTMLElement} */ (node))),
    15000,
  );

  connect();
  document.documentElement.dataset.ready = 'true';
}

init();
