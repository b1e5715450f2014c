// All application state in one place: a state object, subscribe, and the actions that call the
// API client and update the state. Views read the state through useStore() and call actions;
// they never talk to the node themselves.

import { useEffect, useReducer, useRef } from './vendor/preact-htm.js';
import * as api from './api.js';
import { shortId } from './format.js';

export { ApiError } from './api.js';

const SKIP_KEY = 'kith.firstRunSkipped';
const PAGE = 50;

function readSkip() {
  try {
    return localStorage.getItem(SKIP_KEY) === '1';
  } catch {
    return false;
  }
}

/** An empty conversation (direct or group) before its first page arrives. */
const EMPTY_THREAD = Object.freeze({ messages: [], more: false, loaded: false, loading: false, older: false, error: '' });

let state = {
  auth: 'unknown', // unknown | ok | signed-out
  authError: '',
  socket: 'connecting', // connecting | open | down
  me: '', // our peer id
  status: null, // GET /v1/status
  doctor: null, // GET /v1/doctor: the checks `kith doctor` runs
  peers: [], // GET /v1/peers
  names: null, // our own names; null until known
  skipped: readSkip(), // the first-run screen was skipped
  contacts: [],
  inbox: [], // conversations, requests included (trust)
  groups: [],
  invitations: [],
  listsLoaded: false,
  threads: {}, // "chat:<peer id>" | "group:<group id>" → { messages, more, loaded, loading, older, error }
  files: {}, // peer id → { file id (= message id) → GET /v1/files entry }
  filters: null, // GET /v1/filters: the photo filter presets; null until asked for
  open: null, // the conversation on screen: { kind: 'chat' | 'group', id }
  dialog: null, // { name, ...props }
  invite: null, // GET /v1/invite
  notice: '', // a short message for everyone (errors of background work)
  call: null, // the call we are in, placing, or that just ended (calls.js writes it)
  incoming: null, // the CallReport of a call ringing for us
  launch: null, // { call: who, video } from `kith call`'s URL, until the app places that call
};

const subscribers = new Set();
let notifyQueued = false;
/** The state keys whose values changed since subscribers were last told. */
let changedKeys = new Set();

export const getState = () => state;

/** Calls `fn(state, changedKeys)` after every batch of changes (once per microtask). */
export function subscribe(fn) {
  subscribers.add(fn);
  return () => subscribers.delete(fn);
}

function set(patch) {
  const next = typeof patch === 'function' ? patch(state) : patch;
  for (const key of Object.keys(next)) if (next[key] !== state[key]) changedKeys.add(key);
  state = { ...state, ...next };
  if (!notifyQueued) {
    notifyQueued = true;
    queueMicrotask(() => {
      notifyQueued = false;
      const keys = changedKeys;
      changedKeys = new Set();
      for (const fn of [...subscribers]) fn(state, keys);
    });
  }
}

/**
 * The state keys a call changes many times a second while it starts (calls.js writes them).
 * Views that do not show the call pass them as `except`, so that a call's set-up does not
 * re-render the chat list and the conversation each time (on a small machine that work
 * competed with the call's own for the CPU).
 */
export const CALL_KEYS = ['call', 'incoming'];

/**
 * The current state; re-renders the calling component when it changes, except when only keys
 * in `except` changed (see `CALL_KEYS`; read those through `useSelect`).
 */
export function useStore({ except = null } = {}) {
  const [, tick] = useReducer((n) => n + 1, 0);
  const rendered = state;
  useEffect(() => {
    const unsubscribe = subscribe((_, keys) => {
      if (!except || !keys.size || [...keys].some((k) => !except.includes(k))) tick();
    });
    // A change between this render and the subscription is not lost.
    if (state !== rendered) tick();
    return unsubscribe;
  }, []);
  return state;
}

/** `pick(state)`; re-renders the calling component only when that value changes (`Object.is`). */
export function useSelect(pick) {
  const [, tick] = useReducer((n) => n + 1, 0);
  const picked = pick(state);
  const last = useRef(null);
  last.current = { pick, picked };
  useEffect(() => {
    const changed = () => !Object.is(last.current.pick(state), last.current.picked);
    const unsubscribe = subscribe(() => {
      if (changed()) tick();
    });
    if (changed()) tick();
    return unsubscribe;
  }, []);
  return picked;
}

