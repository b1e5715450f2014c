// Voice and video calls: the browser's half. The node rings, records the call and carries the
// signalling (offers, answers, ICE candidates) end-to-end encrypted, all through api.js; media
// runs here in WebRTC, one RTCPeerConnection per other participant (a full mesh, up to 4 people).
// What views show lives in the store (state.call, state.incoming); this module owns what is
// behind it: the peer connections, the local stream, the ring tone and the stats timer.
//
// Who offers: the caller, to every invitee, as soon as its call has an id (the invitation says
// an offer follows, `caller_offers`); the node keeps the offer while the call rings, and an
// invitee's page answers it on joining, so joining is one signal hop. Neither waits for the
// microphone and camera: their places in the offer and the answer are filled when they open. A
// participant who joins also offers to everyone else already joined. Offers that cross anyway
// (two members of a group joining at the same moment) are settled as in WebRTC's "perfect
// negotiation": the peer with the larger id yields to the other's offer; the caller's offer
// made while ringing always yields (an older node's callee offers on joining).

import * as api from './api.js';
import { shortId } from './format.js';
import { afterCall, displayName, getState, groupOf, onCalls, openDialog, petnameOf, setCallState, setNotice } from './state.js';

const MIC_KEY = 'kith.microphone';
const CAMERA_KEY = 'kith.camera';
const CHECKED_KEY = 'kith.deviceCheckDone';
/** How long the end of a call ("Declined", "No answer") stays on screen. */
const END_SHOWN_MS = 4000;
const STATS_EVERY_MS = 2000;
/** A group member who joined but sent no offer by then is offered to (see `joined`). */
const GROUP_OFFER_FALLBACK_MS = 4000;
/**
 * The longest an answer waits for our first ICE candidate, so that it carries it instead of a
 * signal of its own following one hop later: the caller's page connects once it has one of our
 * candidates (a host candidate takes milliseconds; later ones, such as TCP's or TURN's, follow
 * on their own). An offer does not wait: the callee applies it while our candidates travel
 * behind it, and the caller's gathering starts while its page is busiest (media opening).
 */
const FIRST_CANDIDATE_MS = 50;
/** The most participants of a call, us included (a full mesh). */
export const MAX_CALL_SIZE = 4;

// --- preferences -----------------------------------------------------------------------------------

function load(key) {
  try {
    return localStorage.getItem(key) || '';
  } catch {
    return '';
  }
}

function save(key, value) {
  try {
    if (value) localStorage.setItem(key, value);
    else localStorage.removeItem(key);
  } catch {
    // Private mode: kept for this page only.
  }
}

/** The chosen microphone and camera (device ids; '' for the system's default). */
export const devicePrefs = () => ({ mic: load(MIC_KEY), camera: load(CAMERA_KEY) });
export function setDevicePrefs({ mic, camera }) {
  if (mic !== undefined) save(MIC_KEY, mic);
  if (camera !== undefined) save(CAMERA_KEY, camera);
}
/** Whether the device check was done once (it is offered before the first call). */
export const deviceCheckDone = () => load(CHECKED_KEY) === '1';
export const markDeviceCheckDone = () => save(CHECKED_KEY, '1');

/** getUserMedia constraints for the chosen devices (`exact`: see `openMedia` for a device gone). */
export function constraints({ audio = true, video = false, mic = devicePrefs().mic, camera = devicePrefs().camera } = {}) {
  return {
    audio: audio ? (mic ? { deviceId: { exact: mic } } : true) : false,
    video: video ? (camera ? { deviceId: { exact: camera } } : true) : false,
  };
}

/** getUserMedia with the chosen devices; when one of them is gone, with the defaults. */
export async function openMedia(opts = {}) {
  try {
    return await navigator.mediaDevices.getUserMedia(constraints(opts));
  } catch (e) {
    if (e.name !== 'OverconstrainedError' && e.name !== 'NotFoundError') throw e;
    return navigator.mediaDevices.getUserMedia(constraints({ ...opts, mic: '', camera: '' }));
  }
}

/** The microphones and cameras: [{ deviceId, label, kind }] (labels once access was granted). */
export async function listDevices() {
  const all = await navigator.mediaDevices.enumerateDevices();
  return {
    mics: all.filter((d) => d.kind === 'audioinput'),
    cameras: all.filter((d) => d.kind === 'videoinput'),
  };
}

/**
 * Calls `onLevel(0..100)` about ten times a second with the loudness of `stream`'s audio (an
 * AnalyserNode over the time-domain samples). Returns the function that stops it.
 */
