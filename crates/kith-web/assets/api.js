// The API client: the only module that calls fetch or opens a WebSocket.
// Every function returns the parsed JSON body (or null for 204) and throws ApiError otherwise.

/** An error answer from the node ({"error","kind"}), or a network failure (status 0, kind "network"). */
export class ApiError extends Error {
  constructor(status, kind, message, body) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.kind = kind;
    this.body = body || null;
  }
}

const listeners = new Map();

/** Subscribes to client-level happenings: "signed-out" (any /v1 answered 401). */
export function on(event, fn) {
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(fn);
  return () => listeners.get(event).delete(fn);
}

function emit(event, detail) {
  for (const fn of listeners.get(event) || []) fn(detail);
}

async function request(method, path, body, raw) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (raw !== undefined) {
    // A file as it is (streamed by the browser): the node reads the request body as the bytes.
    init.headers['Content-Type'] = 'application/octet-stream';
    init.body = raw;
  } else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach your kith node. Is it running?');
  }
  const text = await res.text().catch(() => '');
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const message = (data && data.error) || `The node answered ${res.status} ${res.statusText}`.trim();
    const err = new ApiError(res.status, (data && data.kind) || 'http', message, data);
    if (res.status === 401 && path !== '/v1/session') emit('signed-out', err);
    throw err;
  }
  return data;
}

const seg = encodeURIComponent;

