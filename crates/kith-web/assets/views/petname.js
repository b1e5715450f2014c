// "Set petname": our own name for a peer (only we see it).

import { html, useState } from '../vendor/preact-htm.js';
import { shortId } from '../format.js';
import { Dialog } from '../components/dialog.js';
import { ActionForm, Field } from '../components/form.js';
import { CALL_KEYS, closeDialog, petnameOf, setPetname, useStore } from '../state.js';

export function PetnameDialog({ peer }) {
  const s = useStore({ except: CALL_KEYS });
  const [value, setValue] = useState(petnameOf(s, peer));
  const save = async () => {
    await setPetname(peer, value);
    closeDialog();
  };
  return html`<${Dialog} title="Set petname" onClose=${closeDialog}>
    <p class="muted">Your name for <span class="mono">${shortId(peer)}</span>. Only you see it, and you can use it anywhere a name or peer id is asked for.</p>
    <${ActionForm}
      onSubmit=${save}
      submit="Save"
      secondary=${html`<button type="button" class="btn ghost" onClick=${closeDialog}>Cancel</button>`}
    >
      <${Field} label="Petname" value=${value} onInput=${setValue} required autofocus maxlength="64" />
    <//>
  <//>`;
}
