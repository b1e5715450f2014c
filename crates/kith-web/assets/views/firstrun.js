// First run: choose a name (the node does the proof of work) or skip; then our invite link, QR
// code and peer id, and "Continue" to the chats.

import { html, useEffect, useRef, useState } from '../vendor/preact-htm.js';
import { count, powEstimate } from '../format.js';
import { ActionForm, Field } from '../components/form.js';
import { go, useMounted } from '../components/hooks.js';
import { InviteCard } from '../components/invitecard.js';
import { CALL_KEYS, powParams, registerName, skipFirstRun, useStore } from '../state.js';

/** An estimated progress for work we cannot observe: approaches 1, never reaches it. */
function PowProgress({ estimate }) {
  const [value, setValue] = useState(0);
  const start = useRef(Date.now());
  useEffect(() => {
    const expected = Math.max(estimate ? estimate.secs : 1, 0.5) * 1000;
    const t = setInterval(() => setValue(1 - Math.exp(-(Date.now() - start.current) / expected)), 100);
    return () => clearInterval(t);
  }, [estimate]);
  return html`<div class="pow">
    <progress aria-label="Proof of work" max="1" value=${value}></progress>
    <p role="status">
      ${estimate
        ? `Doing the proof of work: about ${count(estimate.hashes)} hashes, ${estimate.time} at 4 million hashes a second.`
        : 'Doing the proof of work…'}
    </p>
  </div>`;
}

/** After registering or skipping: who we are now, and how friends reach us. */
function Done({ name }) {
  const heading = useRef(null);
  useEffect(() => {
    if (heading.current) heading.current.focus();
  }, []);
  return html`<section class="page firstrun" aria-labelledby="fr-done">
    <h2 id="fr-done" ref=${heading} tabindex="-1">${name ? `You are ${name}` : 'Your invite'}</h2>
    <p>
      ${name
        ? 'Friends can now start a chat with your name. You can also send them your invite link, or let them scan the code.'
        : 'Send a friend your invite link, or let them scan the code. You can choose a name later in the node panel.'}
    </p>
    <${InviteCard} />
    <div class="form-actions">
      <button type="button" class="btn primary" onClick=${() => go('#/')}>Continue</button>
    </div>
  </section>`;
}

export function FirstRun() {
  const s = useStore({ except: CALL_KEYS });
  const [name, setName] = useState('');
  const [estimate, setEstimate] = useState(null);
  const [skipped, setSkipped] = useState(false);
  const mounted = useMounted();

  useEffect(() => {
    powParams()
      .then((p) => mounted.current && setEstimate(powEstimate(p.difficulty)))
      .catch(() => {});
  }, []);

  const own = (s.names || [])[0];
  if (own || skipped) return html`<${Done} name=${own ? own.name : ''} />`;

  const skip = () => {
    skipFirstRun();
    setSkipped(true);
  };

  return html`<section class="page firstrun" aria-labelledby="fr-title">
    <p class="brand big" aria-hidden="true">kith</p>
    <h2 id="fr-title">Welcome to kith</h2>
    <p>
      Choose a name your friends can find you by. Your node registers it on the network with a proof of work,
      so it can take a moment. You can also skip this and share your invite link instead.
    </p>
    <${ActionForm}
      onSubmit=${() => registerName(name)}
      submit="Register"
      secondary=${html`<button type="button" class="btn ghost" onClick=${skip}>Skip</button>`}
    >
      ${(busy) => html`<${Field}
          label="Name"
          value=${name}
          onInput=${setName}
          required
          autofocus
          maxlength="64"
          hint="3 to 32 letters or digits of one script, “-” and “_”."
          readonly=${busy}
        />
        ${estimate && !busy && html`<p class="muted">Registering takes about ${count(estimate.hashes)} hashes of work: ${estimate.time} on a typical computer.</p>`}
        ${busy && html`<${PowProgress} estimate=${estimate} />`}`}
    <//>
  </section>`;
}
