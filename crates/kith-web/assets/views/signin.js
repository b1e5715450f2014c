// Not signed in: how to get in (`kith open` on this computer).

import { html } from '../vendor/preact-htm.js';
import { useAction } from '../components/form.js';
import { CALL_KEYS, retrySignIn, useStore } from '../state.js';

export function SignIn() {
  const s = useStore({ except: CALL_KEYS });
  const { busy, run } = useAction();
  return html`<main class="center-page" id="main">
    <section class="card narrow" aria-labelledby="signin-title">
      <p class="brand big" aria-hidden="true">kith</p>
      <h1 id="signin-title">Not signed in</h1>
      ${s.authError && html`<p class="form-error" role="alert">${s.authError}</p>`}
      <p>This page talks to the kith node on this computer. To open it signed in, run this in a terminal on this computer:</p>
      <pre class="command"><code>kith open</code></pre>
      <p class="muted">It opens this page with a one-time sign-in link. If the node is not running yet, start it first with <code>kith run</code>.</p>
      <div class="form-actions">
        <button type="button" class="btn" disabled=${busy} onClick=${() => run(retrySignIn)}>Try again</button>
      </div>
    </section>
  </main>`;
}