export function watchLevel(stream, onLevel) {
  if (!stream || !stream.getAudioTracks().length || typeof AudioContext === 'undefined') return () => {};
  const ctx = new AudioContext();
  ctx.resume().catch(() => {});
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const samples = new Uint8Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getByteTimeDomainData(samples);
    let sum = 0;
    for (const v of samples) sum += ((v - 128) / 128) ** 2;
    // RMS on a rough log scale: speech at a normal distance reads about half-way.
    const rms = Math.sqrt(sum / samples.length);
    onLevel(Math.max(0, Math.min(100, Math.round(rms > 0 ? (Math.log10(rms) + 2.5) * 40 : 0))));
  }, 100);
  return () => {
    clearInterval(timer);
    ctx.close().catch(() => {});
  };
}

export const stopStream = (stream) => stream && stream.getTracks().forEach((t) => t.stop());

// --- the call engine -----------------------------------------------------------------------------

/** peer id → { peer, pc, polite, invited, attached, makingOffer, ignoreOffer, pendingIce, queue, sdpSent, stream, last, quality } */
const peers = new Map();
/** The call we are in (or placing, or that just ended), or null. `id` is null until POST answers. */
let current = null;
let endTimer = 0;
let statsTimer = 0;
/**
 * The call ringing for us: `{ id, signals, config }`, the caller's offer and candidates as they
 * come and the RTCConfiguration asked for at the first ring, kept for Accept.
 */
let held = null;

// For tests only: the live peer connections by remote peer id, as a fresh Map on every read, so a
// test can call getStats() and read connectionState (media flows cannot be seen from the DOM) and
// cannot change which connections the app holds.
Object.defineProperty(window, '__kithCalls', { get: () => new Map([...peers].map(([id, p]) => [id, p.pc])) });

const active = () => !!current && current.phase !== 'ended';

/** The words for whom a call is with: the group's title, our petname, their name, their id. */
function titleOf(report) {
  const s = getState();
  if (report.group) {
    const g = groupOf(s, report.group);
    return g ? g.title : 'group';
  }
  return petnameOf(s, report.peer) || report.name || displayName(s, report.peer);
}

/** What the call view shows, derived from the engine's view of the call. */
function publish() {
  if (!current) {
    setCallState({ call: null });
    return;
  }
  const c = current;
  const remotes = {};
  // Our offers to invitees exist from the start; their tiles appear once they join.
  const waiting = new Set(((c.report && c.report.participants) || []).filter((x) => x.state === 'ringing').map((x) => x.peer));
  for (const [id, p] of peers) {
    if (waiting.has(id)) continue;
    remotes[id] = { stream: p.stream || null, state: p.pc.connectionState, quality: p.quality || null };
  }
  let phase = c.phase;
  if (phase !== 'ended' && c.report) {
    if (c.report.state === 'ringing') phase = c.ringing ? 'ringing' : 'calling';
    else if (c.report.state === 'active') phase = Object.values(remotes).some((r) => r.state === 'connected') ? 'connected' : 'connecting';
  }
  c.phase = phase;
  setCallState({
    call: {
      id: c.id,
      title: c.title,
      group: c.report ? c.report.group : c.target.group || null,
      seed: c.report ? c.report.group || c.report.peer : c.target.group || c.target.to,
      direction: c.direction,
      video: c.video,
      phase,
      outcome: c.outcome || null,
      answeredAt: (c.report && c.report.answered_at_ms) || null,
      participants: (c.report && c.report.participants) || [],
      muted: c.muted,
      cameraOff: c.cameraOff,
      local: c.local,
      remotes,
      quality: worstQuality(remotes),
      error: c.error || '',
    },
  });
}

function begin(fields) {
  clearTimeout(endTimer);
  closeAll();
  let markConfigured;
  let markNamed;
  // Resolved once the ICE servers are known: no connection is made before (see signalIn); and
  // once the call has its id: no signal is sent before (see send).
  const configured = new Promise((resolve) => {
    markConfigured = resolve;
  });
  const named = new Promise((resolve) => {
    markNamed = resolve;
  });
  current = {
    id: null,
    report: null,
    ringing: false,
    muted: false,
    cameraOff: false,
    local: null,
    mediaReady: false,
    seen: new Set(),
    early: [],
    configured,
    markConfigured,
    named,
    markNamed,
    joined: null,
    ...fields,
  };
  if (current.id) markNamed();
  publish();
}

