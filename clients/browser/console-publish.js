// Publishing: the form (audience, type, a JSON payload checked as you type,
// an optional expiry), and the list of this tab's publishes, each with a
// progress bar of delivered and acknowledged out of its recipients,
// refreshed with a backoff until it has run its course, and a page-by-page
// view of its recipients.

import { ApiError, MAX_TTL_SECS, newIdempotencyKey, publishBody, publishFinished, validTag } from './pigeonhole.js';
import { displayName } from './console-clients.js';
import { SESSION, el, fieldError, plural, timeElement } from './console-ui.js';

const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();

/** The largest payload the API takes, serialized. */
const MAX_PAYLOAD_BYTES = 65536;
/** Publishes kept in the list (and in sessionStorage). */
const MAX_PUBLISHES = 20;
/** Recipients per page of the per-recipient view. */
const RECIPIENT_PAGE = 50;

/**
 * What the payload field holds: `{value}` when it is JSON the API takes,
 * else `{error}`.
 */
export function checkPayload(text) {
  if (!text.trim()) return { error: 'Empty: write a JSON value (null is one).' };
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { error: `Not valid JSON: ${e.message}` };
  }
  const bytes = encoder.encode(JSON.stringify(value)).length;
  if (bytes > MAX_PAYLOAD_BYTES)
    return { error: `Too large: ${bytes} bytes once serialized (at most ${MAX_PAYLOAD_BYTES}).` };
  const kind = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
  return { value, summary: `Valid JSON: ${kind}, ${plural(bytes, 'byte')}` };
}

/** How a publish stands, for the label and for data-state. */
function standing(status) {
  if (!status) return 'loading';
  if (publishFinished(status)) {
    return status.recipients !== null && status.acknowledged === status.recipients ? 'acknowledged' : 'finished';
  }
  return status.state; // queued, delivering, done (not all acknowledged yet)
}

const LABELS = {
  loading: 'Loading…',
  queued: 'Queued',
  delivering: 'Delivering',
  done: 'Delivered, awaiting acks',
  finished: 'Finished',
  acknowledged: 'Acknowledged',
  gone: 'No status',
};

export class PublishView {
  constructor(ctx) {
    this.ctx = ctx;
    /** @type {Map<string, any>} publish id → entry */
    this.entries = new Map();
    this.pending = null; // {text, key} of a publish that failed: retried with the same Idempotency-Key
    const u = (this.ui = {
      form: $('publish-form'),
      audience: () => /** @type {HTMLInputElement} */ (document.querySelector('input[name="audience"]:checked')).value,
      selectedLabel: $('audience-selected-label'),
      audienceSelected: $('audience-selected'),
      audienceTag: $('audience-tag'),
      tag: $('publish-tag'),
      audienceError: $('publish-audience-error'),
      type: $('publish-type'),
      typeError: $('publish-type-error'),
      payload: $('publish-payload'),
      payloadState: $('publish-payload-state'),
      ttl: $('publish-ttl'),
      ttlUnit: $('publish-ttl-unit'),
      ttlError: $('publish-ttl-error'),
      submit: $('publish-submit'),
      result: $('publish-result'),
      list: $('publishes'),
      empty: $('publishes-empty'),
    });
    u.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    u.payload.addEventListener('input', () => this.checkPayloadField());
    u.tag.addEventListener('input', () => {
      u.audienceTag.checked = true;
      fieldError(u.audienceError, u.tag, '');
    });
    u.ttl.addEventListener('input', () => fieldError(u.ttlError, u.ttl, ''));
    u.type.addEventListener('input', () => fieldError(u.typeError, u.type, ''));
    ctx.clients.onSelectionChange(() => this.selectionChanged());
    this.checkPayloadField();
    this.selectionChanged();
    this.restore();
  }

