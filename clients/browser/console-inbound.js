// Inbound: what one client sent, newest first, as the server decrypted it.
//
// The API pages a client's sends oldest first (`after`). The newest ones
// are read from the client's `sent_head` (the listing has it) backwards, a
// window at a time: ids (head − 20, head], then the 20 before, on "Load
// more". Without the listing (no operator token, or a client not in it) the
// sends are read oldest first to the end, once, and shown newest first.
// One cheap call first (`after=0&limit=1`) finds the oldest message still
// kept, so "Load more" knows where to stop.

import { el, fieldError, plural, prettyJson, timeElement } from './console-ui.js';

const $ = (id) => document.getElementById(id);

/** Messages per window. */
const WINDOW = 20;
/** Reading oldest first (no sent_head) stops after this many. */
const MAX_READ_ALL = 5000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class InboundView {
  constructor(ctx) {
    this.ctx = ctx;
    this.view = null; // {clientId, floor, oldest, newest, rest, token}
    this.ui = {
      card: $('inbound'),
      form: $('inbound-form'),
      client: $('inbound-client'),
      submit: $('inbound-submit'),
      error: $('inbound-error'),
      box: $('inbound-view'),
      name: $('inbound-name'),
      id: $('inbound-id'),
      newer: $('inbound-newer'),
      status: $('inbound-status'),
      list: $('inbound-messages'),
      more: $('inbound-more'),
    };
    this.ui.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.show(this.ui.client.value.trim());
    });
    this.ui.more.addEventListener('click', () => this.more());
    this.ui.newer.addEventListener('click', () => this.newer());
  }

  reset() {
    this.view = null;
    this.ui.box.hidden = true;
    this.ui.list.replaceChildren();
    fieldError(this.ui.error, this.ui.client, '');
  }

  /** A deleted client's sends are gone with it. */
  forgetClient(clientId) {
    if (this.view && this.view.clientId === clientId) this.reset();
  }

  status(text) {
    this.ui.status.textContent = text;
  }

  /** Shows what `clientId` sent, newest first. */
  async show(clientId) {
    fieldError(this.ui.error, this.ui.client, '');
    if (!UUID.test(clientId)) {
      fieldError(this.ui.error, this.ui.client, "Enter a client id (a UUID), or press Sends in a client's row.");
      return;
    }
    if (!this.ctx.has('admin')) {
      fieldError(this.ui.error, this.ui.client, 'Reading what a client sent needs the admin token (under Connection).');
      return;
    }
    clientId = clientId.toLowerCase();
    this.ui.client.value = clientId;
    const client = this.ctx.clients.byId.get(clientId) || null;
    const token = {};
    this.view = { clientId, floor: 0, oldest: null, newest: 0, rest: [], token };
    this.ui.name.textContent = client ? client.name || '(no name)' : '(not in the list)';
    this.ui.name.classList.toggle('unnamed', !client || !client.name);
    this.ui.id.textContent = clientId;
    this.ui.list.replaceChildren();
    this.ui.more.hidden = true;
    this.ui.box.hidden = false;
    this.ui.card.scrollIntoView({ block: 'start', behavior: 'smooth' });
    this.status('Loading…');
    this.ui.submit.disabled = true;
    try {
      const admin = this.ctx.admin;
      const first = await admin.sent(clientId, { after: 0, limit: 1 });
      if (this.view.token !== token) return;
      if (first === null) {
        this.status('This client has sent nothing (or nothing still kept).');
        this.ctx.succeeded('inbound');
        return;
      }
      this.view.oldest = first.messages[0].id;
      if (client && client.sent_head >= this.view.oldest) {
        const head = client.sent_head;
        this.view.floor = Math.max(this.view.oldest - 1, head - WINDOW);
        const messages = await admin.sentRange(clientId, this.view.floor, head);
        if (this.view.token !== token) return;
        this.view.newest = head;
        this.append(messages);
      } else {
        // No sent_head to count back from: read them all, oldest first.
        const all = [];
        for await (const m of admin.iterSent(clientId, { limit: 500 })) {
          all.push(m);
          if (all.length >= MAX_READ_ALL) break;
        }
        if (this.view.token !== token) return;
        this.view.newest = all.length ? all[all.length - 1].id : 0;
        this.view.rest = all.slice(0, Math.max(0, all.length - WINDOW));
        this.view.floor = this.view.rest.length ? this.view.rest[this.view.rest.length - 1].id : this.view.oldest - 1;
        this.append(all.slice(-WINDOW));
      }
      this.ctx.succeeded('inbound');
    } catch (e) {
      if (this.view && this.view.token === token) {
        const text = this.ctx.report('inbound', e, 'read what the client sent', 'admin');
        this.status(text);
      }
    } finally {
      this.ui.submit.disabled = false;
    }
  }

  /** The next (older) window. */
  async more() {
    const view = this.view;
    if (!view) return;
    this.ui.more.disabled = true;
    try {
      if (view.rest.length) {
        const older = view.rest.slice(-WINDOW);
        view.rest = view.rest.slice(0, -WINDOW);
        view.floor = view.rest.length ? view.rest[view.rest.length - 1].id : view.oldest - 1;
        this.append(older);
        return;
      }
      const through = view.floor;
      const after = Math.max(view.oldest - 1, through - WINDOW);
      const messages = await this.ctx.admin.sentRange(view.clientId, after, through);
      if (this.view !== view) return;
      view.floor = after;
      this.append(messages);
      this.ctx.succeeded('inbound');
    } catch (e) {
      if (this.view === view) this.status(this.ctx.report('inbound', e, 'read older messages', 'admin'));
    } finally {
      this.ui.more.disabled = false;
    }
  }

  /** Whatever the client sent since the newest message shown. */
  async newer() {
    const view = this.view;
    if (!view) return;
    this.ui.newer.disabled = true;
    try {
      const fresh = [];
      for await (const m of this.ctx.admin.iterSent(view.clientId, { after: view.newest, limit: 500 })) fresh.push(m);
      if (this.view !== view) return;
      if (fresh.length) {
        view.newest = fresh[fresh.length - 1].id;
        if (view.oldest === null) view.oldest = fresh[0].id;
        this.ui.list.prepend(...fresh.reverse().map((m) => this.item(m)));
      }
      this.updateStatus(fresh.length ? `${plural(fresh.length, 'newer message')} added.` : 'Nothing newer.');
      this.ctx.succeeded('inbound');
    } catch (e) {
      if (this.view === view) this.status(this.ctx.report('inbound', e, 'read newer messages', 'admin'));
    } finally {
      this.ui.newer.disabled = false;
    }
  }

  /** Adds older messages (ascending, as the API pages them) at the bottom. */
  append(ascending) {
    this.ui.list.append(...[...ascending].reverse().map((m) => this.item(m)));
    this.updateStatus();
  }

  updateStatus(prefix = '') {
    const view = this.view;
    const shown = this.ui.list.children.length;
    const moreLeft = view.oldest !== null && view.floor >= view.oldest;
    this.ui.more.hidden = !moreLeft;
    const text = shown
      ? `${plural(shown, 'message')} shown, newest first${moreLeft ? '' : ' (all that are kept)'}.`
      : 'No messages in this range.';
    this.status(prefix ? `${prefix} ${text}` : text);
  }

  /** One message; type, payload and aad go in as text. */
  item(message) {
    const aad = message.aad || {};
    const extra = Object.keys(aad).some((k) => k !== 'client_id');
    return el(
      'li',
      { className: 'message', data: { id: String(message.id) } },
      el(
        'div',
        { className: 'message-head' },
        el('span', { className: 'message-type' }, message.type),
        el('span', { className: 'message-time' }, timeElement(message.created_at)),
        el('span', { className: 'message-id' }, `#${message.id}`),
      ),
      el('pre', { className: 'message-payload' }, prettyJson(message.payload)),
      extra ? el('p', { className: 'message-aad' }, `aad ${JSON.stringify(aad)}`) : null,
    );
  }
}
