// Small helpers the console's modules share: building elements (text only,
// never HTML), relative times, readable errors. No state lives here.

import { ApiError, InsecureUrlError } from './pigeonhole.js';

/** The console's secrets and this tab's work: sessionStorage only. */
export const SESSION = {
  adminToken: 'pigeonhole.console.adminToken',
  operatorToken: 'pigeonhole.console.operatorToken',
  publishes: 'pigeonhole.console.publishes',
};

/**
 * Creates an element. `props` sets properties (className, type, …), `data`
 * sets data-* attributes, `attrs` sets attributes; children are nodes or
 * strings, and strings become text nodes: data is never parsed as HTML.
 * @param {string} tag
 * @param {{data?: Record<string, string>, attrs?: Record<string, string>, [key: string]: unknown}} [props]
 * @param {...(Node | string | null | undefined | false)} children
 * @returns {HTMLElement}
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === 'data') {
      for (const [name, v] of Object.entries(/** @type {Record<string, string>} */ (value))) node.dataset[name] = v;
    } else if (key === 'attrs') {
      for (const [name, v] of Object.entries(/** @type {Record<string, string>} */ (value))) node.setAttribute(name, v);
    } else {
      // @ts-ignore: a known property of the element (className, type, textContent, …)
      node[key] = value;
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** Shows or hides an inline field error and marks the field invalid. */
export function fieldError(element, field, text) {
  element.textContent = text || '';
  element.hidden = !text;
  if (field) field.setAttribute('aria-invalid', text ? 'true' : 'false');
}

/**
 * "just now", "42 s ago", "2 min ago", "3 h ago", "5 d ago", then the date.
 * @param {string | null} iso
 * @param {number} [now]
 */
export function relativeTime(iso, now = Date.now()) {
  if (!iso) return 'never';
  const then = Date.parse(iso);
  if (!Number.isFinite(then)) return iso;
  const seconds = Math.round((now - then) / 1000);
  if (seconds < 5) return 'just now';
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  const days = Math.floor(hours / 24);
  if (days < 30) return `${days} d ago`;
  return new Date(then).toLocaleDateString();
}

/** The exact time, for a tooltip: local time, then the server's UTC value. */
export function exactTime(iso) {
  if (!iso) return 'never seen';
  const then = Date.parse(iso);
  return Number.isFinite(then) ? `${new Date(then).toLocaleString()} (${iso})` : iso;
}

/**
 * A <time> showing a relative time, with the exact one on hover; refresh it
 * with `updateTime`.
 * @param {string | null} iso
 */
export function timeElement(iso) {
  const node = el('time', { className: 'ago' });
  if (iso) node.dateTime = iso;
  updateTime(node);
  return node;
}

/** @param {HTMLElement} node */
export function updateTime(node) {
  const iso = node.getAttribute('datetime');
  node.textContent = relativeTime(iso);
  node.title = exactTime(iso);
}

/** A readable sentence for a failed call. `role` names the token it used. */
export function describeError(error, action, role = null) {
  if (error instanceof InsecureUrlError) return `Not sent (${action}): ${error.message}.`;
  if (!(error instanceof ApiError)) return `Could not ${action}: ${error && error.message ? error.message : error}`;
  if (error.kind === 'network') {
    return (
      `Network error while trying to ${action}: ${error.message}. Check the base URL, and that the API ` +
      "allows this page's origin (CORS)."
    );
  }
  const code = error.code ? ` ${error.code}` : '';
  const token = role ? `the ${role} token` : 'the token';
  switch (error.status) {
    case 401:
      return `Unauthorized (401): the server refused ${token} while trying to ${action}. Check it under Connection.`;
    case 403:
      return `Forbidden (403) while trying to ${action}: ${error.message}. Something in front of the API refused the request.`;
    case 404:
      return `Not found (404) while trying to ${action}: ${error.message}.`;
    case 429:
      return `Rate limited (429) while trying to ${action}: wait ${error.retryAfter || 'a few'} s and try again.`;
    default:
      if (error.status >= 500)
        return `Server error (${error.status}${code}) while trying to ${action}: ${error.message}.`;
      return `The server refused to ${action} (${error.status}${code}): ${error.message}`;
  }
}

/** Pretty JSON for a payload, as text. */
export function prettyJson(value) {
  try {
    return JSON.stringify(value, null, 2) ?? String(value);
  } catch {
    return String(value);
  }
}

/** "1 client", "2 clients". */
export function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}