function page(path, { limit, before } = {}) {
  const q = new URLSearchParams();
  if (limit) q.set('limit', String(limit));
  if (before) q.set('before', before);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// --- session ---------------------------------------------------------------------------------

/**
 * If the page was opened by `kith open` (`#token=<hex>`) or `kith call` (`#token=<hex>&call=<who>
 * [&video=1]`), strips the fragment from the URL at once and exchanges the token for the session
 * cookie. Returns false when there was no token, else what the fragment asked for besides it:
 * `{ call: <who> | null, video }`. Throws ApiError (401) for a wrong token.
 */
export async function exchangeToken() {
  const hash = location.hash;
  if (!hash.startsWith('#token=')) return false;
  const params = new URLSearchParams(hash.slice(1));
  const token = params.get('token') || '';
  window.history.replaceState(null, '', location.pathname + location.search);
  await request('POST', '/v1/session', { token });
  return { call: params.get('call') || null, video: params.get('video') === '1' };
}

export const signOut = () => request('DELETE', '/v1/session');

// --- node ------------------------------------------------------------------------------------

export const status = () => request('GET', '/v1/status');
export const peers = () => request('GET', '/v1/peers');
export const relay = () => request('GET', '/v1/relay');
export const doctor = () => request('GET', '/v1/doctor');

// --- names and contacts ----------------------------------------------------------------------

export const powParams = () => request('GET', '/v1/names/pow');
export const names = () => request('GET', '/v1/names');
export const registerName = (name) => request('POST', '/v1/names', { name });
export const releaseName = (name) => request('DELETE', `/v1/names/${seg(name)}`);
export const resolve = (name) => request('GET', `/v1/resolve/${seg(name)}`);
export const contacts = () => request('GET', '/v1/contacts');
export const addContact = (petname, target) => request('POST', '/v1/contacts', { petname, target });
export const addInvite = (invite, petname) =>
  request('POST', '/v1/contacts/invite', petname ? { invite, petname } : { invite });
export const removeContact = (petname) => request('DELETE', `/v1/contacts/${seg(petname)}`);
export const verify = (target) => request('GET', `/v1/verify/${seg(target)}`);
export const invite = () => request('GET', '/v1/invite');
/** The address of the invite QR code (an SVG image). */
export const inviteQrUrl = '/v1/invite/qr';

// --- direct messages -------------------------------------------------------------------------

export const send = (to, text) => request('POST', '/v1/messages', { to, text });
export const history = (target, opts) => request('GET', page(`/v1/messages/${seg(target)}`, opts));
export const markRead = (target) => request('POST', `/v1/messages/${seg(target)}/read`);
export const inbox = () => request('GET', '/v1/inbox');
export const requests = () => request('GET', '/v1/requests');
export const accept = (target) => request('POST', `/v1/accept/${seg(target)}`);
export const block = (target) => request('POST', `/v1/block/${seg(target)}`);

// --- groups ----------------------------------------------------------------------------------

export const groups = () => request('GET', '/v1/groups');
export const groupInvitations = () => request('GET', '/v1/groups/invitations');
export const createGroup = (title) => request('POST', '/v1/groups', { title });
export const group = (id) => request('GET', `/v1/groups/${seg(id)}`);
export const joinGroup = (id) => request('POST', `/v1/groups/${seg(id)}/join`);
export const leaveGroup = (id) => request('POST', `/v1/groups/${seg(id)}/leave`);
export const inviteMember = (id, member) => request('POST', `/v1/groups/${seg(id)}/invite`, { member });
export const removeMember = (id, member) => request('POST', `/v1/groups/${seg(id)}/remove`, { member });
export const groupHistory = (id, opts) => request('GET', page(`/v1/groups/${seg(id)}/messages`, opts));
export const sendGroup = (id, text) => request('POST', `/v1/groups/${seg(id)}/messages`, { text });
export const markGroupRead = (id) => request('POST', `/v1/groups/${seg(id)}/read`);

// --- files ---------------------------------------------------------------------------------------

/**
 * Sends a file (a File or Blob, sent as the raw request body) to a peer. `opts`: name, caption,
 * filter (a preset name, photos only), original (send the photo as it is, not re-encoded).
 */
export function uploadFile(to, blob, { name, caption, filter, original } = {}) {
  const q = new URLSearchParams({ to, name: name || blob.name || 'file' });
  if (caption) q.set('caption', caption);
  if (filter) q.set('filter', filter);
  if (original) q.set('original', 'true');
  return request('POST', `/v1/files/upload?${q}`, undefined, blob);
}
export const files = (target) => request('GET', `/v1/files?${new URLSearchParams({ with: target })}`);
export const file = (id) => request('GET', `/v1/files/${seg(id)}`);
/** Stops a file's transfer for good (download or upload); answers with the file, `cancelled`. */
export const cancelFile = (id) => request('DELETE', `/v1/files/${seg(id)}`);
export const filters = () => request('GET', '/v1/filters');
/** The addresses of a file's thumbnail (photos) and content (same origin: the cookie is enough). */
export const thumbnailUrl = (id) => `/v1/files/${seg(id)}/thumbnail`;
export const contentUrl = (id) => `/v1/files/${seg(id)}/content`;

// --- calls ---------------------------------------------------------------------------------------
// Media runs in the browser (WebRTC); the node rings, records and carries the signalling.

/**
 * `target` is `{ to }` (a name, petname or peer id) or `{ group }`; answers the CallReport.
 * `offers`: calls.js sends each invitee its SDP offer at once, so their pages answer it on joining.
 */
export const startCall = (target, video) => request('POST', '/v1/calls', { ...target, video: !!video, offers: true });
export const calls = () => request('GET', '/v1/calls');
/** The CallReport plus `signals`: everything the others sent us for this call so far. */
export const call = (id) => request('GET', `/v1/calls/${seg(id)}`);
export const acceptCall = (id) => request('POST', `/v1/calls/${seg(id)}/accept`);
export const declineCall = (id) => request('POST', `/v1/calls/${seg(id)}/decline`);
export const hangUp = (id) => request('POST', `/v1/calls/${seg(id)}/hangup`);
/** An SDP description or an ICE candidate (null: end of candidates) for one participant. */
export const signal = (id, to, kind, data) => request('POST', `/v1/calls/${seg(id)}/signal`, { to, kind, data });
/** `{ ice_servers, relay_only }`: the RTCConfiguration's STUN/TURN servers. */
export const iceConfig = () => request('GET', '/v1/calls/ice');

// --- events ----------------------------------------------------------------------------------

const MIN_DELAY = 500;
const MAX_DELAY = 5000;

/**
 * Keeps the event WebSocket open: reconnects forever with a backoff from 0.5 s doubling to 5 s.
 * Before each attempt it asks GET /v1/status, so a node that is down costs one cheap request and
 * a lost session shows up as "signed-out" (a WebSocket cannot report a 401).
 * `onState` gets "connecting" (first attempt), "open" or "down"; `onEvent` gets each parsed event.
 */
export function connectEvents({ onEvent, onState }) {
  let ws = null;
  let timer = 0;
  let delay = MIN_DELAY;
  let stopped = false;
  let everOpen = false;

  const schedule = () => {
    clearTimeout(timer);
    if (stopped) return;
    timer = setTimeout(attempt, delay);
    delay = Math.min(delay * 2, MAX_DELAY);
  };

  async function attempt() {
    if (stopped || ws) return;
    try {
      await status();
    } catch (e) {
      if (e.status === 401) {
        stopped = true;
        return;
      }
      onState('down');
      schedule();
      return;
    }
    if (stopped || ws) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const sock = new WebSocket(`${scheme}//${location.host}/v1/events`);
    ws = sock;
    sock.onopen = () => {
      delay = MIN_DELAY;
      everOpen = true;
      onState('open');
    };
    sock.onmessage = (e) => {
      let ev;
      try {
        ev = JSON.parse(e.data);
      } catch {
        return;
      }
      if (ev && typeof ev.type === 'string') onEvent(ev);
    };
    sock.onclose = () => {
      if (ws === sock) ws = null;
      if (stopped) return;
      onState('down');
      schedule();
    };
  }

  const retryNow = () => {
    if (stopped || ws) return;
    clearTimeout(timer);
    delay = MIN_DELAY;
    attempt();
  };
  window.addEventListener('online', retryNow);

  onState('connecting');
  attempt();
  return {
    retryNow,
    get everOpen() {
      return everOpen;
    },
    close() {
      stopped = true;
      clearTimeout(timer);
      window.removeEventListener('online', retryNow);
      if (ws) ws.close();
      ws = null;
    },
  };
}
