// Test harness for the kith browser tests: real `kith run` daemons on loopback, each with its own
// temp home and a bootstrap file for a private test network (low proof-of-work difficulty), the
// `kith` CLI run bounded in time, raw HTTP requests with headers `fetch` may not set, and
// Debian's chromium through playwright-core.
//
// Every wait is a poll with a time bound. Daemons are SIGKILLed when the lab is cleaned up (and
// when this process exits, whatever happened), so a failing test never leaves nodes behind.
//
// Environment:
//   KITH_BIN          the kith binary (default <CARGO_TARGET_DIR or repo/target>/debug/kith)
//   CARGO_TARGET_DIR  where screenshots go (<dir>/browser-screenshots)
//   CHROMIUM          the browser (default /usr/bin/chromium); missing fails under CI=true
//   KITH_TEST_KEEP=1  keep the temp dir (homes and <node>.log) for a post-mortem
//   KITH_TEST_LOG     the nodes' RUST_LOG (default info)

import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const TARGET_DIR = process.env.CARGO_TARGET_DIR
  ? path.resolve(REPO, process.env.CARGO_TARGET_DIR)
  : path.join(REPO, 'target');
export const KITH_BIN = process.env.KITH_BIN
  ? path.resolve(process.env.KITH_BIN)
  : path.join(TARGET_DIR, 'debug', 'kith');
export const SCREENSHOT_DIR = path.join(TARGET_DIR, 'browser-screenshots');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const IN_CI = process.env.CI === 'true' || process.env.CI === '1';

const BOOTSTRAP_TOML = '[network]\nid = "lab"\nname_difficulty = 8\n';
/** How long a daemon may take to print its ready line, or to exit after `kith stop`. */
export const PROCESS_TIMEOUT_MS = 30_000;
/** Upper bound for one CLI command. */
export const CLI_TIMEOUT_MS = 30_000;
/** How long fresh nodes may take to have each other in their routing tables. */
export const MESH_TIMEOUT_MS = 30_000;