/** Whether a call is on screen (placing, ringing, going on; not its "ended" screen). */
export const inCallNow = (s) => !!s.call && s.call.phase !== 'ended';

// --- names -------------------------------------------------------------------------------------

let nameCache = { contacts: null, inbox: null, groups: null, map: new Map() };

function nameMap(s) {
  const c = nameCache;
  if (c.contacts === s.contacts && c.inbox === s.inbox && c.groups === s.groups) return c.map;
  const map = new Map();
  for (const g of s.groups) for (const m of g.members || []) if (m.petname) map.set(m.peer_id, m.petname);
  for (const i of s.inbox) if (i.petname) map.set(i.peer_id, i.petname);
  // Contacts last so they win; the oldest petname of a peer wins over later ones.
  const sorted = [...s.contacts].sort((a, b) => b.added_at - a.added_at);
  for (const k of sorted) map.set(k.peer_id, k.petname);
  nameCache = { contacts: s.contacts, inbox: s.inbox, groups: s.groups, map };
  return map;
}

/** How we call a peer: "You", our petname for them, or their shortened peer id. */
export function displayName(s, peer) {
  if (!peer) return '';
  if (peer === s.me) return 'You';
  return nameMap(s).get(peer) || shortId(peer);
}

/** Our petname for a peer, if any. */
export function petnameOf(s, peer) {
  const mine = s.contacts.filter((k) => k.peer_id === peer).sort((a, b) => a.added_at - b.added_at);
  return mine.length ? mine[0].petname : '';
}

// --- derived lists -------------------------------------------------------------------------------

/** Message requests: someone not accepted wrote to us (entries without any message are not). */
export const requestsOf = (s) => s.inbox.filter((c) => c.trust === 'request' && (c.last_message_at || c.last_text));
export const conversationOf = (s, peer) => s.inbox.find((c) => c.peer_id === peer) || null;
export const groupOf = (s, id) => s.groups.find((g) => g.group_id === id) || null;
export const threadOf = (s, kind, id) => s.threads[`${kind}:${id}`] || EMPTY_THREAD;
const NO_FILES = Object.freeze({});
/** The files of a direct conversation by id (= the id of the message that carried each). */
export const filesOf = (s, peer) => s.files[peer] || NO_FILES;

/** The chat list: accepted conversations and joined groups, most recent first. */
export function chatItems(s) {
  const items = [];
  for (const c of s.inbox) {
    if (c.trust !== 'accepted') continue;
    items.push({
      kind: 'chat',
      id: c.peer_id,
      title: displayName(s, c.peer_id),
      text: c.last_text || '',
      at: c.last_message_at || 0,
      unread: c.unread || 0,
    });
  }
  for (const g of s.groups) {
    if (g.state !== 'joined') continue;
    items.push({
      kind: 'group',
      id: g.group_id,
      title: g.title,
      text: g.last_text || '',
      at: g.last_message_at || 0,
      unread: g.unread || 0,
    });
  }
  return items.sort((a, b) => b.at - a.at);
}

/** Group invitations waiting for an answer. */
export function invitationsOf(s) {
  const seen = new Set();
  const out = [];
  for (const g of [...s.invitations, ...s.groups]) {
    if (g.state !== 'invited' || seen.has(g.group_id)) continue;
    seen.add(g.group_id);
    out.push(g);
  }
  return out;
}

export const needsFirstRun = (s) => s.auth === 'ok' && Array.isArray(s.names) && s.names.length === 0 && !s.skipped;

// --- messages ------------------------------------------------------------------------------------

const RANK = { queued: 0, failed: 1, delivered: 2, read: 3, received: 0, seen: 1 };
// Status changes that arrived before the message itself (the send answer can lose the race).
const earlyStatus = new Map();

function mergeOne(old, m) {
  let merged = old ? { ...old, ...m } : m;
  if (old && old.status && m.status && (RANK[old.status] ?? 0) > (RANK[m.status] ?? 0)) {
    merged.status = old.status;
  }
  const early = earlyStatus.get(merged.id);
  if (early) {
    earlyStatus.delete(merged.id);
    if ((RANK[early] ?? 0) > (RANK[merged.status] ?? 0)) merged = { ...merged, status: early };
  }
  return merged;
}

