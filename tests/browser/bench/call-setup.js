// Call setup time: from clicking "Call" on Alice's page to both peer connections `connected`
// (Bob's page accepts as soon as it rings), over 20 calls through two real `kith run` nodes,
// beside a baseline in the same run: two plain pages that exchange SDP and ICE candidates
// directly through this process, with no node in between. Prints one JSON document:
//
//   {"kith":{"p50_ms","p99_ms"},"baseline":{"p50_ms","p99_ms"},"calls":20}
//
// Run it where the call tests run (a network namespace holding only loopback):
//
//   cd tests/browser && unshare -rn sh -c 'ip link set lo up && node bench/call-setup.js'
//
// The node lets one peer ring another once per 10 s unless the callee answered or declined the
// last call (a ring flood is refused; a call back is not). Every call here is answered, so calls
// follow each other after a short pause; they alternate direction; only setup time is measured.

import http from 'node:http';
import {
  CALL_CHROMIUM_ARGS,
  Lab,
  desktopContext,
  launchBrowser,
  missingPrerequisite,
  onlyLoopback,
  openSignedIn,
  poll,
  sleep,
} from '../lib/harness.js';
import { befriend, api } from '../lib/calls.js';

const CALLS = Number(process.env.CALLS || 20);
/** TRACE=1: after each kith call, print the steps both pages saw, in ms from the click (stderr). */
const TRACE = process.env.TRACE === '1';
const RING_INTERVAL_MS = 1_000;

const percentile = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const summary = (xs) => ({ p50_ms: Math.round(percentile(xs, 50)), p99_ms: Math.round(percentile(xs, 99)) });

/**
 * In the page, before the app loads: every peer connection the app makes tells
 * `window.__onPcState` when its state changes, so that the measurement below needs no timer or
 * polling in the page (which would compete with the app for the CPU). The app is not changed.
 */
function hookConnections() {
  const OrigPC = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends OrigPC {
    constructor(...a) {
      super(...a);
      this.addEventListener('connectionstatechange', () => window.__onPcState && window.__onPcState());
    }
  };
}

/**
 * In the page: `window.__connected`, a promise of the time (Date.now()) at which every one of
 * its peer connections was connected, and when a "Call" button was clicked (the start of the
 * measurement: the page's click event, so the automation's own checks before it clicks are not
 * counted).
 */
function watchConnected() {
  window.__connectedAt = 0;
  window.__clickedAt = 0;
  if (!window.__clickWatch) {
    window.__clickWatch = true;
    document.addEventListener('click', (e) => {
      const b = e.target instanceof Element && e.target.closest('button');
      if (b && b.textContent.trim() === 'Call' && !window.__clickedAt) window.__clickedAt = Date.now();
    }, true);
  }
  window.__connected = new Promise((resolve) => {
    window.__onPcState = () => {
      const pcs = [...(window.__kithCalls || new Map()).values()];
      if (!window.__connectedAt && pcs.length && pcs.every((pc) => pc.connectionState === 'connected')) {
        window.__connectedAt = Date.now();
        resolve(window.__connectedAt);
      }
    };
  });
}