/** The call is over for us: close everything, show the reason for a few seconds. */
function finish(report, error = '') {
  if (!current || current.phase === 'ended') return;
  const c = current;
  if (report) c.report = report;
  c.outcome = c.hungUp ? 'completed' : (report && report.outcome) || c.outcome || (error ? 'failed' : 'completed');
  c.error = error;
  c.phase = 'ended';
  closeAll();
  publish();
  // The next call's ICE servers are asked for now if the ones held are getting old.
  configuration();
  if (c.report && c.report.peer && !c.report.group) afterCall(c.report.peer);
  clearTimeout(endTimer);
  endTimer = setTimeout(() => {
    if (current === c) {
      current = null;
      publish();
    }
  }, END_SHOWN_MS);
}

function closeAll() {
  clearInterval(statsTimer);
  statsTimer = 0;
  for (const p of peers.values()) p.pc.close();
  peers.clear();
  if (current) {
    stopStream(current.local);
    current.local = null;
  }
}

/** Closes the "ended" screen now. */
export function dismissCall() {
  if (current && current.phase === 'ended') {
    clearTimeout(endTimer);
    current = null;
    publish();
  }
}

/**
 * How long an answer of `GET /v1/calls/ice` is used. TURN credentials are short-lived, but the
 * node renews them an hour (or half their life) before they expire, so a minute-old answer is
 * still good; asking on every click put one request before every call's offer.
 */
const ICE_FRESH_MS = 60_000;
/** After this age the answer is still used, and a fresh one is asked for beside it. */
const ICE_RENEW_MS = 30_000;
/**
 * `{ at, config, value }`: the last RTCConfiguration asked for (a promise), when, and
 * once it answered, the answer itself (so that "Call" can make its offer before anything else).
 * The node says when its answer changes (`call.ice_changed`), so an answer is kept until then
 * or until it is a minute old, whatever it names.
 */
let iceCache = null;

/** The RTCConfiguration from the node: its STUN/TURN servers, relay-only when it says so. */
async function askConfiguration() {
  const ice = await api.iceConfig();
  return { iceServers: ice.ice_servers || [], iceTransportPolicy: ice.relay_only ? 'relay' : 'all' };
}

function renewConfiguration() {
  const entry = { at: Date.now(), config: null, value: null };
  entry.config = askConfiguration().then((config) => {
    entry.value = config;
    return config;
  }, () => {
    // No TURN known, an older node, or the node is away: direct connections only, and the
    // next call asks again.
    if (iceCache === entry) iceCache = null;
    return { iceServers: [] };
  });
  iceCache = entry;
  return entry.config;
}

/**
 * The RTCConfiguration for a call (a promise): the one asked for in the last minute (see
 * `ICE_FRESH_MS`), or a fresh one. Asked for ahead of need when the event socket connects,
 * whenever the node says its answer changed, and after each call.
 */
function configuration() {
  const age = iceCache ? Date.now() - iceCache.at : Infinity;
  if (age > ICE_FRESH_MS) return renewConfiguration();
  const { config } = iceCache;
  if (age > ICE_RENEW_MS) renewConfiguration();
  return config;
}

/** The RTCConfiguration for a call if one is known now (see `configuration`), else null. */
function configurationNow() {
  const value = iceCache && Date.now() - iceCache.at <= ICE_FRESH_MS ? iceCache.value : null;
  if (value) configuration();
  return value;
}

/** Our microphone (and camera), falling back to audio only, then to receiving only. */
async function localMedia(video) {
  try {
    return await openMedia({ video });
  } catch (e) {
    if (video) {
      try {
        const audio = await openMedia();
        setNotice(`Your camera is not available (${e.message}); you can still talk.`);
        return audio;
      } catch {
        // fall through
      }
    }
    setNotice(`Your microphone is not available (${e.message}); you will only hear and see the others.`);
    return null;
  }
}

