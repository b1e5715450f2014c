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
const RING_INTERVAL_MS = 1_000;

const percentile = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const summary = (xs) => ({ p50_ms: Math.round(percentile(xs, 50)), p99_ms: Math.round(percentile(xs, 99)) });

/** In the page: the time (Date.now()) at which every one of its peer connections was connected. */
function watchConnected() {
  window.__connectedAt = 0;
  clearInterval(window.__connectedTimer);
  window.__connectedTimer = setInterval(() => {
    const pcs = [...(window.__kithCalls || new Map()).values()];
    if (!window.__connectedAt && pcs.length && pcs.every((pc) => pc.connectionState === 'connected')) window.__connectedAt = Date.now();
  }, 2);
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
      const page = pages[caller.name];
      const t0 = Date.now();
      lastRing[caller.name] = t0;
      await page.getByRole('button', { name: 'Call', exact: true }).click();
      const ends = await poll(`call ${i + 1}: both pages connected`, 30_000, async () => {
        const at = await Promise.all(Object.values(pages).map((p) => p.evaluate(() => window.__connectedAt)));
        return at.every(Boolean) ? at : null;
      }, 50);
      times.push(Math.max(...ends) - t0);
      await page.getByRole('button', { name: 'Hang up', exact: true }).click();
      await poll('both sides to record the end', 10_000, async () => {
        const lists = await Promise.all([caller, callee].map((n) => api(n, 'GET', '/v1/calls')));
        return lists.every((l) => l.calls[0] && l.calls[0].state === 'ended');
      }, 100);
      for (const p of Object.values(pages)) {
        const close = p.getByRole('button', { name: 'Close', exact: true });
        if (await close.isVisible()) await close.click();
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
      const ends = await poll(`baseline ${i + 1}: both connected`, 30_000, async () => {
        const states = await Promise.all(pages.map((p) => p.evaluate(() => window.__pc.connectionState)));
        return states.every((s) => s === 'connected') ? Date.now() : null;
      }, 5);
      times.push(ends - t0);
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