const byId = (a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** Merges messages by id (ids are time-ordered: the node sorts by them too); never duplicates. */
export function mergeMessages(list, incoming) {
  if (!incoming.length) return list;
  const map = new Map(list.map((m) => [m.id, m]));
  for (const m of incoming) map.set(m.id, mergeOne(map.get(m.id), m));
  return [...map.values()].sort(byId);
}

const kinds = {
  chat: { history: api.history, read: api.markRead },
  group: { history: api.groupHistory, read: api.markGroupRead },
};

function updateThread(key, fn) {
  set((s) => ({ threads: { ...s.threads, [key]: fn(s.threads[key] || EMPTY_THREAD) } }));
}

const hasMore = (res) => (typeof res.more === 'boolean' ? res.more : res.messages.length >= PAGE);

/**
 * Loads (or reloads) the newest page of a conversation and merges it in. When the fresh page
 * does not reach what is already shown (many messages arrived while away) it replaces it, so no
 * gap is ever shown. Returns the answer (a direct conversation's carries the resolved peer id).
 */
export async function loadLatest(kind, id) {
  const key = `${kind}:${id}`;
  updateThread(key, (t) => ({ ...t, loading: true, error: '' }));
  if (kind === 'chat') loadFiles(id);
  let res;
  try {
    res = await kinds[kind].history(id, { limit: PAGE });
  } catch (e) {
    updateThread(key, (t) => ({ ...t, loading: false, error: e.message }));
    throw e;
  }
  updateThread(key, (t) => {
    const fresh = res.messages || [];
    const last = t.messages.length ? t.messages[t.messages.length - 1].id : null;
    const reaches = !hasMore(res) || !fresh.length || !last || fresh[0].id <= last;
    if (t.loaded && t.messages.length && reaches) {
      return { ...t, messages: mergeMessages(t.messages, fresh), loading: false, loaded: true };
    }
    return { ...t, messages: mergeMessages([], fresh), more: hasMore(res), loading: false, loaded: true, error: '' };
  });
  return res;
}

/** Loads the page before the oldest message shown, if there is one. */
export async function loadOlder(kind, id) {
  const key = `${kind}:${id}`;
  const t = threadOf(state, kind, id);
  if (!t.loaded || t.loading || t.older || !t.more || !t.messages.length) return;
  const first = t.messages[0].id;
  updateThread(key, (x) => ({ ...x, older: true }));
  try {
    const res = await kinds[kind].history(id, { limit: PAGE, before: first });
    updateThread(key, (x) => {
      // A reload replaced the list meanwhile: this page no longer joins it, drop it.
      if (!x.messages.length || x.messages[0].id !== first) return { ...x, older: false };
      return { ...x, messages: mergeMessages(x.messages, res.messages || []), more: hasMore(res), older: false };
    });
  } catch (e) {
    updateThread(key, (x) => ({ ...x, older: false, error: e.message }));
  }
}

/** Adds messages to a conversation that is already loaded (one not loaded loads on opening). */
function addToThread(kind, id, messages, force = false) {
  const key = `${kind}:${id}`;
  if (!force && !(state.threads[key] && state.threads[key].loaded)) return;
  updateThread(key, (t) => ({ ...t, loaded: true, messages: mergeMessages(t.messages, messages) }));
}

function setMessageStatus(peer, id, status) {
  const key = `chat:${peer}`;
  const t = state.threads[key];
  if (!t || !t.messages.some((m) => m.id === id)) {
    if (earlyStatus.size > 500) earlyStatus.clear();
    earlyStatus.set(id, status);
    return;
  }
  updateThread(key, (x) => ({ ...x, messages: mergeMessages(x.messages, [{ id, status }]) }));
}

/** Whether a conversation is on screen and the page is visible. */
export function isVisible(kind, id) {
  const o = state.open;
  return !!o && o.kind === kind && o.id === id && document.visibilityState === 'visible';
}

const reading = new Set();

/** Marks a conversation read on the node (read receipts) and here. */
export async function markRead(kind, id) {
  const key = `${kind}:${id}`;
  if (reading.has(key)) return;
  reading.add(key);
  try {
    await kinds[kind].read(id);
    if (kind === 'chat') {
      set((s) => ({ inbox: s.inbox.map((c) => (c.peer_id === id ? { ...c, unread: 0 } : c)) }));
      updateThread(key, (t) => ({
        ...t,
        messages: t.messages.map((m) => (m.status === 'received' ? { ...m, status: 'seen' } : m)),
      }));
    } else {
      set((s) => ({ groups: s.groups.map((g) => (g.group_id === id ? { ...g, unread: 0 } : g)) }));
    }
  } catch {
    // Not fatal: the next open or incoming message tries again.
  } finally {
    reading.delete(key);
  }
}

/** Tells the store which conversation is on screen (null for none); loads and marks it read. */
export async function setOpen(open) {
  const same = state.open && open && state.open.kind === open.kind && state.open.id === open.id;
  set({ open });
  if (!open || same) return null;
  const res = await loadLatest(open.kind, open.id).catch(() => null);
  if (res && isVisible(open.kind, open.id)) markRead(open.kind, open.id);
  if (open.kind === 'group' && !groupOf(state, open.id)) refreshGroup(open.id);
  return res;
}

document.addEventListener('visibilitychange', () => {
  const o = state.open;
  if (o && document.visibilityState === 'visible') markRead(o.kind, o.id);
});

/** Sends a message in a direct or group conversation; shows it at once. */
export async function sendMessage(kind, id, text) {
  if (kind === 'chat') {
    const res = await api.send(id, text);
    const now = Date.now();
    const m = { id: res.id, from: state.me, to: res.peer_id, text, sent_at: now, received_at: 0, status: res.status };
    addToThread('chat', res.peer_id, [m], true);
    bumpConversation(res.peer_id, text, now, false);
    return res;
  }
  const res = await api.sendGroup(id, text);
  const now = Date.now();
  const m = { id: res.id, from: state.me, seq: res.seq, text, sent_at: now, received_at: now, outgoing: true };
  addToThread('group', id, [m], true);
  bumpGroup(id, text, now, false);
  return res;
}

function bumpConversation(peer, text, at, incoming) {
  const known = state.inbox.some((c) => c.peer_id === peer);
  if (!known) {
    refreshListsSoon();
    return;
  }
  set((s) => {
    const inbox = s.inbox.map((c) =>
      c.peer_id === peer
        ? { ...c, last_text: text, last_message_at: at, unread: (c.unread || 0) + (incoming ? 1 : 0) }
        : c,
    );
    return { inbox: inbox.sort((a, b) => (b.last_message_at || 0) - (a.last_message_at || 0)) };
  });
  refreshListsSoon();
}

function bumpGroup(id, text, at, incoming) {
  set((s) => ({
    groups: s.groups.map((g) =>
      g.group_id === id
        ? { ...g, last_text: text, last_message_at: at, unread: (g.unread || 0) + (incoming ? 1 : 0) }
        : g,
    ),
  }));
  refreshListsSoon();
}

// --- files ---------------------------------------------------------------------------------------

function putFiles(peer, list, replace = false) {
  set((s) => {
    const mine = replace ? {} : { ...(s.files[peer] || {}) };
    for (const f of list) mine[f.file_id] = f;
    return { files: { ...s.files, [peer]: mine } };
  });
}

/** Reads the files of a direct conversation (with its history, and again on file events). */
export async function loadFiles(peer) {
  try {
    putFiles(peer, (await api.files(peer)) || [], true);
  } catch {
    // The messages still show (as text); the next load tries again.
  }
}

const filesTimers = new Map();

function loadFilesSoon(peer, delay = 300) {
  clearTimeout(filesTimers.get(peer));
  filesTimers.set(
    peer,
    setTimeout(() => {
      filesTimers.delete(peer);
      loadFiles(peer);
    }, delay),
  );
}

async function refreshFile(peer, id) {
  try {
    putFiles(peer, [await api.file(id)]);
  } catch {
    loadFilesSoon(peer);
  }
}

/** A `file` event: progress of an incoming file; `received == size` means it is complete. */
function fileProgress(ev) {
  const peer = ev.peer_id;
  const known = state.files[peer] && state.files[peer][ev.id];
  // A progress event still on its way when the file was cancelled does not bring it back.
  if (known && known.state === 'cancelled') return;
  if (!known) {
    if (state.files[peer]) loadFilesSoon(peer);
    return;
  }
  const complete = ev.size > 0 && ev.received >= ev.size;
  putFiles(peer, [
    {
      ...known,
      received_bytes: ev.received,
      transfer_size: ev.size || known.transfer_size,
      state: complete ? known.state : 'downloading',
    },
  ]);
  if (complete) refreshFile(peer, ev.id);
}

/**
 * Cancels a file's transfer for good (the node deletes what arrived and never retries); the entry
 * shows `cancelled` at once. Throws the node's error (e.g. 409 `complete`: it arrived meanwhile).
 */
export async function cancelFile(f) {
  try {
    putFiles(f.peer_id, [await api.cancelFile(f.file_id)]);
  } catch (e) {
    refreshFile(f.peer_id, f.file_id);
    throw e;
  }
}

/** The photo filter presets (asked for once). */
export async function loadFilters() {
  if (state.filters) return state.filters;
  const filters = await api.filters();
  set({ filters });
  return filters;
}

export const thumbnailUrl = api.thumbnailUrl;
export const contentUrl = api.contentUrl;

/**
 * Sends a file (File or Blob) to a peer: `opts` = { name, caption, filter, original }. The message
 * that carries it shows at once; its file entry follows from the node.
 */
export async function sendFile(peer, blob, opts = {}) {
  const name = opts.name || blob.name || 'file';
  const caption = (opts.caption || '').trim();
  const res = await api.uploadFile(peer, blob, { ...opts, name, caption });
  const now = Date.now();
  const text = caption || name;
  putFiles(peer, [
    {
      file_id: res.file_id || res.id,
      message_id: res.id,
      from: state.me,
      peer_id: peer,
      outgoing: true,
      name,
      mime: blob.type || 'application/octet-stream',
      size: res.size,
      hash: res.hash,
      state: 'complete',
      received_bytes: res.size,
      transfer_size: res.size,
      width: 0,
      height: 0,
      caption,
      note: res.note || '',
    },
  ]);
  const m = { id: res.id, from: state.me, to: peer, text, sent_at: now, received_at: 0, status: res.status };
  addToThread('chat', peer, [m], true);
  bumpConversation(peer, text, now, false);
  loadFiles(peer);
  // What the node did differently than asked (a photo it could not read went as a plain file...).
  if (res.note) setNotice(res.note);
  return res;
}

// --- events --------------------------------------------------------------------------------------

function onEvent(ev) {
  switch (ev.type) {
    case 'message': {
      const m = ev.message;
      if (!m) return;
      const incoming = m.from !== state.me;
      const peer = incoming ? m.from : m.to;
      addToThread('chat', peer, [m]);
      // The message may carry a file: its entry is listed as soon as the message is stored.
      if (state.files[peer]) loadFilesSoon(peer);
      const visible = isVisible('chat', peer);
      bumpConversation(peer, m.text, m.received_at || m.sent_at || Date.now(), incoming && !visible);
      if (incoming && visible) markRead('chat', peer);
      break;
    }
    case 'status':
      setMessageStatus(ev.peer_id, ev.id, ev.status);
      break;
    case 'group_message': {
      const m = ev.message;
      if (!m) return;
      addToThread('group', ev.group_id, [m]);
      const visible = isVisible('group', ev.group_id);
      bumpGroup(ev.group_id, m.text, m.received_at || m.sent_at || Date.now(), !m.outgoing && !visible);
      if (!m.outgoing && visible) markRead('group', ev.group_id);
      break;
    }
    case 'group_invitation':
    case 'group_changed':
      refreshListsSoon();
      break;
    case 'file':
      fileProgress(ev);
      break;
    case 'lagged':
      refreshAll();
      break;
    default:
      if (ev.type.startsWith('call.')) for (const fn of [...callListeners]) fn(ev);
      break;
  }
}

// --- calls -------------------------------------------------------------------------------------------
// calls.js owns the media; the store holds what the call views show.

const callListeners = new Set();

/** Hands `fn` every `call.*` event, and `{ type: "reconnected" }` after every (re)connect. */
export function onCalls(fn) {
  callListeners.add(fn);
  return () => callListeners.delete(fn);
}

/** Sets `call` and/or `incoming` (calls.js only). */
export const setCallState = (patch) => set(patch);

/**
 * A call with `peer` ended: the node writes its summary ("call, 3 min") into the conversation
 * (our own side of it arrives as no message event), so the conversation and the chat list are
 * read again shortly after.
 */
export function afterCall(peer) {
  for (const delay of [700, 3000]) {
    setTimeout(() => {
      if (state.threads[`chat:${peer}`]) loadLatest('chat', peer).catch(() => {});
      refreshListsSoon(0);
    }, delay);
  }
}

/** The call `kith call` asked for, once (the app places it after signing in). */
export function takeLaunch() {
  const l = state.launch;
  if (l) set({ launch: null });
  return l;
}

// --- loading -------------------------------------------------------------------------------------

let listsTimer = 0;

/** Re-reads the chat list soon (coalesces bursts of events into one request each). */
export function refreshListsSoon(delay = 300) {
  clearTimeout(listsTimer);
  listsTimer = setTimeout(() => refreshLists().catch(() => {}), delay);
}

export async function refreshLists() {
  const [inbox, groups, invitations, contacts] = await Promise.all([
    api.inbox(),
    api.groups(),
    api.groupInvitations().catch(() => []),
    api.contacts(),
  ]);
  set({ inbox, groups, invitations, contacts, listsLoaded: true });
}

async function refreshGroup(id) {
  try {
    const g = await api.group(id);
    upsertGroup(g);
  } catch {
    // The group view shows what it can.
  }
}

function upsertGroup(g) {
  set((s) => {
    const has = s.groups.some((x) => x.group_id === g.group_id);
    const groups = has ? s.groups.map((x) => (x.group_id === g.group_id ? { ...x, ...g } : x)) : [...s.groups, g];
    const invitations = s.invitations.filter((x) => x.group_id !== g.group_id || g.state === 'invited');
    return { groups, invitations };
  });
}

let refreshing = null;
let refreshAgain = false;

/** Re-reads everything on screen: after every (re)connect of the event socket and on "lagged". */
export function refreshAll() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      const [status, names] = await Promise.all([api.status(), api.names()]);
      set({ status, me: status.peer_id, names });
      await refreshLists();
      const o = state.open;
      if (o) {
        await loadLatest(o.kind, o.id).catch(() => {});
        if (isVisible(o.kind, o.id)) markRead(o.kind, o.id);
      }
    } catch {
      // The socket loop retries; a 401 already switched to the signed-out view.
    }
  })().finally(() => {
    refreshing = null;
    if (refreshAgain) {
      refreshAgain = false;
      refreshAll();
    }
  });
  return refreshing;
}

