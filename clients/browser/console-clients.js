// The clients table: every client (all pages of the operators' listing,
// or those carrying one tag, asked of the server), filtered by status and
// text and sorted here; row selection (the publish audience "selected
// clients"), tag editing one by one or for the selection, and delete with a
// confirmation that names the client.

import { MAX_TAGS, validTag } from './pigeonhole.js';
import { el, fieldError, plural, timeElement } from './console-ui.js';

/** Rows rendered at first, and added by "Show more". */
const ROWS = 200;

/** The direction each column sorts in first. */
const FIRST_DIRECTION = {
  name: 'asc',
  status: 'asc',
  last_seen: 'desc',
  sent_head: 'desc',
  tags: 'asc',
  created: 'desc',
};

const $ = (id) => document.getElementById(id);

/**
 * A labelled cell: one wrapper inside, so that on a phone (rows shown as
 * cards) the label and the value sit side by side.
 */
function cell(className, label, ...children) {
  return el('td', { className, data: { label } }, el('div', { className: 'cell' }, ...children));
}

/** A client's name for people: its name, or its id when it has none. */
export function displayName(client) {
  return client.name ? client.name : `client ${client.id}`;
}

/** Splits "a, b c" into tags; returns {tags} or {error}. */
export function parseTags(text) {
  const tags = [...new Set(text.split(/[\s,]+/).filter(Boolean))];
  const bad = tags.find((t) => !validTag(t));
  if (bad !== undefined) return { error: `"${bad}" is not a tag: use 1–64 characters of a-z 0-9 _ . - (lower case).` };
  if (tags.length > MAX_TAGS) return { error: `At most ${MAX_TAGS} tags (got ${tags.length}).` };
  return { tags: tags.sort() };
}

function seenAt(client) {
  const t = client.last_seen_at ? Date.parse(client.last_seen_at) : NaN;
  return Number.isFinite(t) ? t : -Infinity;
}

const COMPARE = {
  name: (a, b) => {
    if (!a.name !== !b.name) return a.name ? -1 : 1; // unnamed last
    return (a.name || '').localeCompare(b.name || '', undefined, { sensitivity: 'base', numeric: true });
  },
  status: (a, b) => (a.status === b.status ? seenAt(b) - seenAt(a) : a.status === 'online' ? -1 : 1),
  last_seen: (a, b) => seenAt(a) - seenAt(b),
  sent_head: (a, b) => a.sent_head - b.sent_head,
  tags: (a, b) => {
    if (!a.tags.length !== !b.tags.length) return a.tags.length ? -1 : 1; // untagged last
    return a.tags.join(' ').localeCompare(b.tags.join(' '));
  },
  created: (a, b) => Date.parse(a.created_at) - Date.parse(b.created_at),
};