function peerEntry(peer, offerer, invited = false) {
  let p = peers.get(peer);
  if (p) return p;
  const pc = new RTCPeerConnection(current.config || {});
  p = {
    peer,
    pc,
    polite: getState().me > peer,
    invited,
    attached: false,
    bundling: false,
    makingOffer: false,
    ignoreOffer: false,
    pendingIce: [],
    queue: Promise.resolve(),
    sdpSent: Promise.resolve(),
    stream: null,
    last: null,
    quality: null,
  };
  peers.set(peer, p);
  if (current.mediaReady) attach(p);
  const local = current.local;
  if (offerer && current.mediaReady) {
    // Ask to receive what we do not send (no camera, no microphone) so the m-lines exist.
    if (!local || !local.getAudioTracks().length) pc.addTransceiver('audio', { direction: 'recvonly' });
    if (current.video && (!local || !local.getVideoTracks().length)) pc.addTransceiver('video', { direction: 'recvonly' });
  } else if (offerer) {
    // Our microphone (and camera) are still opening: the offer holds their places, and they
    // are put in when they open (see attach), with no new negotiation.
    pc.addTransceiver('audio', { direction: 'sendrecv' });
    if (current.video) pc.addTransceiver('video', { direction: 'sendrecv' });
  }
  pc.onicecandidate = ({ candidate }) => {
    // While an answer waits for its first candidate, they go inside it (see describe).
    if (!p.bundling) sendIce(p, candidate ? candidate.toJSON() : null);
  };
  pc.ontrack = ({ track, streams }) => {
    if (peers.get(peer) !== p) return;
    if (streams[0]) p.stream = streams[0];
    else {
      if (!p.stream) p.stream = new MediaStream();
      p.stream.addTrack(track);
    }
    publish();
  };
  pc.onconnectionstatechange = () => {
    if (peers.get(peer) === p) publish();
  };
  return p;
}

/**
 * Our microphone and camera go on `p`'s connection, once: added as tracks before its first
 * offer or answer, or put in the places an offer or answer made while they opened holds.
 */
function attach(p) {
  if (p.attached) return;
  p.attached = true;
  const local = current.local;
  if (!local) return;
  for (const track of local.getTracks()) {
    const place = p.pc.getTransceivers().find((t) => !t.stopped && !t.sender.track && t.receiver.track.kind === track.kind && t.direction === 'sendrecv');
    if (!place) {
      p.pc.addTrack(track, local);
      continue;
    }
    place.sender.replaceTrack(track).catch((e) => console.warn(`kith: cannot send ${track.kind} to ${shortId(p.peer)}: ${e.message}`));
    if (place.sender.setStreams) place.sender.setStreams(local);
  }
}

/** Our media are open (or known to be missing): connections made before get them. */
function mediaReady(c) {
  c.mediaReady = true;
  for (const p of peers.values()) attach(p);
}

function send(p, kind, data) {
  const c = current;
  // Nothing goes before the call has its id (the caller's offer is made while POST /v1/calls
  // travels), and a joiner's answer goes after its node sent ACCEPT (that POST is on its way).
  return Promise.all([c.named, c.joined])
    .then(() => {
      // A connection closed meanwhile (our call gave way to theirs) sends nothing more.
      if (peers.get(p.peer) === p) return api.signal(c.id, p.peer, kind, data);
      return null;
    })
    .catch((e) => {
      if (current === c && active()) console.warn(`kith: signal to ${shortId(p.peer)} failed: ${e.message}`);
    });
}

function sendIce(p, candidate) {
  // The end of candidates is not sent: the far side does not apply it (see `apply`).
  if (!candidate) return;
  // Candidates go after the description they belong to (in parallel with each other); the far
  // side keeps any that arrive before it.
  p.sdpSent = p.sdpSent.then(() => {
    send(p, 'ice', candidate);
  });
}

/**
 * Sets our offer or answer and sends it: an answer with our first candidate in it (see
 * FIRST_CANDIDATE_MS), an offer at once, its candidates following as they are gathered.
 */
async function describe(p) {
  const answering = p.pc.signalingState === 'have-remote-offer';
  p.bundling = answering;
  try {
    await p.pc.setLocalDescription();
    if (answering) await firstCandidate(p.pc, FIRST_CANDIDATE_MS);
  } finally {
    p.bundling = false;
  }
  sendSdp(p);
}

function sendSdp(p) {
  const desc = p.pc.localDescription.toJSON();
  const sent = send(p, 'sdp', { type: desc.type, sdp: desc.sdp });
  p.sdpSent = sent;
  return sent;
}

/** Resolves once `pc` has its first ICE candidate (or all of them), or after `ms`. */
function firstCandidate(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icecandidate', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    pc.addEventListener('icecandidate', done);
  });
}

/** Makes an offer to `peer` (we joined after them, or `invited`: we call them and they ring). */
function offerTo(peer, invited = false) {
  const p = peerEntry(peer, true, invited);
  p.queue = p.queue
    .then(async () => {
      p.makingOffer = true;
      try {
        await describe(p);
      } finally {
        p.makingOffer = false;
      }
    })
    .catch((e) => console.warn(`kith: offer to ${shortId(peer)} failed: ${e.message}`));
}

