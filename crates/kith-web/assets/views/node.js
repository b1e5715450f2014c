// The node panel: connections, reachability, DHT, relays, our names and their expiry, in plain
// sentences; the connected peers; our peer id, version and uptime; the microphone and camera check.

import { html, useState } from '../vendor/preact-htm.js';
import { bytes, count, duration, expiresIn, plural, shortId } from '../format.js';
import { CopyField } from '../components/copy.js';
import { useAction } from '../components/form.js';
import { ViewHeader } from '../components/header.js';
import { usePoll, useMounted } from '../components/hooks.js';
import { CALL_KEYS, displayName, loadNode, openDialog, signOut, useStore } from '../state.js';

/** A relay multiaddr in words: its peer id (shortened) and where it is. */
function relayWords(addr) {
  const m = /\/p2p\/([^/]+)(?:\/p2p-circuit)?\/?$/.exec(addr) || /\/p2p\/([^/]+)/.exec(addr);
  const id = m ? m[1] : '';
  const where = addr.split('/p2p/')[0];
  return id ? `${shortId(id)}${where ? ` (${where})` : ''}` : addr;
}

function reachability(st) {
  switch (st.reachability) {
    case 'public':
      return `Reachable directly from the internet${st.nat_addr ? ` at ${st.nat_addr}` : ''}.`;
    case 'private via relay':
      return `Behind NAT, reachable through relay ${st.relays.map(relayWords).join(', ')}.`;
    case 'private':
      return 'Behind NAT and not reachable from outside yet: no relay holds a reservation for this node.';
    default:
      return 'Reachability not known yet.';
  }
}

function peersSentence(n) {
  return n === 0 ? 'Not connected to any peers.' : `Connected to ${plural(n, 'peer')}.`;
}

function dhtSentence(st) {
  const answers = st.dht_server ? 'answers other peers’ queries' : 'does not answer queries (client only)';
  return `DHT mode ${st.dht_mode}: this node ${answers}. ${plural(st.routing_table_peers, 'peer')} in the routing table, ${plural(st.dht_records, 'record')} held.`;
}

const LEVEL_WORDS = { ok: 'OK', warning: 'Could be better', problem: 'Problem' };

/** What `kith doctor` says, one line per check, with the fix for anything not OK. */
function Health({ report }) {
  const trouble = report.checks.filter((c) => c.level !== 'ok');
  return html`<section class="card" aria-labelledby="health-h">
    <h3 id="health-h">Health</h3>
    <p>${report.healthy ? 'Everything a person would notice works.' : `${plural(trouble.length, 'thing')} to look at.`}</p>
    <ul class="facts" aria-label="Health checks">
      ${report.checks.map(
        (c) => html`<li key=${c.check} class=${`health-${c.level}`}>
          <strong>${LEVEL_WORDS[c.level] || c.level}:</strong> ${c.detail}
          ${c.fix && html`<br /><span class="muted">Fix: </span><code class="wrap">${c.fix}</code>`}
        </li>`,
      )}
    </ul>
  </section>`;
}

export function NodeView() {
  const s = useStore({ except: CALL_KEYS });
  const [error, setError] = useState('');
  const mounted = useMounted();
  const out = useAction();
  usePoll(
    () =>
      loadNode()
        .then(() => mounted.current && setError(''))
        .catch((e) => mounted.current && setError(e.message)),
    5000,
  );
  const st = s.status;
  const names = s.names || [];

  return html`<section class="view page-view" aria-labelledby="node-title">
    <${ViewHeader} id="node-title" title="Node" subtitle=${st ? `kith ${st.version}` : ''} focus>
      <a class="btn ghost" href="#/invite">Your invite</a>
    <//>
    <div class="page-body node">
      ${error && html`<p class="form-error" role="alert">${error}</p>`}
      ${!st && !error && html`<p class="muted" role="status">Asking the node…</p>`}
      ${s.doctor && html`<${Health} report=${s.doctor} />`}
      ${st &&
      html`<section class="card" aria-labelledby="net-h">
          <h3 id="net-h">Network</h3>
          <ul class="facts">
            <li>${peersSentence(st.connected_peers)}</li>
            <li>${reachability(st)}</li>
            <li>${dhtSentence(st)}</li>
            ${st.relay &&
            html`<li>
              Serving as a community relay: ${plural(st.relay.reservations, 'reservation')}, ${plural(st.relay.circuits, 'circuit')} open
              (${count(st.relay.circuits_total)} since start, ${count(st.relay.denied_total)} denied).
            </li>`}
            ${st.hole_punch &&
            st.hole_punch.succeeded + st.hole_punch.failed > 0 &&
            html`<li>
              Hole punching: ${plural(st.hole_punch.succeeded, 'relayed link')} made direct, ${count(st.hole_punch.failed)} failed.
            </li>`}
            <li>Up for ${duration(st.uptime_secs)}. ${plural(st.known_peers, 'peer')} in the address book, ${bytes(st.store_bytes)} stored.</li>
          </ul>
          ${st.relays.length > 0 &&
          html`<h4>Relays</h4>
            <ul class="plain" aria-label="Relays">
              ${st.relays.map((r) => html`<li key=${r} class="mono wrap">${r}</li>`)}
            </ul>`}
        </section>

        <section class="card" aria-labelledby="names-h">
          <h3 id="names-h">Your names</h3>
          ${names.length
            ? html`<ul class="facts" aria-label="Names">
                ${names.map(
                  (n) => html`<li key=${n.name}>
                    <strong>${n.name}</strong> — ${expiresIn(n.expires_at)}
                  </li>`,
                )}
              </ul>`
            : html`<p>You have no name yet. Friends can still reach you with your invite link.</p>
                <p><a class="btn" href="#/welcome">Register a name</a></p>`}
        </section>

        <section class="card" aria-labelledby="id-h">
          <h3 id="id-h">This node</h3>
          <${CopyField} label="Peer id" value=${st.peer_id} buttonLabel="Copy peer id" />
          <p>Version ${st.version}.</p>
          ${st.listen_addrs.length > 0 &&
          html`<details>
            <summary>Addresses</summary>
            <ul class="plain">
              ${[...st.external_addrs, ...st.listen_addrs].map((a, i) => html`<li key=${i} class="mono wrap">${a}</li>`)}
            </ul>
          </details>`}
          <div class="form-actions start">
            <button type="button" class="btn" onClick=${() => openDialog('devicecheck')}>Check microphone and camera</button>
            <button type="button" class="btn" disabled=${out.busy} onClick=${() => out.run(signOut)}>Sign out</button>
          </div>
        </section>

        <section class="card" aria-labelledby="peers-h">
          <h3 id="peers-h">Connected peers</h3>
          ${s.peers.length === 0 && html`<p class="muted">None right now.</p>`}
          <ul class="peer-list" aria-label="Peers">
            ${s.peers.map(
              (p) => html`<li key=${p.peer_id}>
                <span class="peer-name">${displayName(s, p.peer_id)}</span>
                <span class="muted">
                  ${p.path === 'relayed' ? 'through a relay · ' : p.path === 'direct' ? 'direct · ' : ''}${p.direction === 'inbound' ? 'connected to us' : 'we connected'} ${duration(p.connected_secs)} ago${p.agent ? ` · ${p.agent}` : ''}
                </span>
                ${p.addrs[0] && html`<span class="mono wrap small-text">${p.addrs[0]}</span>`}
              </li>`,
            )}
          </ul>
        </section>`}
    </div>
  </section>`;
}