let socket = null;

function startEvents() {
  if (socket) return;
  socket = api.connectEvents({
    onEvent,
    onState: (s) => {
      set({ socket: s });
      if (s === 'open') {
        refreshAll();
        for (const fn of [...callListeners]) fn({ type: 'reconnected' });
      }
    },
  });
}

function signedOut(message = '') {
  if (socket) socket.close();
  socket = null;
  set({ auth: 'signed-out', authError: message, threads: {}, files: {}, open: null, dialog: null });
}

api.on('signed-out', () => signedOut());

/** Starts the app: exchanges a `#token=` for the session, then loads and follows events. */
export async function boot() {
  try {
    const asked = await api.exchangeToken();
    if (asked && asked.call) set({ launch: { call: asked.call, video: asked.video } });
  } catch (e) {
    signedOut(
      e.status === 401
        ? 'That sign-in link was not accepted (it is used up or belongs to another node).'
        : e.message,
    );
    return;
  }
  await start();
}

async function start() {
  try {
    const [status, names] = await Promise.all([api.status(), api.names()]);
    set({ auth: 'ok', authError: '', status, me: status.peer_id, names });
  } catch (e) {
    if (e.status === 401) return; // signed out already
    // The node is not answering (restarting?): show the app and let the socket loop retry.
    set({ auth: 'ok' });
  }
  startEvents();
  refreshLists().catch(() => {});
}