/**
 * One signal from a participant: `{ seq, from, kind, data }`, each applied once, in order per
 * peer, once the ICE servers are known (an offer is taken in while our microphone opens).
 */
function signalIn(sig) {
  if (!active() || !current.id) return;
  if (current.seen.has(sig.seq)) return;
  current.seen.add(sig.seq);
  const c = current;
  c.configured.then(() => {
    if (current !== c || !active()) return;
    const p = peerEntry(sig.from, false);
    p.queue = p.queue.then(() => apply(p, sig.kind, sig.data)).catch((e) => console.warn(`kith: signal from ${shortId(sig.from)}: ${e.message}`));
  });
}

async function apply(p, kind, data) {
  if (peers.get(p.peer) !== p) return;
  const c = current;
  const pc = p.pc;
  if (kind === 'sdp' && data && data.type) {
    const offer = data.type === 'offer';
    const collision = offer && (p.makingOffer || pc.signalingState !== 'stable');
    // Our offer made while they rang yields to theirs (an older node's page offers on joining).
    p.ignoreOffer = !p.polite && !p.invited && collision;
    if (p.ignoreOffer) return;
    // A polite peer's own offer is rolled back by this (implicit rollback).
    await pc.setRemoteDescription(data);
    for (const cand of p.pendingIce.splice(0)) await addIce(p, cand);
    if (offer) {
      if (c.mediaReady) attach(p);
      else {
        // Our microphone (and camera) are still opening: the answer goes now and says we send
        // too; they are put in when they open (see attach), with no new negotiation.
        for (const t of pc.getTransceivers()) {
          const kind = t.receiver.track.kind;
          if (!t.stopped && (kind === 'audio' || (kind === 'video' && c.video))) t.direction = 'sendrecv';
        }
      }
      await describe(p);
    }
  } else if (kind === 'ice') {
    // End of candidates (null) is not applied: candidates travel as separate requests, so it may
    // overtake the last of them, and Chromium connects without it.
    if (!data) return;
    if (!pc.remoteDescription) p.pendingIce.push(data);
    else await addIce(p, data);
  }
}

async function addIce(p, candidate) {
  try {
    await p.pc.addIceCandidate(candidate);
  } catch (e) {
    // Candidates of an offer we ignored (see perfect negotiation) fail; nothing else should.
    if (!p.ignoreOffer) console.warn(`kith: ICE candidate from ${shortId(p.peer)}: ${e.message}`);
  }
}

/** A CallReport for our call arrived (an answer or an event): take its state. */
function update(report) {
  if (!current || report.call_id !== current.id) return;
  current.report = report;
  current.title = titleOf(report);
  if (report.state === 'ended') {
    finish(report);
    return;
  }
  // Those who left: their connection goes.
  for (const part of report.participants || []) {
    if (part.state === 'left' && peers.has(part.peer)) closePeer(part.peer);
  }
  if (report.state === 'active' && !statsTimer) statsTimer = setInterval(sampleStats, STATS_EVERY_MS);
  publish();
}

function closePeer(peer) {
  const p = peers.get(peer);
  if (!p) return;
  p.pc.close();
  peers.delete(peer);
}

/** `peer` joined after us: they offer; in a group, if they did not (both joined at once), we do. */
function joined(peer) {
  if (!current.report || !current.report.group) return;
  const c = current;
  setTimeout(() => {
    if (current !== c || !active() || peers.has(peer)) return;
    const still = (c.report.participants || []).some((x) => x.peer === peer && x.state === 'joined');
    if (still && getState().me < peer) offerTo(peer);
  }, GROUP_OFFER_FALLBACK_MS);
}

// --- events ------------------------------------------------------------------------------------

onCalls((ev) => {
  if (ev.type === 'reconnected') {
    // The ICE servers are known before the first "Call" (see `configuration`).
    renewConfiguration();
    resync();
    return;
  }
  if (ev.type === 'call.incoming') {
    ringFor(ev.call);
    return;
  }
  if (ev.type === 'call.ice_changed') {
    // New TURN credentials (or servers, or "relay only"): the next call uses them.
    renewConfiguration();
    return;
  }
  const id = idOf(ev);
  if (ev.type === 'call.signal' && held && held.id === id && held.signals.length < 100) held.signals.push(ev);
  const inc = getState().incoming;
  if (inc && inc.call_id === id && ev.type === 'call.ended') {
    stopRing();
    held = null;
    setCallState({ incoming: null });
  }
  if (!current || current.phase === 'ended') return;
  if (!current.id) {
    // Our POST /v1/calls has not answered yet: keep its events for when it has.
    if (current.early.length < 100) current.early.push(ev);
    return;
  }
  if (id !== current.id) return;
  handle(ev);
});