  /** The tokens changed: stop refreshing, and start again if the admin token is there. */
  reset() {
    for (const entry of this.entries.values()) clearTimeout(entry.timer);
    if (!this.ctx.session.get(SESSION.publishes)) {
      this.entries.clear();
      this.ui.list.replaceChildren();
    }
    this.ui.empty.hidden = this.entries.size > 0;
    if (this.ctx.has('admin')) for (const entry of this.entries.values()) if (!entry.finished) this.refresh(entry);
  }

  selectionChanged() {
    const n = this.ctx.clients.selected.size;
    this.ui.selectedLabel.textContent = `Selected clients (${n})`;
    if (n > 0 && this.ui.audienceError.textContent.startsWith('Select')) fieldError(this.ui.audienceError, null, '');
  }

  checkPayloadField() {
    const checked = checkPayload(this.ui.payload.value);
    const state = this.ui.payloadState;
    state.dataset.valid = checked.error ? 'false' : 'true';
    state.textContent = checked.error || checked.summary;
    this.ui.payload.setAttribute('aria-invalid', checked.error ? 'true' : 'false');
    return checked;
  }

  result(kind, text) {
    this.ui.result.dataset.kind = kind;
    this.ui.result.textContent = text;
    this.ui.result.hidden = !text;
  }

  /** Reads and checks the form; returns the request and how to name its audience, or null. */
  readForm() {
    const u = this.ui;
    let ok = true;
    /** @type {any} */
    const request = {};
    let audienceText = '';
    const audience = u.audience();
    fieldError(u.audienceError, null, '');
    if (audience === 'selected') {
      const clients = this.ctx.clients.selectedClients();
      if (clients.length === 0) {
        fieldError(u.audienceError, null, 'Select clients in the table first, or choose another audience.');
        ok = false;
      }
      request.toClientIds = clients.map((c) => c.id);
      audienceText = clients.length === 1 ? displayName(clients[0]) : plural(clients.length, 'selected client');
    } else if (audience === 'tag') {
      const tag = u.tag.value.trim();
      if (!validTag(tag)) {
        fieldError(u.audienceError, u.tag, 'Type a tag: 1–64 characters of a-z 0-9 _ . - (lower case).');
        ok = false;
      }
      request.toTags = [tag];
      audienceText = `tag ${tag}`;
    } else {
      request.toAll = true;
      audienceText = 'everyone';
    }
    const type = u.type.value.trim();
    const typeLength = [...type].length;
    if (typeLength < 1 || typeLength > 64) {
      fieldError(u.typeError, u.type, 'The type must be 1 to 64 characters long.');
      ok = false;
    }
    request.type = type;
    const payload = this.checkPayloadField();
    if (payload.error) ok = false;
    request.payload = payload.value;
    fieldError(u.ttlError, u.ttl, '');
    if (u.ttl.value.trim() !== '') {
      const amount = Number(u.ttl.value);
      const seconds = amount * Number(u.ttlUnit.value);
      if (!Number.isInteger(amount) || amount < 1 || seconds > MAX_TTL_SECS) {
        fieldError(u.ttlError, u.ttl, 'A whole number, from 1 second up to 30 days.');
        ok = false;
      }
      request.ttlSecs = seconds;
    }
    if (!ok) {
      const invalid = u.form.querySelector('[aria-invalid="true"]');
      if (invalid) /** @type {HTMLElement} */ (invalid).focus();
      return null;
    }
    return { request, audienceText };
  }

  async submit() {
    const admin = this.ctx.admin;
    if (!this.ctx.has('admin')) {
      this.result('error', 'Enter the admin token under Connection to publish.');
      return;
    }
    const form = this.readForm();
    if (!form) {
      this.result('', '');
      return;
    }
    if (form.request.toAll) {
      this.ctx.confirm({
        heading: 'Publish to everyone?',
        text: `Every registered client gets this "${form.request.type}" message.`,
        ok: 'Publish to everyone',
        action: async () => {
          await this.send(admin, form);
        },
      });
      return;
    }
    try {
      await this.send(admin, form);
    } catch {
      // Already shown in the form and the banner.
    }
  }