/** Waits (bounded) for a promise in `page` (`expr` evaluated there) and returns its value. */
async function inPage(page, expr, what, limitMs = 30_000) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${limitMs} ms: ${what}`)), limitMs);
  });
  try {
    return await Promise.race([page.evaluate(expr), late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * In the page, before the app loads (TRACE=1 only): records when each `/v1/calls` request left
 * and was answered, each `call.*` WebSocket event arrived, each description was set, each
 * candidate gathered or added, and each connection state changed, in `window.__trace`. Wraps the
 * browser's own objects; the app is not changed.
 */
function traceCalls() {
  const now = () => performance.timeOrigin + performance.now();
  window.__trace = [];
  const log = (what) => window.__trace.push([now(), what]);
  const origFetch = window.fetch;
  window.fetch = async (url, opts = {}) => {
    const u = String(url);
    const tag = u.includes('/v1/calls') ? `${(opts.method || 'GET')} ${u.replace(/^.*\/v1\/calls/, '/calls').replace(/[0-9a-f]{32}/, 'ID')}` : '';
    let body = '';
    if (tag && opts.body) try { const b = JSON.parse(opts.body); body = b.kind ? ` ${b.kind}${b.data && b.data.type ? `:${b.data.type}` : ''}` : ''; } catch { /* not JSON */ }
    if (tag) log(`> ${tag}${body}`);
    const res = await origFetch(url, opts);
    if (tag) log(`< ${tag}${body} ${res.status}`);
    return res;
  };
  const OrigWS = window.WebSocket;
  window.WebSocket = class extends OrigWS {
    constructor(...a) {
      super(...a);
      this.addEventListener('message', (m) => {
        try {
          const ev = JSON.parse(m.data);
          if (String(ev.type).startsWith('call.')) log(`ws ${ev.type}${ev.kind ? ` ${ev.kind}${ev.data && ev.data.type ? `:${ev.data.type}` : ''}` : ''}`);
        } catch { /* not JSON */ }
      });
    }
  };
  const P = RTCPeerConnection.prototype;
  for (const m of ['setLocalDescription', 'setRemoteDescription', 'addIceCandidate']) {
    const orig = P[m];
    P[m] = async function (...a) {
      const t = a[0] && a[0].type ? `:${a[0].type}` : '';
      log(`pc ${m}${t}`);
      const r = await orig.apply(this, a);
      log(`pc ${m}${t} done`);
      return r;
    };
  }
  const OrigPC = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends OrigPC {
    constructor(...a) {
      super(...a);
      log('pc new');
      this.addEventListener('icecandidate', (e) => log(`pc candidate ${e.candidate ? e.candidate.type : 'end'}`));
      this.addEventListener('connectionstatechange', () => log(`pc ${this.connectionState}`));
      this.addEventListener('icegatheringstatechange', () => log(`pc gathering ${this.iceGatheringState}`));
    }
  };
  const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (c) => {
    log('getUserMedia');
    const s = await gum(c);
    log('getUserMedia done');
    return s;
  };
  new MutationObserver(() => {
    if (document.querySelector('dialog.call-screen') && !window.__traceRang) {
      window.__traceRang = true;
      log('ring dialog shown');
    }
    if (!document.querySelector('dialog.call-screen')) window.__traceRang = false;
  }).observe(document, { childList: true, subtree: true });
}

/** In the page: clicks "Accept" as soon as a call rings. */
function autoAccept() {
  new MutationObserver(() => {
    const d = document.querySelector('dialog.call-screen');
    const b = d && [...d.querySelectorAll('button')].find((x) => x.textContent.trim() === 'Accept');
    if (b && !b.dataset.clicked) {
      b.dataset.clicked = '1';
      b.click();
    }
  }).observe(document.body, { childList: true, subtree: true });
}

async function kithRuns(browser) {
  const lab = new Lab('kith-bench-calls-');
  try {
    const A = await lab.start('a');
    const B = await lab.start('b', { bootstrap: [A.tcpAddr()] });
    await Promise.all([A, B].map((n) => n.waitForRouting(1)));
    await befriend([A, 'alice'], [B, 'bob']);
    const pages = {};
    for (const [node, other] of [[A, 'bob'], [B, 'alice']]) {
      const ctx = await desktopContext(browser);
      await ctx.addInitScript(hookConnections);
      if (TRACE) await ctx.addInitScript(traceCalls);
      await ctx.addInitScript(() => {
        localStorage.setItem('kith.firstRunSkipped', '1');
        localStorage.setItem('kith.deviceCheckDone', '1');
      });
      const page = await openSignedIn(ctx, node);
      await page.evaluate(autoAccept);
      const link = page.getByRole('list', { name: 'Chats', exact: true }).getByRole('link').filter({ hasText: other });
      await link.first().click({ timeout: 30_000 });
      pages[node.name] = page;
    }
    const times = [];
    const lastRing = { a: 0, b: 0 };
    for (let i = 0; i < CALLS; i += 1) {
      const [caller, callee] = i % 2 ? [B, A] : [A, B];
      const wait = lastRing[caller.name] + RING_INTERVAL_MS - Date.now();
      if (wait > 0) await sleep(wait);
      for (const p of Object.values(pages)) await p.evaluate(watchConnected);
      if (TRACE) for (const p of Object.values(pages)) await p.evaluate(() => { window.__trace = []; });
      const page = pages[caller.name];
      lastRing[caller.name] = Date.now();
      await page.getByRole('button', { name: 'Call', exact: true }).click();
      const t0 = await page.evaluate(() => window.__clickedAt);
      if (!t0) throw new Error(`call ${i + 1}: the page saw no click on "Call"`);
      const ends = await Promise.all(Object.values(pages).map((p) => inPage(p, () => window.__connected, `call ${i + 1}: both pages connected`)));
      times.push(Math.max(...ends) - t0);
      if (TRACE) {
        const steps = [];
        for (const [name, p] of Object.entries(pages)) {
          for (const [at, what] of await p.evaluate(() => window.__trace)) steps.push([at - t0, `${name === caller.name ? 'caller' : 'callee'} ${what}`]);
        }
        steps.sort((x, y) => x[0] - y[0]);
        console.error(`call ${i + 1} (${caller.name} calls): ${Math.max(...ends) - t0} ms`);
        for (const [at, what] of steps) console.error(`  ${at.toFixed(1).padStart(7)} ${what}`);
      }
      await page.getByRole('button', { name: 'Hang up', exact: true }).click();
      await poll('both sides to record the end', 10_000, async () => {
        const lists = await Promise.all([caller, callee].map((n) => api(n, 'GET', '/v1/calls')));
        return lists.every((l) => l.calls[0] && l.calls[0].state === 'ended');
      }, 100);
      // The ended screen stays 4 s unless closed; it must be gone before the next "Call" click
      // (a click that waited for it once made one call of 20 look like 4.2 s).
      for (const p of Object.values(pages)) {
        await poll('the call view to close', 10_000, async () => {
          const close = p.getByRole('button', { name: 'Close', exact: true });
          if (await close.isVisible()) await close.click();
          return (await p.locator('.call-view').count()) === 0;
        }, 50);
      }
    }
    return times;
  } finally {
    await lab.cleanup();
  }
}

/** Two plain pages, SDP and candidates passed through this process: WebRTC alone. */
async function baselineRuns(browser) {
  const server = http.createServer((req, res) => {
    res.setHeader('Content-Type', 'text/html');
    res.end('<!doctype html><title>baseline</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}/`;
  const ctx = await desktopContext(browser);
  const [p1, p2] = [await ctx.newPage(), await ctx.newPage()];
  try {
    // Candidates go straight to the other page as they come (trickle), as kith's pages do.
    for (const [me, other] of [[p1, p2], [p2, p1]]) {
      await me.exposeBinding('__send', (_src, c) => other.evaluate((x) => window.__pc && window.__pc.addIceCandidate(x).catch(() => {}), c).catch(() => {}));
    }
    for (const p of [p1, p2]) await p.goto(url);
    const times = [];
    for (let i = 0; i < CALLS; i += 1) {
      const pages = [p1, p2];
      const t0 = Date.now();
      for (const p of pages) {
        await p.evaluate(async () => {
          if (window.__pc) window.__pc.close();
          if (window.__stream) window.__stream.getTracks().forEach((t) => t.stop());
          window.__stream = await navigator.mediaDevices.getUserMedia({ audio: true });
          const pc = new RTCPeerConnection({ iceServers: [] });
          window.__pc = pc;
          window.__stream.getTracks().forEach((t) => pc.addTrack(t, window.__stream));
          pc.onicecandidate = (e) => e.candidate && window.__send(e.candidate.toJSON());
          // As on kith's pages: the time of the state change, with no polling in the page.
          window.__connected = new Promise((resolve) => {
            pc.onconnectionstatechange = () => pc.connectionState === 'connected' && resolve(Date.now());
          });
        });
      }
      const offer = await p1.evaluate(async () => {
        await window.__pc.setLocalDescription();
        return window.__pc.localDescription.toJSON();
      });
      const answer = await p2.evaluate(async (o) => {
        await window.__pc.setRemoteDescription(o);
        await window.__pc.setLocalDescription();
        return window.__pc.localDescription.toJSON();
      }, offer);
      await p1.evaluate((a) => window.__pc.setRemoteDescription(a), answer);
      const ends = await Promise.all(pages.map((p) => inPage(p, () => window.__connected, `baseline ${i + 1}: both connected`)));
      times.push(Math.max(...ends) - t0);
    }
    return times;
  } finally {
    await ctx.close();
    server.close();
  }
}

const missing = missingPrerequisite();
if (missing) {
  console.error(missing);
  process.exit(2);
}
if (!onlyLoopback()) console.error('note: not in a network namespace with only loopback; WebRTC may use other interfaces');
const browser = await launchBrowser({ args: CALL_CHROMIUM_ARGS });
try {
  const baseline = await baselineRuns(browser);
  const kith = await kithRuns(browser);
  console.log(JSON.stringify({ kith: summary(kith), baseline: summary(baseline), calls: CALLS }));
} finally {
  await browser.close();
}