/** The call an event is about (for `call.merged`: our call that gave way). */
const idOf = (ev) => (ev.type === 'call.merged' ? ev.from : ev.call ? ev.call.call_id : ev.call_id);

function handle(ev) {
  switch (ev.type) {
    case 'call.merged':
      // We called them as they called us: the node dropped our call and joined theirs for us,
      // so we are the one who joined: we answer their offer (or offer, to an older node). Our
      // own offer belonged to the call that gave way.
      current.id = ev.call.call_id;
      current.direction = ev.call.direction;
      current.seen = new Set();
      for (const peer of [...peers.keys()]) closePeer(peer);
      update(ev.call);
      if (active()) offerToJoined(ev.call);
      break;
    case 'call.signal':
      signalIn(ev);
      break;
    case 'call.ringing':
      current.ringing = true;
      update(ev.call);
      break;
    case 'call.joined':
      update(ev.call);
      if (active() && ev.peer) joined(ev.peer);
      break;
    case 'call.left':
      if (ev.peer) closePeer(ev.peer);
      update(ev.call);
      break;
    case 'call.ended':
      finish(ev.call);
      break;
    default:
      break;
  }
}

/** After a (re)connect of the event socket: catch up on what was missed. */
async function resync() {
  try {
    if (active() && current.id) {
      const c = current;
      const full = await api.call(c.id);
      if (current !== c) return;
      update(full);
      for (const sig of [...(full.signals || [])].sort((a, b) => a.seq - b.seq)) signalIn(sig);
      return;
    }
    const inc = getState().incoming;
    const { calls } = await api.calls();
    if (inc) {
      const now = calls.find((x) => x.call_id === inc.call_id);
      if (!now || now.state !== 'ringing') {
        stopRing();
        setCallState({ incoming: null });
      }
    } else if (!active()) {
      // A call ringing for us while this page was closed or away.
      const ringingNow = calls.find((x) => x.direction === 'incoming' && x.state === 'ringing');
      if (ringingNow) ringFor(ringingNow);
    }
  } catch {
    // The next reconnect tries again.
  }
}

// --- actions -------------------------------------------------------------------------------------

/**
 * Calls `target` ({ to: name, petname or peer id } or { group: id }). Before the very first call
 * the device check comes first (its "Continue" places the call).
 */
export async function placeCall(target, video) {
  if (active()) {
    setNotice('You are already in a call.');
    return;
  }
  if (!deviceCheckDone()) {
    openDialog('devicecheck', { then: { target, video } });
    return;
  }
  const s = getState();
  const title = target.group
    ? (groupOf(s, target.group) || { title: 'group' }).title
    : petnameOf(s, target.to) || (/^12D3/.test(target.to) ? displayName(s, target.to) : target.to);
  begin({ direction: 'outgoing', video: !!video, target, title, phase: 'calling' });
  const c = current;
  // A call from a conversation names the peer id: our offer is made while the ring travels,
  // first of all when the ICE servers are known already (the offer takes the browser longest).
  const direct = target.to && /^12D3/.test(target.to) ? target.to : null;
  const known = configurationNow();
  if (known) {
    c.config = known;
    c.markConfigured();
    if (direct) offerTo(direct, true);
  }
  try {
    // The ring starts while the microphone and camera open: nothing here waits for the other.
    const ringing = api.startCall(target, video);
    ringing.catch(() => {});
    // The microphone and camera open while the ring and our offer travel (the offer holds
    // their places).
    const media = localMedia(video);
    const dropMedia = () => media.then(stopStream);
    if (!known) c.config = await configuration();
    if (current !== c || c.hungUp) {
      dropMedia();
      ringing.then((r) => api.hangUp(r.call_id)).catch(() => {});
      return;
    }
    if (!known) {
      c.markConfigured();
      if (direct) offerTo(direct, true);
    }
    const report = await ringing;
    if (current !== c) {
      dropMedia();
      return;
    }
    c.id = report.call_id;
    if (c.hungUp) {
      dropMedia();
      await api.hangUp(c.id).catch(() => {});
      return;
    }
    if (report.direction === 'incoming') {
      // They were ringing us: the node joined their call instead. Our offer goes; theirs (the
      // node kept it) is answered, and we offer to whoever else joined.
      for (const peer of [...peers.keys()]) closePeer(peer);
      c.direction = 'incoming';
      c.markNamed();
      update(report);
      api.call(c.id).then((full) => {
        for (const sig of [...(full.signals || [])].sort((a, b) => a.seq - b.seq)) signalIn(sig);
      }, () => {});
      if (active()) offerToJoined(report);
    } else {
      c.markNamed();
      update(report);
      // Our offer to everyone we ring goes now, while they ring: joining then takes one hop.
      if (active()) for (const part of report.participants || []) if (part.state === 'ringing' && !peers.has(part.peer)) offerTo(part.peer, true);
    }
    for (const ev of c.early.splice(0)) if (idOf(ev) === c.id && active()) handle(ev);
    const local = await media;
    if (current !== c || !active()) {
      stopStream(local);
      return;
    }
    c.local = local;
    mediaReady(c);
    publish();
  } catch (e) {
    if (current !== c) return;
    if (e.kind === 'busy') c.outcome = 'busy';
    finish(null, e.kind === 'busy' ? 'You are already in a call.' : e.message);
  }
}