  async send(admin, { request, audienceText }) {
    // The same publish resent after a failure keeps its Idempotency-Key, so
    // it is published once however often the operator presses the button.
    const text = JSON.stringify(publishBody(request));
    const key = this.pending && this.pending.text === text ? this.pending.key : newIdempotencyKey();
    this.pending = { text, key };
    this.ui.submit.disabled = true;
    this.result('pending', 'Publishing…');
    try {
      const answer = await admin.publish({ ...request, idempotencyKey: key, attempts: 3 });
      this.pending = null;
      this.result(
        'ok',
        `Published to ${audienceText}${answer.recipients === null ? '' : ` (${plural(answer.recipients, 'recipient')})`}.`,
      );
      this.ctx.succeeded('publish');
      const entry = this.add({
        publish_id: answer.publish_id,
        type: request.type,
        audience: audienceText,
        at: new Date().toISOString(),
      });
      this.refresh(entry);
    } catch (e) {
      const message = this.ctx.report('publish', e, 'publish', 'admin');
      const retry = e instanceof ApiError && (e.kind === 'network' || e.status >= 500 || e.status === 429);
      this.result(
        'error',
        retry ? `${message} Publishing again sends the same Idempotency-Key: nothing is published twice.` : message,
      );
      if (!retry) this.pending = null;
      throw new Error(message);
    } finally {
      this.ui.submit.disabled = false;
    }
  }

  // ------------------------------------------------------------- the list

  restore() {
    let saved = [];
    try {
      saved = JSON.parse(this.ctx.session.get(SESSION.publishes) || '[]');
    } catch {
      saved = [];
    }
    for (const meta of saved.reverse()) {
      if (meta && typeof meta.publish_id === 'string') this.add(meta, { save: false });
    }
    this.ui.empty.hidden = this.entries.size > 0;
  }

  save() {
    const metas = [...this.entries.values()].map((e) => e.meta).reverse();
    this.ctx.session.set(SESSION.publishes, metas.length ? JSON.stringify(metas) : null);
  }

  /** Adds a publish at the top of the list. */
  add(meta, { save = true } = {}) {
    const existing = this.entries.get(meta.publish_id);
    if (existing) return existing;
    const entry = { meta, status: null, timer: null, delay: this.ctx.step, finished: false, recipientsToken: null };
    entry.node = this.entryNode(entry);
    this.entries.set(meta.publish_id, entry);
    this.ui.list.prepend(entry.node);
    while (this.entries.size > MAX_PUBLISHES) {
      const [oldestId, oldest] = this.entries.entries().next().value;
      clearTimeout(oldest.timer);
      oldest.node.remove();
      this.entries.delete(oldestId);
    }
    this.ui.empty.hidden = true;
    if (save) this.save();
    return entry;
  }