/** The "Try again" of the signed-out view: maybe `kith open` ran in another tab meanwhile. */
export async function retrySignIn() {
  try {
    await api.status();
  } catch (e) {
    set({ authError: e.status === 401 ? 'Still not signed in.' : e.message });
    return false;
  }
  await start();
  return true;
}

export async function signOut() {
  try {
    await api.signOut();
  } finally {
    signedOut('You signed out.');
  }
}

// --- first run, names, invite -----------------------------------------------------------------------

export const powParams = () => api.powParams();

export async function registerName(name) {
  const r = await api.registerName(name);
  set((s) => ({ names: [...(s.names || []).filter((n) => n.name !== r.name), r], invite: null }));
  loadInvite();
  return r;
}

export function skipFirstRun() {
  try {
    localStorage.setItem(SKIP_KEY, '1');
  } catch {
    // Private mode: remembered for this page only.
  }
  set({ skipped: true });
}

export async function loadInvite() {
  try {
    set({ invite: await api.invite() });
  } catch (e) {
    setNotice(e.message);
  }
}

export const inviteQrUrl = api.inviteQrUrl;

/** The node panel's data: status, connected peers, our names. */
export async function loadNode() {
  const [status, peers, names, doctor] = await Promise.all([
    api.status(),
    api.peers(),
    api.names(),
    api.doctor(),
  ]);
  set({ status, peers, names, doctor, me: status.peer_id });
}