/** Offers to every participant already joined, except a caller who offers to us (we answer). */
function offerToJoined(report) {
  for (const part of report.participants || []) {
    if (part.state === 'joined' && !(report.caller_offers && part.peer === report.peer)) offerTo(part.peer);
  }
}

/**
 * Accepts the call ringing for us: the node says we joined while our media open; then we answer
 * the caller's offer (it came while we rang) and offer to the others already joined.
 */
export async function acceptCall() {
  const inc = getState().incoming;
  if (!inc) return;
  stopRing();
  setCallState({ incoming: null });
  const mine = held && held.id === inc.call_id ? held : null;
  const early = mine ? mine.signals : [];
  const configured = mine && mine.config ? mine.config : configuration();
  held = null;
  begin({ id: inc.call_id, report: inc, direction: 'incoming', video: !!inc.video, target: {}, title: titleOf(inc), phase: 'connecting' });
  const c = current;
  try {
    // The caller hears we joined while our microphone and camera open.
    const joined = api.acceptCall(inc.call_id);
    joined.catch(() => {});
    c.joined = joined;
    // The caller's offer, if this page was not open when it came: the node kept it.
    const hasOffer = early.some((s) => s.kind === 'sdp' && s.from === inc.peer);
    const kept = inc.caller_offers && !hasOffer ? api.call(inc.call_id).then((r) => r.signals || [], () => []) : Promise.resolve([]);
    for (const sig of early) signalIn(sig);
    // The caller's offer is answered while the microphone opens (the answer holds its place).
    const media = localMedia(inc.video);
    c.config = await configured;
    if (current !== c || !active()) {
      media.then(stopStream);
      return;
    }
    c.markConfigured();
    kept.then((missed) => {
      for (const sig of [...missed].sort((a, b) => a.seq - b.seq)) signalIn(sig);
    });
    const local = await media;
    c.local = local;
    if (current !== c || !active()) {
      stopStream(local);
      return;
    }
    mediaReady(c);
    publish();
    const report = await joined;
    if (current !== c) return;
    update(report);
    if (!active()) return;
    offerToJoined(report);
  } catch (e) {
    if (current === c) finish(null, e.message);
  }
}

export async function declineCall() {
  const inc = getState().incoming;
  if (!inc) return;
  stopRing();
  held = null;
  setCallState({ incoming: null });
  try {
    await api.declineCall(inc.call_id);
  } catch (e) {
    setNotice(e.message);
  }
}

export async function hangUp() {
  if (!active()) return;
  const c = current;
  c.hungUp = true;
  if (!c.id) {
    // POST /v1/calls is still on its way: placeCall hangs up once it answers.
    finish(null);
    return;
  }
  try {
    const report = await api.hangUp(c.id);
    if (current === c) finish(report);
  } catch (e) {
    if (current === c) finish(null, e.message);
  }
}

export function toggleMute() {
  if (!active()) return;
  current.muted = !current.muted;
  if (current.local) for (const t of current.local.getAudioTracks()) t.enabled = !current.muted;
  publish();
}

export function toggleCamera() {
  if (!active()) return;
  current.cameraOff = !current.cameraOff;
  if (current.local) for (const t of current.local.getVideoTracks()) t.enabled = !current.cameraOff;
  publish();
}

// --- connection quality ----------------------------------------------------------------------------

const LEVELS = ['good', 'fair', 'poor'];