  entryNode(entry) {
    const { meta } = entry;
    const parts = (entry.parts = {
      state: el('span', { className: 'pill', data: { state: 'idle' } }, LABELS.loading),
      delivered: el('div', { className: 'bar-delivered' }),
      acknowledged: el('div', { className: 'bar-acknowledged' }),
      counts: el('p', { className: 'publish-counts' }, '–'),
      error: el('p', { className: 'field-error', hidden: true, attrs: { role: 'alert' } }),
      expires: el('span', { className: 'publish-expires' }),
      refresh: el('button', { type: 'button', className: 'secondary small' }, 'Refresh'),
      recipients: el('details', { className: 'recipients' }),
      recipientRows: el('tbody'),
      recipientsMore: el('button', { type: 'button', className: 'secondary small', hidden: true }, 'Load more'),
      recipientsReload: el('button', { type: 'button', className: 'link-button' }, 'Reload'),
      recipientsStatus: el('p', { className: 'status-line' }),
    });
    parts.progress = el(
      'div',
      {
        className: 'progress',
        attrs: {
          role: 'progressbar',
          'aria-label': `Acknowledged out of recipients: ${meta.type} to ${meta.audience}`,
          'aria-valuemin': '0',
        },
      },
      parts.delivered,
      parts.acknowledged,
    );
    parts.refresh.addEventListener('click', () => {
      entry.delay = this.ctx.step;
      this.refresh(entry);
    });
    parts.recipients.append(
      el('summary', {}, 'Recipients'),
      el(
        'div',
        { className: 'table-wrap' },
        el(
          'table',
          { className: 'recipients-table' },
          el(
            'thead',
            {},
            el(
              'tr',
              {},
              el('th', { scope: 'col' }, 'Client'),
              el('th', { scope: 'col', className: 'num' }, 'Message'),
              el('th', { scope: 'col' }, 'Status'),
            ),
          ),
          parts.recipientRows,
        ),
      ),
      parts.recipientsStatus,
      el('div', { className: 'button-row' }, parts.recipientsMore, parts.recipientsReload),
    );
    parts.recipients.addEventListener('toggle', () => {
      if (parts.recipients.open && !entry.recipientsLoaded) this.loadRecipients(entry, { reset: true });
    });
    parts.recipientsMore.addEventListener('click', () => this.loadRecipients(entry));
    parts.recipientsReload.addEventListener('click', () => this.loadRecipients(entry, { reset: true }));
    return el(
      'li',
      { className: 'publish', data: { publishId: meta.publish_id, state: 'loading' } },
      el(
        'div',
        { className: 'publish-head' },
        el('span', { className: 'publish-type' }, meta.type),
        el('span', { className: 'publish-audience' }, `to ${meta.audience}`),
        timeElement(meta.at),
        parts.state,
      ),
      parts.progress,
      parts.counts,
      el('p', { className: 'publish-meta' }, el('code', { className: 'id' }, meta.publish_id), parts.expires),
      parts.error,
      el('div', { className: 'publish-actions' }, parts.refresh),
      parts.recipients,
    );
  }