// --- contacts and trust ----------------------------------------------------------------------------

/**
 * Starts a chat from what a person typed: a `kith://invite/...` link (added as a contact), or a
 * name, petname or peer id (checked by asking for the conversation). Optionally saves a petname.
 * Returns the peer id.
 */
export async function startChat(target, petname) {
  target = target.trim();
  petname = (petname || '').trim();
  let peer;
  if (/^kith:\/\/invite\//i.test(target)) {
    const contact = await api.addInvite(target, petname || undefined);
    peer = contact.peer_id;
  } else {
    const res = await api.history(target, { limit: 1 });
    peer = res.peer_id;
    if (petname && petnameOf(state, peer) !== petname) {
      await api.addContact(petname, peer);
    } else if (!petname && target !== peer && !petnameOf(state, peer)) {
      // Started by name: remember it as the petname, so the chat shows "alice", not a key.
      await api.addContact(target, peer).catch(() => {});
    }
  }
  set({ contacts: await api.contacts() });
  return peer;
}

/** Gives a peer a (new) petname; the old petnames of that peer are removed after. */
export async function setPetname(peer, petname) {
  petname = petname.trim();
  const old = state.contacts.filter((k) => k.peer_id === peer);
  const added = await api.addContact(petname, peer);
  for (const k of old) if (k.petname !== added.petname) await api.removeContact(k.petname).catch(() => {});
  set({ contacts: await api.contacts() });
  refreshListsSoon(0);
  return added;
}

