// "New chat": by name, petname, peer id or a kith://invite/ link, with an optional petname.

import { html, useState } from '../vendor/preact-htm.js';
import { Dialog } from '../components/dialog.js';
import { ActionForm, Field } from '../components/form.js';
import { go } from '../components/hooks.js';
import { closeDialog, startChat } from '../state.js';

export function NewChat() {
  const [target, setTarget] = useState('');
  const [petname, setPetname] = useState('');
  const start = async () => {
    const peer = await startChat(target, petname);
    closeDialog();
    go(`#/chat/${encodeURIComponent(peer)}`);
  };
  return html`<${Dialog} title="New chat" onClose=${closeDialog}>
    <${ActionForm}
      onSubmit=${start}
      submit="Start chat"
      secondary=${html`<button type="button" class="btn ghost" onClick=${closeDialog}>Cancel</button>`}
    >
      <${Field}
        label="Name or peer id"
        value=${target}
        onInput=${setTarget}
        required
        autofocus
        hint="A name (like alice), one of your petnames, a peer id, or an invite link (kith://invite/…)."
      />
      <${Field}
        label="Petname"
        value=${petname}
        onInput=${setPetname}
        hint="Optional: what you want to call them. Only you see it."
      />
    <//>
  <//>`;
}