function grade(rtt, loss) {
  if ((rtt !== null && rtt > 400) || loss > 0.08) return 'poor';
  if ((rtt !== null && rtt > 150) || loss > 0.02) return 'fair';
  return 'good';
}

function worstQuality(remotes) {
  let worst = null;
  for (const r of Object.values(remotes)) {
    const q = r.quality;
    if (!q || r.state !== 'connected') continue;
    if (!worst || LEVELS.indexOf(q.level) > LEVELS.indexOf(worst.level) || (q.level === worst.level && (q.rtt || 0) > (worst.rtt || 0))) worst = q;
  }
  return worst;
}

/** Round-trip time of the selected candidate pair and inbound packet loss over the last 2 s. */
async function sampleStats() {
  const c = current;
  for (const p of [...peers.values()]) {
    if (p.pc.connectionState !== 'connected') continue;
    let stats;
    try {
      stats = await p.pc.getStats();
    } catch {
      continue;
    }
    let pair = null;
    let lost = 0;
    let received = 0;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) || pair;
      if (r.type === 'inbound-rtp') {
        lost += Math.max(0, r.packetsLost || 0);
        received += r.packetsReceived || 0;
      }
    });
    if (!pair) stats.forEach((r) => {
      if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r;
    });
    const last = p.last || { lost: 0, received: 0 };
    p.last = { lost, received };
    const dLost = lost - last.lost;
    const dAll = dLost + (received - last.received);
    const loss = dAll > 0 ? Math.max(0, dLost) / dAll : 0;
    const rtt = pair && typeof pair.currentRoundTripTime === 'number' ? Math.round(pair.currentRoundTripTime * 1000) : null;
    p.quality = { level: grade(rtt, loss), rtt, loss };
  }
  if (current === c && active()) publish();
}

/** "Connection: good (RTT 12 ms, loss 0%)". */
export function qualityWords(q) {
  if (!q) return 'Connection: measuring…';
  const rtt = q.rtt === null ? 'RTT unknown' : `RTT ${q.rtt} ms`;
  return `Connection: ${q.level} (${rtt}, loss ${Math.round(q.loss * 100)}%)`;
}

// --- ringing -------------------------------------------------------------------------------------

let ring = null;
/**
 * The one AudioContext the ring plays through, made at the first ring and suspended (not
 * closed) between rings: each new context starts an audio output stream and its thread, and
 * browsers warn about (or refuse) a page that keeps making them. (No change in call set-up time
 * was measurable from it: BENCHMARKS.md, "Calls on this session's machine".)
 */
let ringCtx = null;

function ringFor(report) {
  if (!report || report.state !== 'ringing') return;
  // An old "ended" screen gives way; a call in progress means the node already answered busy.
  if (active()) return;
  dismissCall();
  // The ICE servers are asked for now: Accept then waits only for the microphone.
  if (!held || held.id !== report.call_id) held = { id: report.call_id, signals: [], config: configuration() };
  setCallState({ incoming: report });
  startRing();
}

/** Two soft tones, twice, every three seconds (WebAudio oscillators: no sound file to load). */
function startRing() {
  if (ring || typeof AudioContext === 'undefined') return;
  if (!ringCtx || ringCtx.state === 'closed') {
    try {
      ringCtx = new AudioContext();
    } catch {
      return;
    }
  }
  const ctx = ringCtx;
  ctx.resume().catch(() => {});
  const voices = new Set();
  const burst = () => {
    const t0 = ctx.currentTime + 0.05;
    for (let i = 0; i < 4; i += 1) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = i % 2 ? 660 : 880;
      const t = t0 + i * 0.22;
      gain.gain.setValueAtTime(0, t);
      gain.gain.linearRampToValueAtTime(0.15, t + 0.02);
      gain.gain.linearRampToValueAtTime(0, t + 0.2);
      osc.connect(gain).connect(ctx.destination);
      voices.add(osc);
      osc.onended = () => {
        voices.delete(osc);
        gain.disconnect();
      };
      osc.start(t);
      osc.stop(t + 0.21);
    }
  };
  burst();
  ring = { ctx, voices, timer: setInterval(burst, 3000) };
}

function stopRing() {
  if (!ring) return;
  clearInterval(ring.timer);
  // Tones already scheduled must not sound in the next ring's context: stop them now.
  for (const osc of ring.voices) {
    try {
      osc.stop();
    } catch {
      /* not started yet or already stopped */
    }
    osc.disconnect();
  }
  ring.ctx.suspend().catch(() => {});
  ring = null;
}