export const verify = (peer) => api.verify(peer);

export async function accept(peer) {
  const r = await api.accept(peer);
  set((s) => ({ inbox: s.inbox.map((c) => (c.peer_id === r.peer_id ? { ...c, trust: r.trust } : c)) }));
  if (isVisible('chat', r.peer_id)) markRead('chat', r.peer_id);
  refreshListsSoon(0);
  return r;
}

export async function block(peer) {
  const r = await api.block(peer);
  set((s) => ({ inbox: s.inbox.map((c) => (c.peer_id === r.peer_id ? { ...c, trust: r.trust } : c)) }));
  refreshListsSoon(0);
  return r;
}

// --- groups ----------------------------------------------------------------------------------------

export async function createGroup(title) {
  const g = await api.createGroup(title.trim());
  upsertGroup(g);
  return g;
}

export async function joinGroup(id) {
  const g = await api.joinGroup(id);
  upsertGroup(g);
  refreshListsSoon(0);
  return g;
}

export async function leaveGroup(id) {
  const g = await api.leaveGroup(id);
  upsertGroup(g);
  return g;
}

export async function inviteMember(id, member) {
  const g = await api.inviteMember(id, member.trim());
  upsertGroup(g);
  return g;
}

export async function removeMember(id, member) {
  const g = await api.removeMember(id, member);
  upsertGroup(g);
  return g;
}

// --- dialogs and notices -------------------------------------------------------------------------------

export const openDialog = (name, props = {}) => set({ dialog: { name, ...props } });
export const closeDialog = () => set({ dialog: null });

let noticeTimer = 0;

/** A short message in the status area, cleared after a while. */
export function setNotice(notice) {
  clearTimeout(noticeTimer);
  set({ notice });
  if (notice) noticeTimer = setTimeout(() => set({ notice: '' }), 8000);
}