export class ClientsView {
  constructor(ctx) {
    this.ctx = ctx;
    /** @type {import('./pigeonhole.js').ClientInfo[]} */
    this.clients = [];
    this.byId = new Map();
    this.selected = new Set();
    this.knownTags = new Set();
    this.sort = { key: 'name', dir: 'asc' };
    this.tag = ''; // the server-side filter of the loaded list
    this.rows = ROWS;
    this.loading = null; // AbortController of the load under way
    this.loaded = false;
    this.loadedAt = null;
    this.editing = null; // the client whose tags the dialog edits
    /** @type {Set<() => void>} */
    this.listeners = new Set();

    this.ui = {
      count: $('clients-count'),
      refresh: $('clients-refresh'),
      text: $('filter-text'),
      status: $('filter-status'),
      tagForm: $('filter-tag-form'),
      tag: $('filter-tag'),
      tagError: $('filter-tag-error'),
      sort: $('sort'),
      knownTags: $('known-tags'),
      knownClients: $('known-clients'),
      selectionBar: $('selection-bar'),
      selectionCount: $('selection-count'),
      selectionClear: $('selection-clear'),
      bulkForm: $('bulk-tag-form'),
      bulkTag: $('bulk-tag'),
      bulkRemove: $('bulk-tag-remove'),
      bulkError: $('bulk-tag-error'),
      status_: $('clients-status'),
      table: $('clients-table'),
      body: $('clients-body'),
      selectAll: $('select-all'),
      moreLine: $('clients-more-line'),
      shown: $('clients-shown'),
      more: $('clients-more'),
      tagsDialog: $('tags-dialog'),
      tagsForm: $('tags-form'),
      tagsName: $('tags-dialog-name'),
      tagsInput: $('tags-input'),
      tagsError: $('tags-error'),
      tagsSave: $('tags-save'),
      tagsCancel: $('tags-cancel'),
    };
    const u = this.ui;
    u.refresh.addEventListener('click', () => this.load());
    u.text.addEventListener('input', () => this.render({ resetRows: true }));
    u.status.addEventListener('change', () => this.render({ resetRows: true }));
    u.tagForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.setTagFilter();
    });
    u.tag.addEventListener('change', () => this.setTagFilter());
    u.sort.addEventListener('change', () => {
      const [key, dir] = u.sort.value.split(':');
      this.sort = { key, dir };
      this.render();
    });
    for (const th of u.table.querySelectorAll('th[data-sort]')) {
      th.querySelector('button').addEventListener('click', () => this.sortBy(th.dataset.sort));
    }
    u.selectAll.addEventListener('change', () => {
      for (const client of this.visible()) {
        if (u.selectAll.checked) this.selected.add(client.id);
        else this.selected.delete(client.id);
      }
      this.render();
      this.selectionChanged();
    });
    u.selectionClear.addEventListener('click', () => {
      this.selected.clear();
      this.render();
      this.selectionChanged();
    });
    u.bulkForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.bulkTag('add');
    });
    u.bulkRemove.addEventListener('click', () => this.bulkTag('remove'));
    u.more.addEventListener('click', () => {
      this.rows += ROWS;
      this.render();
    });
    u.tagsForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.saveTags();
    });
    u.tagsCancel.addEventListener('click', () => u.tagsDialog.close());
    this.renderSortState();
  }

  /** The tokens or the base URL changed: start over. */
  reset() {
    if (this.loading) this.loading.abort();
    this.clients = [];
    this.byId = new Map();
    this.selected.clear();
    this.loaded = false;
    this.render();
    this.selectionChanged();
    if (this.ctx.has('operator')) {
      this.load();
    } else {
      this.status('Enter the operator token to list the clients.');
    }
  }

  /** Called with no arguments whenever the selection changes. */
  onSelectionChange(listener) {
    this.listeners.add(listener);
  }

  selectionChanged() {
    const n = this.selected.size;
    this.ui.selectionBar.hidden = n === 0;
    this.ui.selectionCount.textContent = `${plural(n, 'client')} selected`;
    for (const listener of this.listeners) listener();
  }

  /** The selected clients still in the list. */
  selectedClients() {
    return [...this.selected].map((id) => this.byId.get(id)).filter(Boolean);
  }

  status(text, kind = '') {
    this.ui.status_.textContent = text;
    this.ui.status_.dataset.kind = kind;
  }

  // -------------------------------------------------------------- loading

  setTagFilter() {
    const tag = this.ui.tag.value.trim();
    if (tag && !validTag(tag)) {
      fieldError(this.ui.tagError, this.ui.tag, 'Not a tag: 1–64 characters of a-z 0-9 _ . - (lower case).');
      return;
    }
    fieldError(this.ui.tagError, this.ui.tag, '');
    if (tag === this.tag && this.loaded) return;
    this.tag = tag;
    this.load();
  }

  /** Reads every page of the listing (with ?tag= when filtering by tag). */
  async load() {
    const admin = this.ctx.admin;
    if (!admin || !this.ctx.has('operator')) {
      this.status('Enter the operator token to list the clients.');
      return;
    }
    if (this.loading) this.loading.abort();
    const controller = new AbortController();
    this.loading = controller;
    const tag = this.tag;
    this.ui.refresh.disabled = true;
    this.ui.table.setAttribute('aria-busy', 'true');
    this.status(tag ? `Loading the clients tagged ${tag}…` : 'Loading the clients…');
    try {
      const clients = await admin.allClients({
        tag: tag || null,
        signal: controller.signal,
        onPage: (n) => this.status(`Loading… ${plural(n, 'client')} so far`),
      });
      if (this.loading !== controller) return;
      this.clients = clients;
      this.byId = new Map(clients.map((c) => [c.id, c]));
      for (const id of [...this.selected]) if (!this.byId.has(id)) this.selected.delete(id);
      for (const client of clients) for (const t of client.tags) this.knownTags.add(t);
      this.loaded = true;
      this.renderDatalists();
      this.render({ resetRows: true });
      this.selectionChanged();
      this.loadedAt = new Date();
      this.summary();
      this.ctx.succeeded('clients');
    } catch (e) {
      if (controller.signal.aborted) return;
      this.status(this.ctx.report('clients', e, 'list the clients', 'operator'), 'error');
    } finally {
      if (this.loading === controller) {
        this.loading = null;
        this.ui.refresh.disabled = false;
        this.ui.table.removeAttribute('aria-busy');
      }
    }
  }

  /** "5 clients, 3 online · loaded 12:03:04", kept true as clients are tagged or deleted here. */
  summary() {
    const online = this.clients.filter((c) => c.status === 'online').length;
    const tag = this.tag ? ` tagged ${this.tag}` : '';
    const at = this.loadedAt ? ` · loaded ${this.loadedAt.toLocaleTimeString()}` : '';
    this.status(`${plural(this.clients.length, 'client')}${tag}, ${online} online${at}`, 'ok');
  }

  renderDatalists() {
    const tags = [...this.knownTags].sort();
    this.ui.knownTags.replaceChildren(...tags.map((t) => el('option', { value: t })));
    this.ui.knownClients.replaceChildren(
      ...this.clients.slice(0, 1000).map((c) => el('option', { value: c.id, label: c.name || '(no name)' })),
    );
  }

  // ------------------------------------------------------------ rendering

  /** The loaded clients that pass the status and text filters, sorted. */
  visible() {
    const text = this.ui.text.value.trim().toLowerCase();
    const status = this.ui.status.value;
    const compare = COMPARE[this.sort.key] || COMPARE.name;
    const sign = this.sort.dir === 'desc' ? -1 : 1;
    return this.clients
      .filter((c) => !status || c.status === status)
      .filter(
        (c) =>
          !text ||
          (c.name || '').toLowerCase().includes(text) ||
          c.id.includes(text) ||
          c.tags.some((t) => t.includes(text)),
      )
      .sort((a, b) => sign * compare(a, b) || a.id.localeCompare(b.id));
  }

  sortBy(key) {
    const dir = this.sort.key === key ? (this.sort.dir === 'asc' ? 'desc' : 'asc') : FIRST_DIRECTION[key];
    this.sort = { key, dir };
    const option = `${key}:${dir}`;
    if ([...this.ui.sort.options].some((o) => o.value === option)) this.ui.sort.value = option;
    this.render();
  }

  renderSortState() {
    for (const th of this.ui.table.querySelectorAll('th[data-sort]')) {
      const active = th.dataset.sort === this.sort.key;
      if (active) th.setAttribute('aria-sort', this.sort.dir === 'asc' ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
  }

  render({ resetRows = false } = {}) {
    if (resetRows) this.rows = ROWS;
    const visible = this.visible();
    const shown = visible.slice(0, this.rows);
    this.ui.body.replaceChildren(...shown.map((client) => this.row(client)));
    this.renderSortState();
    const total = this.clients.length;
    this.ui.count.textContent = this.loaded
      ? `(${visible.length === total ? total : `${visible.length} of ${total}`})`
      : '';
    this.ui.moreLine.hidden = shown.length >= visible.length;
    this.ui.shown.textContent = `Showing ${shown.length} of ${visible.length}.`;
    this.updateSelectAll(visible);
    if (this.loaded && visible.length === 0) {
      const filtered = total > 0;
      this.ui.body.append(
        el(
          'tr',
          { className: 'empty-row' },
          el(
            'td',
            { colSpan: 7 },
            filtered
              ? 'No client matches the filters.'
              : this.tag
                ? `No client carries the tag ${this.tag}.`
                : 'No clients yet.',
          ),
        ),
      );
    }
  }

  /** The header checkbox: on when every visible client is selected, mixed when some are. */
  updateSelectAll(visible) {
    const selectedShown = visible.filter((c) => this.selected.has(c.id)).length;
    this.ui.selectAll.checked = visible.length > 0 && selectedShown === visible.length;
    this.ui.selectAll.indeterminate = selectedShown > 0 && selectedShown < visible.length;
    this.ui.selectAll.disabled = visible.length === 0;
  }

  /** One row; every value goes in as text. */
  row(client) {
    const name = displayName(client);
    const select = el('input', {
      type: 'checkbox',
      checked: this.selected.has(client.id),
      attrs: { 'aria-label': `Select ${name}` },
    });
    select.addEventListener('change', () => {
      if (select.checked) this.selected.add(client.id);
      else this.selected.delete(client.id);
      row.classList.toggle('selected', select.checked);
      this.updateSelectAll(this.visible());
      this.selectionChanged();
    });
    const button = (text, label, handler, className = 'secondary small') => {
      const b = el('button', { type: 'button', className, textContent: text, attrs: { 'aria-label': label } });
      b.addEventListener('click', handler);
      return b;
    };
    const row = el(
      'tr',
      { className: this.selected.has(client.id) ? 'selected' : '', data: { id: client.id, status: client.status } },
      el('td', { className: 'col-select' }, select),
      cell(
        'col-status',
        'Status',
        el('span', { className: 'dot', data: { status: client.status }, attrs: { 'aria-hidden': 'true' } }),
        el('span', { className: 'status-text' }, client.status),
      ),
      cell(
        'col-name',
        'Name',
        client.name
          ? el('span', { className: 'client-name' }, client.name)
          : el('span', { className: 'client-name unnamed' }, '(no name)'),
        el('code', { className: 'id' }, client.id),
      ),
      cell(
        'col-tags',
        'Tags',
        client.tags.length
          ? el('ul', { className: 'tags' }, ...client.tags.map((t) => el('li', { className: 'tag' }, t)))
          : el('span', { className: 'muted' }, 'none'),
      ),
      cell('col-seen', 'Last seen', timeElement(client.last_seen_at)),
      cell('col-sent num', 'Sent', String(client.sent_head)),
      el(
        'td',
        { className: 'col-actions' },
        el(
          'div',
          { className: 'row-actions' },
          button('Tags', `Edit the tags of ${name}`, () => this.editTags(client)),
          button('Sends', `Show what ${name} sent`, () => this.ctx.inbound.show(client.id)),
          button('Delete', `Delete ${name}`, () => this.confirmDelete(client), 'danger small'),
        ),
      ),
    );
    return row;
  }

  // ----------------------------------------------------------------- tags

  editTags(client) {
    this.editing = client;
    this.ui.tagsName.textContent = displayName(client);
    this.ui.tagsInput.value = client.tags.join(' ');
    fieldError(this.ui.tagsError, this.ui.tagsInput, '');
    this.ui.tagsDialog.showModal();
    this.ui.tagsInput.focus();
  }

  async saveTags() {
    const client = this.editing;
    if (!client) return;
    const parsed = parseTags(this.ui.tagsInput.value);
    if (parsed.error) {
      fieldError(this.ui.tagsError, this.ui.tagsInput, parsed.error);
      return;
    }
    this.ui.tagsSave.disabled = true;
    try {
      const answer = await this.ctx.admin.setTags(client.id, parsed.tags);
      this.applyTags(client.id, answer.tags);
      this.ui.tagsDialog.close();
      this.ctx.succeeded('tags');
      this.ctx.notice(
        answer.tags.length
          ? `Tags of ${displayName(client)}: ${answer.tags.join(', ')}.`
          : `${displayName(client)} has no tags now.`,
      );
    } catch (e) {
      fieldError(this.ui.tagsError, this.ui.tagsInput, this.ctx.report('tags', e, 'set the tags', 'operator'));
    } finally {
      this.ui.tagsSave.disabled = false;
    }
  }

  applyTags(id, tags) {
    const client = this.byId.get(id);
    if (!client) return;
    client.tags = tags;
    for (const t of tags) this.knownTags.add(t);
    if (this.tag && !tags.includes(this.tag)) {
      // It no longer belongs to the list filtered by that tag.
      this.clients = this.clients.filter((c) => c.id !== id);
      this.byId.delete(id);
      this.selected.delete(id);
      this.summary();
    }
    this.renderDatalists();
    this.render();
  }

  /** Adds a tag to, or removes it from, every selected client. */
  async bulkTag(how) {
    const tag = this.ui.bulkTag.value.trim();
    if (!validTag(tag)) {
      fieldError(
        this.ui.bulkError,
        this.ui.bulkTag,
        'Type a tag first: 1–64 characters of a-z 0-9 _ . - (lower case).',
      );
      return;
    }
    fieldError(this.ui.bulkError, this.ui.bulkTag, '');
    const targets = this.selectedClients().filter((c) =>
      how === 'add' ? !c.tags.includes(tag) : c.tags.includes(tag),
    );
    let done = 0;
    for (const client of targets) {
      const tags = how === 'add' ? [...client.tags, tag] : client.tags.filter((t) => t !== tag);
      if (tags.length > MAX_TAGS) {
        fieldError(this.ui.bulkError, this.ui.bulkTag, `${displayName(client)} already has ${MAX_TAGS} tags.`);
        break;
      }
      try {
        const answer = await this.ctx.admin.setTags(client.id, tags);
        this.applyTags(client.id, answer.tags);
        done += 1;
      } catch (e) {
        fieldError(
          this.ui.bulkError,
          this.ui.bulkTag,
          this.ctx.report('tags', e, `set the tags of ${displayName(client)}`, 'operator'),
        );
        break;
      }
    }
    this.selectionChanged();
    if (done > 0 || targets.length === 0) {
      this.ctx.succeeded('tags');
      this.ctx.notice(
        how === 'add'
          ? `Tagged ${plural(done, 'client')} ${tag}${targets.length === 0 ? ' (they all had it)' : ''}.`
          : `Removed ${tag} from ${plural(done, 'client')}.`,
      );
    }
  }

  // --------------------------------------------------------------- delete

  confirmDelete(client) {
    const name = displayName(client);
    this.ctx.confirm({
      heading: 'Delete this client?',
      text:
        `Delete ${client.name ? `“${client.name}” (${client.id})` : name}? Its token stops working at once; its inbox, ` +
        'what it sent and its tags are deleted. Registering with its fingerprint makes a new client. This cannot be undone.',
      ok: `Delete ${client.name ? `“${client.name}”` : 'the client'}`,
      action: async () => {
        try {
          await this.ctx.admin.deleteClient(client.id);
        } catch (e) {
          throw new Error(this.ctx.report('delete', e, `delete ${name}`, 'operator'));
        }
        this.clients = this.clients.filter((c) => c.id !== client.id);
        this.byId.delete(client.id);
        this.selected.delete(client.id);
        this.renderDatalists();
        this.render();
        this.summary();
        this.selectionChanged();
        this.ctx.succeeded('delete');
        this.ctx.notice(`Deleted ${name}.`);
        this.ctx.inbound.forgetClient(client.id);
      },
    });
  }
}
