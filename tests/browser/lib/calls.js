// Helpers for the call tests: the node's API as the test's own client, friends made through it,
// and what a page's WebRTC is doing (through `window.__kithCalls`, the app's read-only view of
// its peer connections: media flows cannot be seen in the DOM). Every wait is bounded.

import assert from 'node:assert/strict';
import { poll, rawRequest } from './harness.js';
import { UI_TIMEOUT_MS } from './app.js';

/** How long two pages may take from "Accept" to both peer connections `connected`. */
export const CONNECT_TIMEOUT_MS = 20_000;
/** How long media may take to flow once connected (the issue's 10 s). */
export const MEDIA_TIMEOUT_MS = 10_000;

/** `METHOD path` on `node`'s API with its token; the parsed answer, which must be `status` (any 2xx when not given). */
export async function api(node, method, path, body, status) {
  const res = await rawRequest(node, {
    method,
    path,
    headers: { Authorization: `Bearer ${node.token}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const ok = status === undefined ? res.status >= 200 && res.status < 300 : res.status === status;
  assert.ok(ok, `${node.name}: ${method} ${path} answered ${res.status}: ${res.text}`);
  return res.json;
}

/** `api` without the status check: {status, json, text}. */
export function apiRaw(node, method, path, body) {
  return rawRequest(node, {
    method,
    path,
    headers: { Authorization: `Bearer ${node.token}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

/**
 * Makes `a` and `b` friends: each has the other as a contact under a petname, `a` wrote to `b`
 * and `b` accepted (a call from someone not accepted never rings), and `b` wrote back.
 */
export async function befriend([a, aName], [b, bName], timeout = 60_000) {
  await api(a, 'POST', '/v1/contacts', { petname: bName, target: b.peerId });
  await api(b, 'POST', '/v1/contacts', { petname: aName, target: a.peerId });
  await api(a, 'POST', '/v1/messages', { to: b.peerId, text: `hi ${bName}, ${aName} here` });
  await poll(`${bName} to receive ${aName}'s first message`, timeout, async () => {
    const h = await api(b, 'GET', `/v1/messages/${a.peerId}`);
    return (h.messages || []).length > 0;
  }, 300);
  await api(b, 'POST', `/v1/accept/${a.peerId}`);
  await api(b, 'POST', '/v1/messages', { to: a.peerId, text: `hi ${aName}, ${bName} here` });
}

/** The newest entries of `GET /v1/calls`. */
export async function calls(node) {
  const res = await api(node, 'GET', '/v1/calls');
  assert.ok(Array.isArray(res.calls), `${node.name}: GET /v1/calls has "calls": ${JSON.stringify(res)}`);
  return res.calls;
}

/** Polls until `node` has call `id` ended; returns its report. */
export function ended(node, id, timeout) {
  return poll(`${node.name} to record call ${id} as ended`, timeout, async () => {
    const c = (await calls(node)).find((x) => x.call_id === id);
    return c && c.state === 'ended' ? c : null;
  }, 250);
}

/**
 * What the page's peer connections are doing, one entry per remote peer: connection state,
 * inbound audio packets, inbound video frames decoded, and the candidate types of the selected
 * pair.
 */
export function rtc(page) {
  return page.evaluate(async () => {
    const out = [];
    const pcs = window.__kithCalls;
    if (!pcs) return null;
    for (const [peer, pc] of pcs) {
      const e = { peer, state: pc.connectionState, audioPackets: 0, videoFrames: 0, local: '', remote: '' };
      const stats = await pc.getStats();
      let pair = null;
      stats.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'audio') e.audioPackets += r.packetsReceived || 0;
        if (r.type === 'inbound-rtp' && r.kind === 'video') e.videoFrames += r.framesDecoded || 0;
        if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
      });
      if (pair) {
        e.local = (stats.get(pair.localCandidateId) || {}).candidateType || '';
        e.remote = (stats.get(pair.remoteCandidateId) || {}).candidateType || '';
      }
      out.push(e);
    }
    return out;
  });
}

/** Waits until the page has exactly `peers` (peer ids) as connections, all `connected`. */
export async function waitConnected(page, who, peers, timeout = CONNECT_TIMEOUT_MS) {
  let last;
  try {
    return await poll(`${who}'s peer connections to ${peers.length} peer(s) to be connected`, timeout, async () => {
      last = await rtc(page);
      if (!last || last.length !== peers.length) return null;
      return peers.every((p) => last.some((e) => e.peer === p && e.state === 'connected')) ? last : null;
    }, 250);
  } catch (e) {
    throw new Error(`${e.message}; ${who} has ${JSON.stringify(last)}`);
  }
}

/** Waits until media flows on every connection of the page: audio packets (and video frames). */
export async function waitMedia(page, who, { audio = 50, video = 0 } = {}, timeout = MEDIA_TIMEOUT_MS) {
  let last;
  try {
    return await poll(`${who} to receive audio packets > ${audio}${video ? ` and video frames decoded > ${video}` : ''} on every connection`, timeout, async () => {
      last = await rtc(page);
      if (!last || !last.length) return null;
      return last.every((e) => e.audioPackets > audio && (!video || e.videoFrames > video)) ? last : null;
    }, 250);
  } catch (e) {
    throw new Error(`${e.message}; ${who} has ${JSON.stringify(last)}`);
  }
}

/** Waits until the page holds no peer connection any more. */
export async function waitNoConnections(page, who, timeout) {
  await poll(`${who} to close every peer connection`, timeout, async () => {
    const r = await rtc(page);
    return r && r.length === 0;
  }, 100);
}

/** The call view (region "Call with …"). */
export const callView = (page) => page.getByRole('region', { name: /^Call with / });
/** The incoming-call dialog ("Incoming call from …"). */
export const incoming = (page) => page.getByRole('dialog', { name: /^Incoming call from / });

/** The call view's status line ("Calling…", "Ringing…", "Connected", "Declined", …). */
export async function callStatus(page) {
  const status = callView(page).getByRole('status');
  if (!(await status.count())) return null;
  return (await status.first().innerText({ timeout: 1000 })).trim();
}

/** Waits until the call view's status matches `want` (RegExp); returns it. */
export async function waitStatus(page, who, want, timeout = UI_TIMEOUT_MS) {
  let last = null;
  try {
    return await poll(`${who}'s call view to say ${want}`, timeout, async () => {
      last = await callStatus(page).catch(() => null);
      return last && want.test(last) ? last : null;
    }, 100);
  } catch (e) {
    throw new Error(`${e.message}; it says ${JSON.stringify(last)}`);
  }
}

/**
 * An init script for the page: counts the event socket's messages by type
 * (`window.__kithEventCounts`) and remembers every AudioContext that made an oscillator and
 * whether it was suspended or closed since, so a test can tell whether the ring tone is playing
 * (`window.__kithRinging()`). Instruments the page
 * only; the app is unchanged.
 */
export function instrument() {
  const counts = {};
  window.__kithEventCounts = counts;
  const Socket = window.WebSocket;
  window.WebSocket = class extends Socket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => {
        try {
          const t = JSON.parse(e.data).type;
          counts[t] = (counts[t] || 0) + 1;
        } catch {
          // not JSON: not ours to count
        }
      });
    }
  };
  // A context rings from its first oscillator until it is suspended or closed (the app keeps
  // one context for the ring and suspends it between rings).
  const tones = new Map();
  const Ctx = window.AudioContext;
  if (Ctx) {
    const make = Ctx.prototype.createOscillator;
    Ctx.prototype.createOscillator = function createOscillator(...args) {
      tones.set(this, true);
      return make.apply(this, args);
    };
    for (const quiet of ['suspend', 'close']) {
      const orig = Ctx.prototype[quiet];
      Ctx.prototype[quiet] = function silence(...args) {
        if (tones.has(this)) tones.set(this, false);
        return orig.apply(this, args);
      };
    }
  }
  window.__kithRinging = () => [...tones].some(([c, on]) => on && c.state !== 'closed');
  window.__kithRingContexts = () => tones.size;
}

export const ringing = (page) => page.evaluate(() => window.__kithRinging());
/** How many AudioContexts have played a tone on the page (one: the app reuses its ring's). */
export const ringContexts = (page) => page.evaluate(() => window.__kithRingContexts());
export const eventCount = (page, type) => page.evaluate((t) => window.__kithEventCounts[t] || 0, type);
