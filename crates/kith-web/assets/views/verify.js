// "Verify": the safety number both sides compare to be sure no one sits in between.

import { html, useEffect, useState } from '../vendor/preact-htm.js';
import { Dialog } from '../components/dialog.js';
import { useMounted } from '../components/hooks.js';
import { CALL_KEYS, closeDialog, displayName, useStore, verify } from '../state.js';

export function VerifyDialog({ peer }) {
  const s = useStore({ except: CALL_KEYS });
  const [report, setReport] = useState(null);
  const [error, setError] = useState('');
  const mounted = useMounted();
  const name = displayName(s, peer);

  useEffect(() => {
    verify(peer)
      .then((r) => mounted.current && setReport(r))
      .catch((e) => mounted.current && setError(e.message));
  }, [peer]);

  return html`<${Dialog} title=${`Verify ${name}`} onClose=${closeDialog}>
    ${error && html`<p class="form-error" role="alert">${error}</p>`}
    ${!report && !error && html`<p class="muted" role="status">Computing the safety number…</p>`}
    ${report &&
    html`<p>Compare this safety number with ${name}, in person or on a call. If both of you see the same digits, your messages go to ${name} and no one else.</p>
      <p class="safety">
        ${report.safety_number.split(/\s+/).map((g, i) => [i ? ' ' : '', html`<span key=${i} class="mono">${g}</span>`])}
      </p>
`}
    <div class="form-actions">
      <button type="button" class="btn primary" data-autofocus onClick=${closeDialog}>Done</button>
    </div>
  <//>`;
}