/** Every daemon ever started by this process, so an exit of any kind kills them all. */
const LIVE = new Set();
process.on('exit', () => {
  for (const child of LIVE) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** A sleep for `Promise.race` bounds: its timer does not keep the process alive once all is done. */
const bound = (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref());

/**
 * Calls `check` every `intervalMs` until it returns something other than undefined/null/false,
 * for at most `limitMs`; throws naming `what` (and the last value or error seen) on timeout.
 * Thrown errors inside `check` count as "not yet".
 */
export async function poll(what, limitMs, check, intervalMs = 200) {
  const start = Date.now();
  let last;
  let lastError;
  for (let attempt = 0; ; attempt++) {
    try {
      last = await check();
      lastError = undefined;
      if (last !== undefined && last !== null && last !== false) return last;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() - start >= limitMs || attempt > 10_000) {
      const detail = lastError ? `; last error: ${lastError.message}` : `; last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${limitMs} ms: ${what}${detail}`);
    }
    await sleep(intervalMs);
  }
}

/** Runs `kith <args>` bounded in time; never throws for a non-zero exit: {code, stdout, stderr}. */
export function runKith(args, { timeoutMs = CLI_TIMEOUT_MS, env = {} } = {}) {
  return new Promise((resolve) => {
    const childEnv = { ...process.env, ...env };
    delete childEnv.KITH_HOME;
    execFile(
      KITH_BIN,
      args,
      { timeout: timeoutMs, killSignal: 'SIGKILL', env: childEnv, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        let code = 0;
        if (error) {
          code = typeof error.code === 'number' ? error.code : -1;
          if (error.killed) stderr += `\n[harness] killed after ${timeoutMs} ms`;
        }
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** The TCP listen address of a ready line or status, with `/p2p/<peer id>`, for `--bootstrap`. */
function tcpAddrOf(listenAddrs, peerId, who) {
  const tcp = (listenAddrs || []).find((a) => a.startsWith('/ip4/127.0.0.1/tcp/'));
  if (!tcp) throw new Error(`${who}: no 127.0.0.1 TCP listen address in ${JSON.stringify(listenAddrs)}`);
  return `${tcp}/p2p/${peerId}`;
}

/** One `kith run` process on its own home (a restart makes a new KithNode on the same home). */
export class KithNode {
  constructor(lab, name, home, child, ready, logPath) {
    this.lab = lab;
    this.name = name;
    this.home = home;
    this.child = child;
    this.ready = ready;
    this.logPath = logPath;
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
      else child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    this.exited.then(() => LIVE.delete(child));
  }

  get peerId() {
    return this.ready.peer_id;
  }

  /** `127.0.0.1:PORT` of the local API (and web app). */
  get apiAddr() {
    return this.ready.api_addr;
  }

  get apiPort() {
    return Number(this.apiAddr.split(':').pop());
  }

  get baseUrl() {
    return `http://${this.apiAddr}`;
  }

  /** The API token from the home (what `kith open` puts in the URL fragment). */
  get token() {
    return fs.readFileSync(path.join(this.home, 'api.token'), 'utf8').trim();
  }

  /** `<tcp listen addr>/p2p/<peer id>`, for other nodes' `--bootstrap`. */
  tcpAddr() {
    return tcpAddrOf(this.ready.listen_addrs, this.peerId, this.name);
  }

  running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** `kith <args> --home <home>`, bounded: {code, stdout, stderr}. */
  cli(args, opts) {
    return runKith([...args, '--home', this.home], opts);
  }

  /** `kith <args> --json --home <home>` that must exit 0; its one JSON document. */
  async json(args, opts) {
    const { code, stdout, stderr } = await this.cli([...args, '--json'], opts);
    if (code !== 0) throw new Error(`${this.name}: kith ${args.join(' ')} --json exited ${code}: ${stderr.trim()} ${stdout.trim()}`);
    try {
      return JSON.parse(stdout);
    } catch (e) {
      throw new Error(`${this.name}: kith ${args.join(' ')} --json printed no single JSON document (${e.message}): ${stdout}`);
    }
  }

  status() {
    return this.json(['status']);
  }

  /** Polls `kith status` until at least `n` peers are in the routing table. */
  async waitForRouting(n, limitMs = MESH_TIMEOUT_MS) {
    await poll(`${this.name} to have ${n} peer(s) in its routing table`, limitMs, async () => {
      const status = await this.status();
      return status.routing_table_peers >= n;
    }, 300);
  }

  /** `kith open --print --json`: the signed-in URL (token in the fragment). */
  async openUrl() {
    const out = await this.json(['open', '--print']);
    if (typeof out.url !== 'string' || !out.url.includes('#token=')) {
      throw new Error(`${this.name}: kith open --print --json gave no URL with #token=: ${JSON.stringify(out)}`);
    }
    return out.url;
  }

  /**
   * `kith stop`, then waits (bounded) for the process to exit; SIGKILLs it after the bound.
   * Returns {clean, code, signal, stopOutput}: clean when it exited 0 by itself.
   */
  async stop(limitMs = PROCESS_TIMEOUT_MS) {
    if (!this.running()) {
      const { code, signal } = await this.exited;
      return { clean: code === 0, code, signal, stopOutput: 'already exited' };
    }
    const stopped = await this.cli(['stop'], { timeoutMs: limitMs });
    const outcome = await Promise.race([this.exited, bound(limitMs).then(() => null)]);
    if (outcome === null) {
      this.child.kill('SIGKILL');
      const { code, signal } = await this.exited;
      return { clean: false, code, signal, stopOutput: `${stopped.code} ${stopped.stderr}; SIGKILLed after ${limitMs} ms` };
    }
    return { clean: outcome.code === 0, ...outcome, stopOutput: `${stopped.code} ${stopped.stdout} ${stopped.stderr}`.trim() };
  }

  /** SIGKILL and wait (bounded) for the exit. */
  async kill() {
    if (!this.running()) return;
    this.child.kill('SIGKILL');
    await Promise.race([this.exited, bound(PROCESS_TIMEOUT_MS)]);
  }

  /** The last `n` lines of this node's log. */
  logTail(n = 25) {
    try {
      const lines = fs.readFileSync(this.logPath, 'utf8').split('\n');
      return lines.slice(Math.max(0, lines.length - n - 1)).join('\n');
    } catch {
      return '(no log)';
    }
  }
}

/**
 * A private test network: one temp dir holding the bootstrap file, the homes and the logs.
 * `await lab.cleanup()` in an `after` hook kills every daemon and removes the dir.
 */
export class Lab {
  /** `env`: extra environment for every daemon of this lab (e.g. KITH_CALL_RING_TIMEOUT_SECS). */
  constructor(prefix = 'kith-browser-', { env = {} } = {}) {
    this.env = env;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    this.bootstrapFile = path.join(this.dir, 'bootstrap.toml');
    fs.writeFileSync(this.bootstrapFile, BOOTSTRAP_TOML);
    this.nodes = [];
    this.failed = false;
  }

  home(name) {
    return path.join(this.dir, name);
  }

  /**
   * Starts (or restarts, on the same home) node `name`, bootstrapping from `bootstrap`
   * (multiaddrs), with extra `kith run` arguments `args` and environment `env` (on top of the
   * lab's); resolves once the node printed its JSON ready line (bounded).
   */
  async start(name, { bootstrap = [], args: extraArgs = [], env: extraEnv = {} } = {}) {
    if (!fs.existsSync(KITH_BIN)) {
      throw new Error(`no kith binary at ${KITH_BIN}: run \`cargo build -p kith\` or set KITH_BIN`);
    }
    const home = this.home(name);
    const logPath = path.join(this.dir, `${name}.log`);
    // Appended to: a restarted node logs after its earlier run.
    const logFd = fs.openSync(logPath, 'a');
    const args = [
      'run',
      '--json',
      '--no-mdns',
      '--dht-mode',
      'server',
      '--listen',
      '/ip4/127.0.0.1/tcp/0',
      '--bootstrap-file',
      this.bootstrapFile,
    ];
    for (const addr of bootstrap) args.push('--bootstrap', addr);
    args.push(...extraArgs, '--home', home);
    const env = { ...process.env, RUST_LOG: process.env.KITH_TEST_LOG || 'info', ...this.env, ...extraEnv };
    delete env.KITH_HOME;
    const child = spawn(KITH_BIN, args, { stdio: ['ignore', 'pipe', logFd], env });
    fs.closeSync(logFd);
    LIVE.add(child);
    const lines = readline.createInterface({ input: child.stdout });
    const ready = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${name}: no ready line within ${PROCESS_TIMEOUT_MS} ms`));
      }, PROCESS_TIMEOUT_MS);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`${name}: kith run exited (${code ?? signal}) before its ready line; log ${logPath}:\n${tail(logPath)}`));
      });
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`${name}: cannot start ${KITH_BIN}: ${e.message}`));
      });
      lines.once('line', (line) => {
        clearTimeout(timer);
        try {
          resolve(JSON.parse(line));
        } catch (e) {
          child.kill('SIGKILL');
          reject(new Error(`${name}: ready line is not JSON (${e.message}): ${line}`));
        }
      });
    });
    // Keep draining stdout so the node can never block on a full pipe.
    lines.on('line', () => {});
    for (const field of ['peer_id', 'api_addr', 'listen_addrs']) {
      if (!(field in ready)) throw new Error(`${name}: ready line without ${field}: ${JSON.stringify(ready)}`);
    }
    const node = new KithNode(this, name, home, child, ready, logPath);
    this.nodes.push(node);
    return node;
  }

  /** Kills every daemon of this lab (printing log tails if `failed`), then removes the dir. */
  async cleanup() {
    await Promise.all(this.nodes.map((n) => n.kill().catch(() => {})));
    if (this.failed) {
      const seen = new Set();
      for (const node of this.nodes) {
        if (seen.has(node.logPath)) continue;
        seen.add(node.logPath);
        console.error(`---- last log lines of ${node.name} (${node.logPath}) ----\n${node.logTail()}`);
      }
    }
    if (process.env.KITH_TEST_KEEP) {
      console.error(`KITH_TEST_KEEP: homes and logs kept in ${this.dir}`);
    } else {
      fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

function tail(file, n = 20) {
  try {
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    return lines.slice(Math.max(0, lines.length - n - 1)).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Reads a whole HTTP response and resolves with its status, headers, text and JSON (if any). */
function collectResponse(res, resolve, reject) {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    resolve({ status: res.statusCode, headers: res.headers, text, json });
  });
  res.on('error', reject);
}

/**
 * A raw HTTP request with full control over the headers (fetch may not set Host or Origin):
 * resolves {status, headers, text, json} (json undefined when the body is not JSON). Bounded.
 */
export function rawRequest(node, { method = 'GET', path: reqPath = '/', headers = {}, body, timeoutMs = 10_000 }) {
  const [host, port] = [node.apiAddr.slice(0, node.apiAddr.lastIndexOf(':')), node.apiPort];
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host, port, method, path: reqPath, headers: { Connection: 'close', ...headers }, setHost: !('Host' in headers) },
      (res) => collectResponse(res, resolve, reject),
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${reqPath}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/**
 * One HTTP/1.1 request written on a bare socket, for bodies the server may refuse before reading
 * them all: the body goes out in 64 KiB pieces and stops as soon as an answer begins (as curl
 * does), write errors are ignored, and the answer is parsed. The socket is never half-closed
 * (hyper drops the answer of a client that sent FIN). With `expectContinue` it sends
 * `Expect: 100-continue` and the body only after "100 Continue". Resolves {status, headers, text,
 * json, writeError}. Bounded.
 */
export function rawExchange(node, { method = 'POST', path: reqPath, headers = {}, body = Buffer.alloc(0), expectContinue = false, timeoutMs = 15_000 }) {
  const [host, port] = [node.apiAddr.slice(0, node.apiAddr.lastIndexOf(':')), node.apiPort];
  const payload = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const head = [
    `${method} ${reqPath} HTTP/1.1`,
    `Host: ${node.apiAddr}`,
    `Content-Length: ${payload.length}`,
    ...(expectContinue ? ['Expect: 100-continue'] : []),
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    '',
    '',
  ].join('\r\n');
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    let writeError;
    let answered = false; // a final response began: stop uploading
    let settled = false;
    const socket = net.connect({ host, port });
    const finish = (error, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(expectTimer);
      socket.destroy();
      if (error) reject(error);
      else resolve(value);
    };
    const timer = setTimeout(
      () => finish(new Error(`${method} ${reqPath}: no complete answer within ${timeoutMs} ms; got ${JSON.stringify(received.toString('utf8').slice(0, 200))}`)),
      timeoutMs,
    );
    let bodyStarted = false;
    const sendBody = async () => {
      if (bodyStarted) return;
      bodyStarted = true;
      const CHUNK = 64 * 1024;
      for (let at = 0; at < payload.length && !answered && !socket.destroyed; at += CHUNK) {
        if (!socket.write(payload.subarray(at, at + CHUNK))) {
          await new Promise((resolve) => {
            socket.once('drain', resolve);
            socket.once('close', resolve);
          });
        }
      }
    };
    // A server that ignores Expect gets the body after a second anyway (RFC 9110, 10.1.1).
    const expectTimer = expectContinue ? setTimeout(sendBody, 1000) : null;
    /** The complete response in `received`, or null while more is to come. */
    const parse = (closed) => {
      const raw = received.toString('latin1');
      const split = raw.indexOf('\r\n\r\n');
      const match = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
      if (!match || split < 0) return null;
      const responseHeaders = {};
      for (const line of raw.slice(0, split).split('\r\n').slice(1)) {
        const i = line.indexOf(':');
        if (i > 0) responseHeaders[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      const bodyBytes = received.subarray(Buffer.byteLength(raw.slice(0, split + 4), 'latin1'));
      const length = Number(responseHeaders['content-length']);
      if (!closed && (Number.isNaN(length) || bodyBytes.length < length)) return null;
      const text = bodyBytes.toString('utf8');
      let json;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      return { status: Number(match[1]), headers: responseHeaders, text, json, writeError };
    };
    socket.on('data', (c) => {
      received = Buffer.concat([received, c]);
      const interim = /^HTTP\/1\.1 100[^\r]*\r\n\r\n/.exec(received.toString('latin1'));
      if (interim) {
        // "Go on": drop the interim response and send the body.
        received = received.subarray(interim[0].length);
        sendBody();
        if (!received.length) return;
      }
      answered = true;
      const done = parse(false);
      if (done) finish(null, done);
    });
    socket.on('error', (e) => {
      if (!writeError) writeError = e;
    });
    socket.on('close', () => {
      const done = parse(true);
      if (done) finish(null, done);
      else finish(new Error(`${method} ${reqPath}: connection closed without an answer (${writeError ? writeError.message : 'no error'}); got ${JSON.stringify(received.toString('utf8').slice(0, 200))}`));
    });
    socket.write(head);
    if (!expectContinue) sendBody();
  });
}

/**
 * A raw WebSocket upgrade request to `reqPath` (node:http, no library), resolving
 * {status, headers, text}: 101 means the server accepted the socket (which is then closed).
 */
export function rawUpgrade(node, { path: reqPath = '/v1/events', headers = {}, timeoutMs = 10_000 }) {
  const [host, port] = [node.apiAddr.slice(0, node.apiAddr.lastIndexOf(':')), node.apiPort];
  return new Promise((resolve, reject) => {
    const req = http.request({
      host,
      port,
      path: reqPath,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': Buffer.from('kith-browser-test').toString('base64'),
        ...headers,
      },
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`upgrade ${reqPath}: no answer within ${timeoutMs} ms`)));
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode, headers: res.headers, text: '' });
    });
    req.on('response', (res) => collectResponse(res, resolve, reject));
    req.on('error', reject);
    req.end();
  });
}

/** `POST /v1/session {token}` → the `name=value` of the session cookie the node sets. */
export async function sessionCookie(node) {
  const res = await rawRequest(node, {
    method: 'POST',
    path: '/v1/session',
    headers: { 'Content-Type': 'application/json', Origin: node.baseUrl },
    body: JSON.stringify({ token: node.token }),
  });
  if (res.status !== 204 && res.status !== 200) {
    throw new Error(`${node.name}: POST /v1/session answered ${res.status}: ${res.text}`);
  }
  const setCookie = res.headers['set-cookie'];
  if (!setCookie || setCookie.length === 0) throw new Error(`${node.name}: POST /v1/session set no cookie`);
  return setCookie[0].split(';')[0];
}

// ---------------------------------------------------------------------------------------------
// Browser

/** Flags for Debian's chromium in a container: no sandbox, no GPU, no chatter with Google. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/**
 * Extra flags for calls: fake camera and microphone (a test pattern and a beep) granted without a
 * prompt, media that may play without a click, and ICE candidates on loopback, which Chromium
 * otherwise leaves out (then nothing connects in a namespace that has only loopback).
 */
export const CALL_CHROMIUM_ARGS = [
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

/** Whether this process sees no network interface but loopback (a fresh network namespace). */
export function onlyLoopback() {
  return Object.keys(os.networkInterfaces()).every((name) => name === 'lo');
}

/**
 * Why the browser tests cannot run here, or null when they can. Under CI a missing chromium or
 * kith binary is not a reason to skip: callers turn it into a failure (see `skipReason`).
 */
export function missingPrerequisite() {
  if (!fs.existsSync(CHROMIUM)) return `no chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`;
  if (!fs.existsSync(KITH_BIN)) return `no kith binary at ${KITH_BIN} (cargo build -p kith, or set KITH_BIN)`;
  return null;
}

/**
 * For `describe(..., { skip: skipReason() })`: a message to skip with outside CI; under CI it
 * throws, so a missing browser or binary fails the run instead of passing it silently.
 */
export function skipReason() {
  const missing = missingPrerequisite();
  if (missing && IN_CI) {
    throw new Error(`browser tests cannot run under CI: ${missing}`);
  }
  return missing ? `browser tests skipped: ${missing}` : false;
}

/** Launches headless chromium (bounded); `args` are added to CHROMIUM_ARGS. */
export async function launchBrowser({ args = [] } = {}) {
  const { chromium } = await import('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...args], timeout: 60_000 });
}

/** A desktop context: 1280×800. */
export function desktopContext(browser, extra = {}) {
  return browser.newContext({ viewport: { width: 1280, height: 800 }, ...extra });
}

/** A phone context: Playwright's Pixel 7 (touch, mobile viewport). */
export async function phoneContext(browser, extra = {}) {
  const { devices } = await import('playwright-core');
  return browser.newContext({ ...devices['Pixel 7'], ...extra });
}

/**
 * Opens `node`'s app signed in (the `kith open` URL) in a new page of `context`, collecting the
 * page's console errors and failed requests in `page.problems` for failure messages.
 */
export async function openSignedIn(context, node) {
  const url = await node.openUrl();
  await routeAssets(context);
  const page = await context.newPage();
  watchProblems(page);
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 20_000 });
  return page;
}

const ASSET_TYPES = { js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8', svg: 'image/svg+xml', html: 'text/html; charset=utf-8' };
const routed = new WeakSet();

/**
 * With `KITH_WEB_ASSETS=<dir>`, the pages get the web app's files (and its entry page) from that
 * folder instead of the node's (which serves what its binary was built from): for trying app
 * changes against a binary built in another checkout, even one that is gone. The node's headers
 * (CSP included) are kept.
 */
async function routeAssets(context) {
  const dir = process.env.KITH_WEB_ASSETS;
  if (!dir || routed.has(context)) return;
  routed.add(context);
  const ours = (url) => url.pathname === '/' || url.pathname.startsWith('/assets/');
  await context.route(ours, async (route) => {
    const pathname = new URL(route.request().url()).pathname;
    const rel = pathname === '/' ? 'index.html' : decodeURIComponent(pathname.replace(/^\/assets\//, ''));
    const file = path.join(dir, rel);
    const response = await route.fetch();
    if (rel.split('/').includes('..') || !fs.existsSync(file)) return route.fulfill({ response });
    const type = ASSET_TYPES[rel.split('.').pop()] || response.headers()['content-type'];
    const headers = { ...response.headers(), 'content-type': type };
    delete headers['content-length'];
    delete headers['content-encoding'];
    delete headers.etag;
    return route.fulfill({ status: 200, body: fs.readFileSync(file), headers });
  });
}

/** Records console errors, page errors and CSP violations of `page` in `page.problems`. */
export function watchProblems(page) {
  page.problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') page.problems.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => page.problems.push(`pageerror: ${err.message}`));
  // API calls that took long: worth knowing when a step is slow.
  page.slow = [];
  const started = new Map();
  page.on('request', (req) => started.set(req, Date.now()));
  const done = (req, outcome) => {
    const t0 = started.get(req);
    started.delete(req);
    const ms = t0 ? Date.now() - t0 : 0;
    if (ms >= 3000 && req.url().includes('/v1/')) page.slow.push(`${req.method()} ${new URL(req.url()).pathname} ${outcome} after ${ms} ms`);
  };
  page.on('requestfinished', async (req) => done(req, (await req.response().catch(() => null))?.status() ?? '?'));
  page.on('requestfailed', (req) => done(req, `failed (${req.failure()?.errorText})`));
  return page;
}

/** Writes a full-page screenshot to SCREENSHOT_DIR/<name>.png; returns the path. */
export async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true, timeout: 15_000 });
  return file;
}

/** Best-effort screenshot for a failure message: the path, or why there is none. */
export async function failureShot(page, name) {
  try {
    return await screenshot(page, `FAILED-${name}`);
  } catch (e) {
    return `(no screenshot: ${e.message})`;
  }
}

/**
 * The step helpers of a browser suite, whose tests run in order and depend on earlier ones.
 * `step(name, fn)` wraps a test body: on failure it marks the lab failed and rethrows with a
 * screenshot of each open page, what the pages logged, and where in the tests it failed.
 * `needs(t, ...steps)` skips a test whose earlier steps (keys set in `done`) failed; `phases(t)`
 * prints how long each phase of a test took, as test diagnostics.
 * `lab()` and `pages()` are read at failure time: `pages()` gives `[who, page]` pairs.
 */
export function suiteSteps({ prefix, done, lab, pages }) {
  const step = (name, fn) => async (t) => {
    try {
      await fn(t);
    } catch (e) {
      const current = lab();
      if (current) current.failed = true;
      const notes = [];
      for (const [who, page] of pages()) {
        if (!page || page.isClosed()) continue;
        notes.push(`${who} screenshot: ${await failureShot(page, `${prefix}${name}-${who}`)}`);
        if (page.problems?.length) notes.push(`${who} page problems: ${page.problems.slice(-10).join(' | ')}`);
      }
      // A new error: Playwright's errors have their stack (and so their printed message) fixed.
      const where = String(e.stack || '')
        .split('\n')
        .filter((l) => /tests\/browser\/(lib|tests)\//.test(l))
        .slice(0, 4)
        .join('\n');
      const err = new Error(`${e.message}\n${notes.join('\n')}\n${where}`);
      err.stack = err.message;
      throw err;
    }
  };
  const needs = (t, ...what) => {
    const missing = what.filter((w) => !done[w]);
    if (missing.length) {
      t.skip(`needs the earlier step(s) ${missing.join(', ')}, which failed`);
      return false;
    }
    return true;
  };
  const phases = (t) => {
    const start = Date.now();
    return (what) => t.diagnostic(`${((Date.now() - start) / 1000).toFixed(1)} s  ${what}`);
  };
  return { step, needs, phases };
}