  /** Asks for the publish's status now; schedules the next ask while it is not finished. */
  async refresh(entry) {
    clearTimeout(entry.timer);
    entry.timer = null;
    const admin = this.ctx.admin;
    if (!this.ctx.has('admin') || !this.entries.has(entry.meta.publish_id)) return;
    const { parts } = entry;
    try {
      const status = await admin.publishStatus(entry.meta.publish_id);
      if (admin !== this.ctx.admin) return; // the tokens changed meanwhile
      entry.status = status;
      entry.finished = publishFinished(status);
      parts.error.hidden = true;
      this.ctx.succeeded('status');
      this.renderStatus(entry);
      if (!entry.finished) {
        this.schedule(entry, entry.delay);
        entry.delay = Math.min(entry.delay * 2, this.ctx.step * 30);
      }
    } catch (e) {
      if (admin !== this.ctx.admin) return;
      parts.error.hidden = false;
      if (e instanceof ApiError && e.status === 404) {
        entry.finished = true;
        parts.error.textContent = 'The server has no status for this publish (unknown, or older than 15 days).';
        this.setState(entry, 'gone');
        return;
      }
      parts.error.textContent = this.ctx.report('status', e, 'follow the publish', 'admin');
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) return; // until the tokens change
      const wait = e instanceof ApiError && e.retryAfter ? e.retryAfter : entry.delay;
      entry.delay = Math.min(entry.delay * 2, this.ctx.step * 30);
      this.schedule(entry, wait);
    }
  }

  schedule(entry, seconds) {
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => this.refresh(entry), seconds * 1000);
  }

  setState(entry, state) {
    entry.node.dataset.state = state;
    entry.parts.state.textContent = LABELS[state] || state;
    entry.parts.state.dataset.state =
      { acknowledged: 'ok', finished: 'ok', gone: 'error', done: 'polling', delivering: 'polling' }[state] || 'idle';
  }

  renderStatus(entry) {
    const { status, parts } = entry;
    this.setState(entry, standing(status));
    const total = status.recipients;
    const pct = (n) => (total ? `${((100 * n) / total).toFixed(1)}%` : '0%');
    parts.delivered.style.width = pct(status.delivered);
    parts.acknowledged.style.width = pct(status.acknowledged);
    parts.progress.classList.toggle('indeterminate', total === null);
    if (total === null) {
      parts.progress.removeAttribute('aria-valuemax');
      parts.progress.removeAttribute('aria-valuenow');
    } else {
      parts.progress.setAttribute('aria-valuemax', String(total));
      parts.progress.setAttribute('aria-valuenow', String(status.acknowledged));
    }
    const of = total === null ? ' (audience still being counted)' : ` of ${total}`;
    const text =
      `Acknowledged ${status.acknowledged}${of} · delivered ${status.delivered}` +
      ` · expired ${status.expired} · unknown ${status.unknown} · pending ${status.pending}`;
    parts.counts.textContent = text;
    parts.progress.setAttribute('aria-valuetext', text);
    parts.counts.dataset.acknowledged = String(status.acknowledged);
    parts.counts.dataset.delivered = String(status.delivered);
    parts.counts.dataset.recipients = total === null ? '' : String(total);
    parts.expires.textContent = status.expires_at ? ` · expires ${new Date(status.expires_at).toLocaleString()}` : '';
  }

  /** One page of the per-recipient view (the first again with `reset`). */
  async loadRecipients(entry, { reset = false } = {}) {
    const { parts } = entry;
    if (!this.ctx.has('admin')) {
      parts.recipientsStatus.textContent = 'Enter the admin token to see the recipients.';
      return;
    }
    if (reset) entry.recipientsToken = null;
    parts.recipientsMore.disabled = true;
    parts.recipientsStatus.textContent = 'Loading…';
    try {
      const page = await this.ctx.admin.publishStatus(entry.meta.publish_id, {
        recipients: true,
        limit: RECIPIENT_PAGE,
        pageToken: entry.recipientsToken,
      });
      const rows = page.recipient_status || [];
      if (reset) parts.recipientRows.replaceChildren();
      parts.recipientRows.append(...rows.map((r) => this.recipientRow(r)));
      entry.recipientsLoaded = true;
      entry.recipientsToken = page.next_page_token || null;
      // While a tag audience is still being counted the last page has a
      // token too; an empty page means nothing more yet.
      parts.recipientsMore.hidden = !entry.recipientsToken || rows.length === 0;
      const shown = parts.recipientRows.children.length;
      parts.recipientsStatus.textContent =
        page.recipients === null
          ? `${plural(shown, 'recipient')} so far.`
          : `${shown} of ${plural(page.recipients, 'recipient')} shown.`;
      this.ctx.succeeded('recipients');
    } catch (e) {
      parts.recipientsStatus.textContent = this.ctx.report('recipients', e, 'list the recipients', 'admin');
    } finally {
      parts.recipientsMore.disabled = false;
    }
  }

  recipientRow(recipient) {
    const client = this.ctx.clients.byId.get(recipient.client_id);
    return el(
      'tr',
      { data: { clientId: recipient.client_id, status: recipient.status } },
      el(
        'td',
        { data: { label: 'Client' } },
        el(
          'span',
          { className: client && client.name ? 'client-name' : 'client-name unnamed' },
          client ? client.name || '(no name)' : '(not in the list)',
        ),
        el('code', { className: 'id' }, recipient.client_id),
      ),
      el(
        'td',
        { className: 'num', data: { label: 'Message' } },
        recipient.message_id === null ? '–' : `#${recipient.message_id}`,
      ),
      el(
        'td',
        { data: { label: 'Status' } },
        el('span', { className: 'recipient-status', data: { status: recipient.status } }, recipient.status),
      ),
    );
  }
}
